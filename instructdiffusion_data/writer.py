"""The shard writer (docs/shard-format.md).

One *shard* is the output of one planned group of source records (a slice of an annotation file, or
a group of input files). Its rows are sorted by key and split into ``train/NNNNNN.*`` (kept) and
``rejected/NNNNNN.*`` (dropped). Each split gets a WebDataset tar, a parquet sidecar with every column
but the image bytes (typed score columns, the drop class and details, the member offsets) and a stats
json. The writer runs on a Ray worker, once per shard.

Commit protocol. Locally every file is written under a name unique to this attempt
(``NNNNNN.tar.tmp-<attempt>``: Ray may run a retried task while a killed attempt's files remain) and
renamed when complete, the stats jsons last: a shard is finished when both stats files exist. On an
object store (no rename; an object appears whole when its upload completes) the data objects are
written under their final names first and the stats jsons, the completion markers, last. A shard cut
short is not done; a rerun writes it again over what it left. Tars are byte-reproducible (sorted
members, fixed mtime, owner and mode), so a retried or rerun shard has the same bytes.

Every file's size and sha256 are recorded in its stats and in the manifest (``idd inspect --verify``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import uuid
from collections import Counter
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from . import faults
from .imageio import sniff_ext
from .schema import SCORE_COLUMNS, Row, dumps_meta, image_column, typed_scores
from .storage import Location, is_uri
from .tarblocks import TarChunks

log = logging.getLogger(__name__)

SPLITS = ("train", "rejected")
IMAGE_MEMBERS = ("src", "tgt", "mask")
MANIFEST = "manifest.json"
RUN_FILE = ".idd-run.json"

FORMAT = "instructdiffusion-data/2"
ROWS_WITHOUT_IMAGE_LISTED = 50  # per stats file; the parquet has them all (src_member is null)

SIDECAR_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("task", pa.string()),
        ("dataset", pa.string()),
        ("output", pa.string()),
        ("version", pa.string()),
        ("source_id", pa.string()),
        ("licence", pa.string()),
        ("instruction", pa.string()),
        ("meta", pa.string()),
        ("keep", pa.bool_()),
        ("drop_class", pa.string()),
        ("drop_detail", pa.list_(pa.string())),
        ("drop_reason", pa.string()),
        *[(c, pa.float32()) for c in SCORE_COLUMNS],
        ("tar", pa.string()),
        ("src_member", pa.string()),
        ("src_offset", pa.int64()),
        ("src_size", pa.int64()),
        ("tgt_member", pa.string()),
        ("tgt_offset", pa.int64()),
        ("tgt_size", pa.int64()),
        ("mask_member", pa.string()),
        ("mask_offset", pa.int64()),
        ("mask_size", pa.int64()),
    ]
)


def shard_name(index: int) -> str:
    return f"{index:06d}"


def code_version() -> dict:
    info: dict[str, Any] = {"package": __version__}
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            info["git"] = out.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
            info["dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _row_meta(row: Row) -> Any:
    meta = row.get("meta") or {}
    return json.loads(meta) if isinstance(meta, str) else meta


def _json_value(value: Any) -> str:
    """``value`` as :func:`dumps_meta` writes it inside a document (``null`` and strings directly)."""
    if value is None:
        return "null"
    if type(value) is str:
        return encode_basestring_ascii(value)  # what json.dumps uses for a str with ensure_ascii
    return dumps_meta(value)


def _members(row: Row, meta_text: str) -> dict[str, bytes]:
    """:func:`sample_members` of a row whose meta is already serialised (``dumps_meta(meta)``)."""
    members: dict[str, bytes] = {}
    for col in IMAGE_MEMBERS:
        data = row.get(col)
        if data:
            members[f"{col}.{sniff_ext(data)}"] = data
    if row.get("instruction") is not None:
        members["txt"] = row["instruction"].encode("utf-8")
    # dumps_meta({"task", "dataset", "keep", "drop_class", "drop_reason", "meta"}) (sorted keys, no
    # spaces) assembled around the serialised meta, which is not encoded a second time
    members["json"] = (
        f'{{"dataset":{_json_value(row.get("dataset"))},"drop_class":{_json_value(row.get("drop_class"))},'
        f'"drop_reason":{_json_value(row.get("drop_reason"))},"keep":{"true" if row.get("keep") else "false"},'
        f'"meta":{meta_text},"task":{_json_value(row.get("task"))}}}'
    ).encode("utf-8")
    return members


def sample_members(row: Row) -> dict[str, bytes]:
    """The WebDataset members of one row: ``src.<ext>``, ``tgt.<ext>``, ``mask.png``, ``txt``, ``json``."""
    return _members(row, dumps_meta(_row_meta(row)))


def _tar_rows(rows: list[Row], meta_texts: list[str], offset: int = 0) -> tuple[list[bytes], list[dict]]:
    """The tar of ``rows`` as chunks, and each row's member placements (name, data offset, size)."""
    tar = TarChunks(offset)
    placements = []
    for row, meta_text in zip(rows, meta_texts):
        place: dict[str, Any] = {}
        key = row["key"]
        for suffix, data in sorted(_members(row, meta_text).items()):
            name = f"{key}.{suffix}"
            start = tar.add(name, data)
            col = suffix.split(".")[0]
            if col in IMAGE_MEMBERS:
                place[f"{col}_member"] = name
                place[f"{col}_offset"] = start
                place[f"{col}_size"] = len(data)
        placements.append(place)
    tar.close()
    return tar.chunks, placements


