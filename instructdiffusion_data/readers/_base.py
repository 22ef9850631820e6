"""The reader toolkit: the source interface the engine plans and reads through, and the helpers every
reader shares (docs/adding-a-dataset.md).

A *source* turns a dataset's files into *records* (rows without pixels yet). The engine never asks a
source for all its records at once. It asks for a **plan** (cheap, on the driver): a list of
:class:`ShardSpec`, each naming what makes one shard and a fingerprint of those inputs. Then a
worker **reads** one spec (:meth:`Source.read`) and runs the stages on its records. Two kinds:

- :class:`RecordSource` (one big annotation file: COCO, COCO-Stuff, RefCOCO pickles, PhraseCut, MPII,
  ...): the reader writes :meth:`RecordSource.records`, a stream in a fixed order. The engine runs it
  *once*, in a worker task, and cuts the stream into per-shard record files (parquet, under the
  output's ``.plan/`` folder); workers then read their slice from there. ``records_per_shard`` counts
  records; the inputs fingerprint covers the annotation files (:meth:`RecordSource.input_files`).
- :class:`FileGroupSource` (many small files: SA-1B json+jpg, GoPro/REDS/SIDD/CLWD frames,
  InstructPix2Pix seed folders): the reader lists *items* by name without opening them
  (:meth:`FileGroupSource.items`) and turns one item into records on a worker
  (:meth:`FileGroupSource.read_item`). ``records_per_shard`` counts items; each shard's fingerprint
  covers the names, sizes and mtimes of its own files.

Every record a reader sees ends in at least one row: a bad one is yielded dropped
(:func:`bad_record`, reason class + file + record + field), never skipped silently; skips a config asks
for (crowd annotations, splits not selected) are counted in :attr:`Source.stats`.
"""

from __future__ import annotations

import abc
import hashlib
import io
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

from .. import config as cfgmod
from .. import faults
from ..errors import ConfigError
from ..schema import Row, drop, make_key, new_row
from ..storage import Location, child_path, is_uri, read_bytes

log = logging.getLogger(__name__)

PLAN_DIR = ".plan"

# Reject reasons shared by readers: the same fault reads the same in every dataset (drop_class).
NO_IMAGE_FILE = "image file missing"
UNKNOWN_IMAGE = "annotation points at an unknown image id"
NO_JOINTS = "no labelled joints"
BAD_FIELD = "bad field"
NOT_FINITE = "not a finite number"
CROWD = "crowd annotation (source.include_crowd is false)"
EXCLUDED = "image excluded (source.exclude_image_ids)"
EMPTY_ITEM = "input produced no records"
UNREADABLE_ITEM = "input could not be read"


@dataclass
class SourceConfig:
    """Base of every source config."""

    limit: int | None = field(default=None, metadata={"min": 1})  # records (or items) read at most
    # a file of image ids (one per line, or a JSON list) whose records are dropped with a reason:
    # keeps evaluation images (e.g. RefCOCO val/test, which are COCO train2014 images) out of training
    exclude_image_ids: str | None = None


@dataclass
class ShardSpec:
    """What makes shard ``index``: a slice of split records (``records_file``) or a group of input
    items (``items``), with the fingerprint of its inputs and a label for logs."""

    index: int
    fingerprint: str
    label: str
    records_file: str | None = None
    records: int | None = None
    items: list[list[str]] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ShardSpec":
        return cls(**json.loads(text))