def write_tar(path: Path | Any, rows: list[Row]) -> list[dict]:
    """Write rows (already sorted by key) to ``path`` (or an open binary stream); return per-row member
    offsets."""
    if hasattr(path, "write"):
        placements = _write_tar_stream(path, rows)
    else:
        with open(path, "wb") as fh:
            placements = _write_tar_stream(fh, rows)
    return placements


def _write_tar_stream(fh: Any, rows: list[Row]) -> list[dict]:
    # offsets count from the stream's position, as tarfile counts them
    chunks, placements = _tar_rows(rows, [dumps_meta(_row_meta(r)) for r in rows], fh.tell())
    fh.write(b"".join(chunks))
    return placements


def split_stats(rows: list[Row]) -> dict:
    tasks = Counter(r.get("task") or "" for r in rows)
    datasets = Counter(r.get("dataset") or "" for r in rows)
    reasons = Counter(r.get("drop_class") or "dropped" for r in rows if not r.get("keep"))
    verified: Counter = Counter()
    for r in rows:
        meta = r.get("meta") or {}
        if "verified" in meta:
            verified["checked"] += 1
            verified["passed"] += bool(meta["verified"])
            if isinstance(meta.get("verify"), dict) and meta["verify"].get("on") == "written":
                verified["written"] += 1  # checked on the decoded written bytes (the rest on exact pixels)
    no_image = [r for r in rows if not r.get(image_column(r.get("task")))]  # adapt rows: tgt, no src
    return {
        "rows": len(rows),
        "tasks": dict(sorted(tasks.items())),
        "datasets": dict(sorted(datasets.items())),
        "drop_reasons": dict(sorted(reasons.items())),
        "verified": dict(verified),
        "bytes": {c: sum(len(r.get(c) or b"") for r in rows) for c in IMAGE_MEMBERS},
        "rows_without_image": len(no_image),
        # a few examples for a reader of the stats; the parquet lists them all (src_member is null)
        "rows_without_image_examples": [
            {"key": r["key"], "record": (r.get("meta") or {}).get("record_id"), "reason": r.get("drop_class")}
            for r in no_image[:ROWS_WITHOUT_IMAGE_LISTED]
        ],
    }


def _sidecar_row(r: Row, meta: Any, meta_text: str, place: dict, tar_name: str, output: str | None,
                 version: str | None) -> dict:
    """One sidecar row; ``meta`` is the row's parsed meta and ``meta_text`` its ``dumps_meta``."""
    prov = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {}
    return {
        "key": r["key"], "task": r.get("task"), "dataset": r.get("dataset"), "output": output, "version": version,
        "source_id": prov.get("source_id") or (str(meta["record_id"]) if meta.get("record_id") is not None else None),
        "licence": prov.get("licence"), "instruction": r.get("instruction"), "meta": meta_text,
        "keep": bool(r.get("keep")), "drop_class": r.get("drop_class"), "drop_detail": r.get("drop_detail"),
        "drop_reason": r.get("drop_reason"), **typed_scores(meta), "tar": tar_name, **place,
    }


class ShardWriter:
    """Writes finished shards under ``root`` (a folder or an object-store URI) and the output's manifest."""

    def __init__(self, root: str | os.PathLike | Location, *, output: str | None = None, version: str | None = None):
        self.loc = root if isinstance(root, Location) else Location(root)
        if isinstance(root, Location):
            self.root = Path(root.path) if root.local else str(root)
        else:
            self.root = str(self.loc) if is_uri(root) else Path(root)
        self.output, self.version = output, version

    def split_dir(self, split: str) -> Path | Location:
        return self.root / split if isinstance(self.root, Path) else self.loc / split

    def _names(self, split: str) -> set[str]:
        return set((self.loc / split).names())

    def is_done(self, index: int) -> bool:
        return all(f"{shard_name(index)}.stats.json" in self._names(s) for s in SPLITS)

    def done_shards(self) -> set[int]:
        names = {s: self._names(s) for s in SPLITS}
        found = {n.split(".")[0] for n in names["train"] if n.endswith(".stats.json")}
        return {int(n) for n in found if n.isdigit() and all(f"{n}.stats.json" in names[s] for s in SPLITS)}

    def shard_stats(self, index: int, split: str = "train") -> dict:
        return json.loads((self.loc / split / f"{shard_name(index)}.stats.json").read_text())

    def write_shard(self, index: int, rows: Iterable[Row], info: dict | None = None) -> dict:
        """Write and commit shard ``index``; ``info`` (inputs, record count, reader counters) goes into
        both stats files. Returns ``{split: stats}``."""
        rows = sorted(rows, key=lambda r: r["key"])
        keys = [r["key"] for r in rows]
        if len(set(keys)) != len(keys):
            dup = next(k for k, c in Counter(keys).items() if c > 1)
            raise ValueError(f"shard {index}: duplicate key {dup}: a stage must give each variant its own key")
        name = shard_name(index)
        parts = {"train": [r for r in rows if r.get("keep")], "rejected": [r for r in rows if not r.get("keep")]}
        # local: write "<final>.tmp-<attempt>" and rename; object store: the final object directly (no rename)
        suffix = f".tmp-{uuid.uuid4().hex[:12]}" if self.loc.atomic_rename else ""
        renames: list[tuple[Location, Location]] = []
        markers: list[tuple[Location, str]] = []
        stats_out = {}
        try:
            for split, srows in parts.items():
                d = self.loc / split
                d.mkdir()
                tar_out = d / f"{name}.tar{suffix}"
                metas = [_row_meta(r) for r in srows]
                meta_texts = [dumps_meta(m) for m in metas]  # once per row: for the tar and the sidecar
                # a shard's tar is built in memory (its rows are already there)
                chunks, placements = _tar_rows(srows, meta_texts)
                tar_data = b"".join(chunks)
                del chunks
                with tar_out.open_write() as fh:
                    fh.write(tar_data)
                tar_info = {"bytes": len(tar_data), "sha256": hashlib.sha256(tar_data).hexdigest()}
                del tar_data
                faults.point("writer.tar")
                table = pa.Table.from_pylist(
                    [_sidecar_row(r, m, mt, p, f"{name}.tar", self.output, self.version)
                     for r, m, mt, p in zip(srows, metas, meta_texts, placements)],
                    schema=SIDECAR_SCHEMA)
                buf = io.BytesIO()
                pq.write_table(table, buf, compression="zstd")
                data = buf.getvalue()
                pq_out = d / f"{name}.parquet{suffix}"
                with pq_out.open_write() as fh:
                    fh.write(data)
                faults.point("writer.parquet")
                stats = {"shard": name, "split": split, **split_stats(srows), **(info or {}),
                         "files": {"tar": tar_info,
                                   "parquet": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}}
                stats_out[split] = stats
                text = json.dumps(stats, indent=1, sort_keys=True)
                if suffix:
                    st_tmp = d / f"{name}.stats.json{suffix}"
                    st_tmp.write_text(text)
                    renames += [(tar_out, d / f"{name}.tar"), (pq_out, d / f"{name}.parquet")]
                    markers.append((st_tmp, d / f"{name}.stats.json"))  # type: ignore[arg-type]
                else:
                    markers.append((d / f"{name}.stats.json", text))
            # data files first, stats (the completion markers) last
            for tmp, final in renames:
                tmp.replace(final)
                faults.point("writer.rename")
            for marker, what in markers:
                if isinstance(what, Location):
                    marker.replace(what)
                else:
                    marker.write_text(what)
                faults.point("writer.marker")
        except BaseException:
            for tmp, _ in renames:  # this attempt's own temporary files only
                _quiet_remove(tmp)
            for marker, what in markers:
                if isinstance(what, Location):
                    _quiet_remove(marker)
            raise
        return stats_out

    def clean_attempts(self) -> int:
        """Remove temporary files of killed attempts (``*.tmp-<attempt>``: only this writer makes them)."""
        n = 0
        folders = [self.loc / split for split in SPLITS]
        folders += [self.loc / ".plan" / d for d in (self.loc / ".plan").dirs()]
        for d in folders:
            for nm in d.names():
                if ".tmp-" in nm or nm.endswith(".tmp"):
                    _quiet_remove(d / nm)
                    n += 1
        return n

    def remove_shard(self, index: int) -> None:
        """Remove a finished shard (markers first, so it is never half-done and marked done)."""
        name = shard_name(index)
        for split in SPLITS:
            _quiet_remove(self.loc / split / f"{name}.stats.json")
        for split in SPLITS:
            for ext in ("tar", "parquet"):
                _quiet_remove(self.loc / split / f"{name}.{ext}")

    def write_manifest(self, *, config: dict, extra: dict | None = None) -> dict:
        """Aggregate every finished shard's stats into ``manifest.json`` (streamed: one stats file at a
        time; what grows with the shard count is the shard list itself)."""
        manifest: dict[str, Any] = {"format": FORMAT, "code_version": code_version(), "config": config,
                                    "splits": {}}
        records = 0
        reader: Counter = Counter()
        for split in SPLITS:
            shards, tasks, datasets, reasons, verified = [], Counter(), Counter(), Counter(), Counter()
            total = no_image = 0
            for st_name in sorted(n for n in (self.loc / split).names() if n.endswith(".stats.json")):
                st = json.loads((self.loc / split / st_name).read_text())
                files = st.get("files") or {}
                shards.append({"tar": f"{split}/{st['shard']}.tar", "parquet": f"{split}/{st['shard']}.parquet",
                               "rows": st["rows"],
                               "tar_bytes": files.get("tar", {}).get("bytes"),
                               "tar_sha256": files.get("tar", {}).get("sha256"),
                               "parquet_bytes": files.get("parquet", {}).get("bytes"),
                               "parquet_sha256": files.get("parquet", {}).get("sha256")})
                total += st["rows"]
                no_image += st.get("rows_without_image", 0) if isinstance(st.get("rows_without_image"), int) else 0
                tasks.update(st["tasks"])
                datasets.update(st["datasets"])
                reasons.update(st["drop_reasons"])
                verified.update(st.get("verified", {}))
                if split == "train":
                    records += int(st.get("records") or 0)
                    reader.update(st.get("reader") or {})
            manifest["splits"][split] = {
                "rows": total, "shards": shards, "tasks": dict(sorted(tasks.items())),
                "datasets": dict(sorted(datasets.items())), "drop_reasons": dict(sorted(reasons.items())),
                "verified": dict(verified), "rows_without_image": no_image,
            }
        manifest["records"] = records
        manifest["reader_stats"] = dict(sorted(reader.items()))
        if extra:
            manifest.update(extra)
        text = json.dumps(manifest, indent=1, sort_keys=True)
        if self.loc.atomic_rename:
            tmp = self.loc / f"{MANIFEST}.tmp-{uuid.uuid4().hex[:12]}"
            tmp.write_text(text)
            tmp.replace(self.loc / MANIFEST)
        else:
            (self.loc / MANIFEST).write_text(text)  # an object appears whole when its upload completes
        faults.point("writer.manifest")
        return manifest


def _quiet_remove(loc: Location) -> None:
    try:
        loc.delete_file()
    except (FileNotFoundError, OSError):
        pass