def fingerprint(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_facts(path: str) -> list:
    """``[path, size, mtime_ns]`` of an input file (size -1 when missing: a missing file is a fact too)."""
    facts = Location(path).facts()
    return [str(path), *(facts if facts else (-1, 0))]


class Source(abc.ABC):
    name: ClassVar[str] = "source"
    Config: ClassVar[type[SourceConfig]] = SourceConfig
    unit: ClassVar[str] = "record"  # what writer.records_per_shard counts for this source

    def __init__(self, config: SourceConfig | dict | None = None, *, seed: int = 0):
        self.config = cfgmod.build(self.Config, config if config is not None else {}, where=f"source({self.name})")
        self.seed = seed
        self.stats: Counter = Counter()
        self._excluded: set[str] | None = None
        self.validate()
        if self.config.exclude_image_ids:
            cfgmod.check_path(self.config.exclude_image_ids, "source.exclude_image_ids", kind="file")

    def validate(self) -> None:
        """Check paths; raise ConfigError naming the key and the path."""

    def roots(self) -> dict[str, str]:
        """Named input roots (``source.images`` -> absolute path): paths in rows are written relative
        to them, and the manifest records them once. Default: every config value naming a path."""
        out = {}
        for k, v in cfgmod.to_dict(self.config).items():
            if isinstance(v, str) and v and k not in ("dataset", "exclude_image_ids") and not is_uri(v):
                p = Path(v)
                if p.exists():
                    out[f"source.{k}"] = str(p.resolve())
                if p.is_file():  # files a reader finds beside its annotation file (GIER's images/)
                    out[f"source.{k}.parent"] = str(p.resolve().parent)
            elif isinstance(v, str) and is_uri(v):
                out[f"source.{k}"] = v.rstrip("/")
        return out

    # -- the engine's side ------------------------------------------------------------------------
    @abc.abstractmethod
    def plan(self, workdir: Location, per_shard: int) -> list[ShardSpec]:
        """The shards, in order; cheap (no record is parsed here)."""

    @abc.abstractmethod
    def read(self, spec: ShardSpec) -> Iterator[Row]:
        """The records of one shard (runs on a worker)."""

    def iter_records(self) -> Iterator[Row]:
        """Every record in plan order, in this process (tools, tests and benchmarks: never the engine's
        path, which splits and reads per shard on workers). ``source.limit`` applies."""
        if isinstance(self, RecordSource):
            for n, rec in enumerate(self.records()):
                if self.config.limit is not None and n >= self.config.limit:
                    return
                yield rec
        elif isinstance(self, FileGroupSource):
            for n, item in enumerate(self.items()):
                if self.config.limit is not None and n >= self.config.limit:
                    return
                yield from self.read(ShardSpec(index=0, fingerprint="", label="", items=[[str(p) for p in item]]))
        else:
            raise TypeError(f"{type(self).__name__}: a source is a RecordSource or a FileGroupSource")

    # -- helpers for readers ----------------------------------------------------------------------
    def excluded(self, image_id: Any) -> bool:
        """True when ``source.exclude_image_ids`` lists this image id (compared as text)."""
        if not self.config.exclude_image_ids:
            return False
        if self._excluded is None:
            text = read_bytes(self.config.exclude_image_ids).decode("utf-8")
            try:
                ids = json.loads(text)
            except json.JSONDecodeError:
                ids = None
            if not isinstance(ids, list):  # one id per line (a file holding one id is also a JSON number)
                ids = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
            self._excluded = {str(i) for i in ids}
        return str(image_id) in self._excluded


class RecordSource(Source):
    """A source whose records come from one stream (a big annotation file): split once, read by slice."""

    @abc.abstractmethod
    def records(self) -> Iterator[Row]:
        """Yield record rows in a deterministic order; a bad record is yielded dropped, with its reason,
        file and record id; it is never silently skipped."""

    def input_files(self) -> list[str]:
        """The files whose content decides the records (their size and mtime make the fingerprint).
        Default: the config values that name existing files."""
        out = []
        for k, v in sorted(cfgmod.to_dict(self.config).items()):
            if isinstance(v, str) and v and k != "exclude_image_ids":
                loc = Location(v)
                if loc.is_file():
                    out.append(v)
                elif loc.is_dir():
                    out.extend(str(Path(v) / n) if not is_uri(v) else f"{v.rstrip('/')}/{n}" for n in loc.names())
        return out

    def inputs_fingerprint(self, per_shard: int) -> tuple[str, list]:
        facts = [file_facts(f) for f in self.input_files()]
        return fingerprint({"source": self.name, "config": cfgmod.to_dict(self.config), "per_shard": per_shard,
                            "inputs": facts}), facts

    def split_dir(self, workdir: Location, fp: str) -> Location:
        return workdir / PLAN_DIR / f"records-{fp[:16]}"

    def split(self, workdir: Location, per_shard: int) -> dict:
        """Stream :meth:`records` once into ``NNNNNN.parquet`` record files of ``per_shard`` records
        (bounded memory: one shard's records at a time); ``index.json`` last. Returns the index."""
        import pyarrow.parquet as pq

        from ..schema import rows_to_table

        fp, facts = self.inputs_fingerprint(per_shard)
        d = self.split_dir(workdir, fp)
        d.mkdir()
        counts: list[int] = []
        buf: list[Row] = []

        def flush() -> None:
            out = io.BytesIO()
            pq.write_table(rows_to_table(buf), out, compression="zstd")
            final = d / f"{len(counts):06d}.parquet"
            if d.atomic_rename:  # a record file is visible only when whole: the runner starts on it early
                tmp = d / f"{len(counts):06d}.parquet.tmp-{os.getpid()}"
                tmp.write_bytes(out.getvalue())
                tmp.replace(final)
            else:
                final.write_bytes(out.getvalue())
            faults.point("split.records")
            counts.append(len(buf))
            buf.clear()
            if first_file[0] is None:
                first_file[0] = time.perf_counter() - t0

        limit = self.config.limit
        n = 0
        t0, first_file = time.perf_counter(), [None]
        for rec in self.records():
            if limit is not None and n >= limit:
                break
            buf.append(rec)
            n += 1
            if len(buf) >= per_shard:
                flush()
        if buf:
            flush()
        index = {"fingerprint": fp, "inputs": facts, "shards": counts, "records": n,
                 # seconds until the first record file was complete: the passes a reader needs before its
                 # first record (COCO: images, categories and every person's box, for "the leftmost person")
                 "first_file_s": round(first_file[0], 3) if first_file[0] is not None else None,
                 "reader": dict(sorted(self.stats.items()))}
        text = json.dumps(index, sort_keys=True)
        if d.atomic_rename:
            tmp = d / f"index.json.tmp-{os.getpid()}"
            tmp.write_text(text)
            tmp.replace(d / "index.json")
        else:
            (d / "index.json").write_text(text)
        faults.point("split.index")
        return index

    def split_index(self, workdir: Location, per_shard: int) -> dict | None:
        fp, _ = self.inputs_fingerprint(per_shard)
        f = self.split_dir(workdir, fp) / "index.json"
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None

    def partial_plan(self, workdir: Location, fp: str) -> list[ShardSpec]:
        """Specs of the record files a split in progress has completed so far."""
        d = self.split_dir(workdir, fp)
        return [ShardSpec(index=int(n[:6]), fingerprint=fp, records_file=str(d / n), label=f"records file {n}")
                for n in d.names() if len(n) == 14 and n.endswith(".parquet") and n[:6].isdigit()]

    def plan(self, workdir: Location, per_shard: int) -> list[ShardSpec]:
        index = self.split_index(workdir, per_shard)
        if index is None:
            raise RuntimeError("the source has not been split yet (the runner splits it first)")
        d = self.split_dir(workdir, index["fingerprint"])
        specs, first = [], 0
        for i, n in enumerate(index["shards"]):
            specs.append(ShardSpec(index=i, fingerprint=index["fingerprint"], records=n,
                                   records_file=str(d / f"{i:06d}.parquet"),
                                   label=f"records {first}-{first + n - 1}"))
            first += n
        return specs

    def read(self, spec: ShardSpec) -> Iterator[Row]:
        import pyarrow.parquet as pq

        from ..schema import table_to_rows

        data = Location(spec.records_file).read_bytes()
        yield from table_to_rows(pq.read_table(io.BytesIO(data)))


class FileGroupSource(Source):
    """A source of many small inputs grouped into shards by name, without opening them."""

    unit = "item"

    @abc.abstractmethod
    def items(self) -> Iterator[list[str]]:
        """Input items in a fixed order, each a list of the paths it reads (e.g. ``[json, jpg]``);
        listing only, no file is opened."""

    @abc.abstractmethod
    def read_item(self, item: list[str]) -> Iterator[Row]:
        """The records of one item (runs on a worker)."""

    def plan(self, workdir: Location, per_shard: int) -> list[ShardSpec]:
        specs: list[ShardSpec] = []
        group: list[list[str]] = []
        limit = self.config.limit

        excl = [file_facts(self.config.exclude_image_ids)] if self.config.exclude_image_ids else []

        def close() -> None:
            facts = [file_facts(p) for it in group for p in it] + excl  # a changed exclusion list counts too
            specs.append(ShardSpec(index=len(specs), items=list(group),
                                   fingerprint=fingerprint({"source": self.name, "config": cfgmod.to_dict(self.config),
                                                            "inputs": facts}),
                                   label=f"{Path(group[0][0]).name} .. {Path(group[-1][0]).name} ({len(group)} items)"))
            group.clear()

        for n, item in enumerate(self.items()):
            if limit is not None and n >= limit:
                break
            group.append([str(p) for p in item])
            if len(group) >= per_shard:
                close()
        if group:
            close()
        return specs

    def read(self, spec: ShardSpec) -> Iterator[Row]:
        dataset = getattr(self.config, "dataset", self.name)
        for item in spec.items or []:
            try:  # one item's records at a time; an item that raises is one dropped record, not a failed shard
                rows = list(self.read_item(item))
            except Exception as e:  # noqa: BLE001 - kept with its reason, counted
                log.warning("%s: %s could not be read: %s", self.name, item[0], e)
                self.stats["unreadable_items"] += 1
                rows = [bad_record(dataset, None, Path(item[0]).name, UNREADABLE_ITEM, item[0],
                                   detail={"error": f"{type(e).__name__}: {e}"[:500]})]
            if not rows:
                self.stats["empty_items"] += 1
                rows = [bad_record(dataset, None, Path(item[0]).name, EMPTY_ITEM, item[0])]
            yield from rows


# -- shared helpers --------------------------------------------------------------------------------

def load_json(path: str | Path, where: str) -> Any:
    """Parse a JSON file (path or URI); a missing or invalid file is one ConfigError line."""
    p = path if is_uri(path) else Path(path)
    try:
        return json.loads(read_bytes(p))
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found: {p}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: {p} is not valid JSON ({e})") from None


def image_path(root: str, name: Any) -> str | None:
    """``name`` under the image folder ``root`` (path or URI); None for a missing or unsafe name."""
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in Path(name).parts:
        return None
    return child_path(root, name)


def finite(*values: Any) -> bool:
    """True when every value is a real finite number (bool excluded)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def record_row(dataset: str, task: str | None, record_id: Any, meta: dict) -> Row:
    """A usable record: key from dataset + record id, ``meta.record_id`` set."""
    return new_row(key=make_key(dataset, record_id, "rec"), task=task, dataset=dataset,
                   meta={"record_id": str(record_id), **meta})


def bad_record(dataset: str, task: str | None, record_id: Any, reason: str, file: str | None,
               field: str | None = None, *, detail: dict | None = None, **meta: Any) -> Row:
    """A record that cannot be used: a dropped row with the reason class and, as details, the file,
    record id and field (plus ``detail``: per-record values such as ``expected=``/``got=``, also kept in
    meta). It keeps ids and file, never the heavy payload (RLE, polygons)."""
    row = new_row(key=make_key(dataset, record_id, "rec"), task=task, dataset=dataset,
                  meta={"file": file, "record_id": str(record_id), "field": field, **(detail or {}), **meta})
    return drop(row, reason, file=file, record=str(record_id), field=field, **(detail or {}))
