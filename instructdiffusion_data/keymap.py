"""Key maps between two outputs of one pipeline (``idd keymap``), and carrying auditor labels over.

Keys are ``schema.make_key(dataset, record_id, variant)``: when a reader changes how it names its
records, every key made from them changes too. Format 2 (``instructdiffusion-data/2``) did that for
three keypoint readers: CrowdPose, AI Challenger and MPII name a person ``<image>_<annotation>`` where
format 1 wrote ``<image>/<annotation>``. Auditor labels name samples by key, and they live per output
version (``<out>/<name>/.audit/<version>/labels.sqlite``), so a new version starts without them.

A key map pairs the rows of an *old* output (format 1 or 2) with those of a *new* one by
``(dataset, normalised record id, variant)``:

* ``dataset`` is the sidecar's ``dataset`` column;
* the record id is ``meta.record_id``, normalised the way the readers changed it (:func:`normalise_record_id`:
  ``<image>/<person>`` -> ``<image>_<person>`` for the datasets in :data:`SLASH_IDS`, unchanged for every
  other dataset);
* the variant is the exact text the key was made with (``v0``, ``v1``, ``rec``, ``remove``, ...), recovered
  from the key itself and confirmed by its hash (:func:`key_variant`); where that fails, ``meta.variant``.

A row without a record id pairs only with a row of the same key. Both outputs are read at their current
generation (:func:`..generations.current`), train and rejected (auditors label rejected rows too).

:func:`carry_labels` copies the old output's labels onto the new keys in the new output's label store
(rows appended with their original time, auditor, verdict and comment; one transaction). It never adds
a label to a key that has one already: a key with an accept/reject label in the new store keeps only
its own; an alignment submission is carried only when the new store has none for that group and auditor.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import UserError
from .schema import _KEY_SAFE, make_key

log = logging.getLogger("idd.keymap")

# datasets whose readers named records "<image>/<annotation>" in format 1 and "<image>_<annotation>" since
SLASH_IDS = frozenset({"crowdpose", "aic", "mpii"})
SPLITS = ("train", "rejected")
MAP_COLUMNS = ("old_key", "new_key", "dataset", "record_id")
UNMATCHED_SHOWN = 10  # unmatched old keys named in the summary (the count is always complete)


def normalise_record_id(dataset: str | None, record_id: Any, slash_ids: Iterable[str] = SLASH_IDS) -> str:
    """The record id as the format-2 readers write it: for ``slash_ids`` datasets the separator between
    image and person, the last ``/``, becomes ``_`` (``100/7`` -> ``100_7``; an MPII image name keeps its
    own folders: ``a/b.jpg/0`` -> ``a/b.jpg_0``); other datasets' ids are unchanged."""
    rid = str(record_id)
    if dataset not in slash_ids or "/" not in rid:
        return rid
    head, _, tail = rid.rpartition("/")
    return f"{head}_{tail}"


def key_variant(key: str, dataset: str, record_id: Any, meta_variant: Any = None) -> str | None:
    """The exact variant text ``key`` was made with (``make_key(dataset, record_id, variant) == key``),
    or None when neither the key's own variant part nor ``meta.variant`` (as ``v<n>`` or as is) gives it."""
    rid = str(record_id)
    slug = _KEY_SAFE.sub("-", rid).strip("-")[:64] or "r"
    head = f"{_KEY_SAFE.sub('-', dataset)}_{slug}_"
    cands = []
    if key.startswith(head) and len(key) > len(head) + 9 and key[-9] == "_":
        cands.append(key[len(head):-9])
    if meta_variant is not None and not isinstance(meta_variant, bool):
        cands += [f"v{meta_variant}", str(meta_variant)]
    for v in dict.fromkeys(cands):
        if make_key(dataset, rid, v) == key:
            return v
    return None


@dataclass
class Row:
    key: str
    dataset: str | None
    record_id: str | None  # as written in the output
    variant: str | None


@dataclass
class OutputRows:
    """The rows of one output's current generation, by key."""

    root: str
    name: str  # "<name>/<version>": what the auditor page calls the output (labels' ``output`` column)
    format: str
    generation: int
    rows: dict[str, Row] = field(default_factory=dict)
    repeated_keys: int = 0  # keys written more than once (format 1 could repeat a record id)


def _output_loc(path: str):
    from .generations import as_location, is_output

    if "://" not in str(path) and not Path(path).is_dir():
        raise UserError(f"{path}: no such output folder")
    loc = as_location(str(path))
    if not is_output(loc):
        raise UserError(f"{path}: not a shard output (no manifest.json)")
    return loc


def _sidecars(gen, split: str) -> list:
    """The parquet sidecars of one split: the manifest's shard list, else the folder's listing."""
    entries = (((gen.manifest or {}).get("splits") or {}).get(split) or {}).get("shards")
    if isinstance(entries, list) and all(isinstance(e, dict) and isinstance(e.get("parquet"), str) for e in entries):
        return [gen.file(e["parquet"]) for e in entries]
    d = gen.loc / split
    return [d / n for n in sorted(d.names()) if n.endswith(".parquet")] if d.is_dir() else []


def _meta(text: Any) -> dict:
    if isinstance(text, dict):
        return text
    try:
        m = json.loads(text) if isinstance(text, str) else {}
    except ValueError:  # format 1 could hold NaN/Infinity (json accepts them) or worse
        return {}
    return m if isinstance(m, dict) else {}


def read_output(path: str) -> OutputRows:
    """Key, dataset, record id and variant of every row (train and rejected) of an output's current generation."""
    import pyarrow.parquet as pq

    from .generations import current

    loc = _output_loc(path)
    gen = current(loc)
    m = gen.manifest or {}
    name = (f"{m['name']}/{m['version']}" if isinstance(m.get("name"), str) and isinstance(m.get("version"), str)
            else f"{Path(loc.path).parent.name}/{Path(loc.path).name}")
    out = OutputRows(str(path), name, str(m.get("format") or "instructdiffusion-data/1"), gen.number)
    for split in SPLITS:
        for side in _sidecars(gen, split):
            if not side.is_file():
                raise UserError(f"{side}: missing (listed in {gen.manifest_loc})")
            try:
                t = pq.read_table(side.path, filesystem=side.fs, columns=["key", "dataset", "meta"])
            except Exception as e:  # noqa: BLE001 - a damaged sidecar is one line naming it
                raise UserError(f"{side}: cannot read the parquet sidecar ({type(e).__name__}: {e})") from None
            for key, ds, meta in zip(*(t.column(c).to_pylist() for c in ("key", "dataset", "meta"))):
                if not isinstance(key, str):
                    continue
                if key in out.rows:
                    out.repeated_keys += 1
                    continue
                m = _meta(meta)
                rid = m.get("record_id")
                rid = None if rid is None or isinstance(rid, (dict, list, bool)) else str(rid)
                var = key_variant(key, ds, rid, m.get("variant")) if rid is not None and isinstance(ds, str) else None
                out.rows[key] = Row(key, ds, rid, var)
    return out


def _identity(row: Row, slash_ids: Iterable[str]) -> tuple | None:
    if row.record_id is None or row.dataset is None or row.variant is None:
        return None
    return row.dataset, normalise_record_id(row.dataset, row.record_id, slash_ids), row.variant


@dataclass
class KeyMap:
    old: OutputRows
    new: OutputRows
    pairs: list[tuple[str, str, str | None, str | None]]  # (old_key, new_key, dataset, record_id), by old_key
    unmatched_old: list[str]  # old keys with no new row
    ambiguous_old: list[str]  # old keys whose identity names several new rows (left out of the map)
    unmatched_new: int  # new keys no old key maps to

    @property
    def mapping(self) -> dict[str, str]:
        return {o: n for o, n, _, _ in self.pairs}

    def summary(self) -> dict:
        changed = sum(1 for o, n, _, _ in self.pairs if o != n)
        by_ds = Counter(self.old.rows[k].dataset for k in self.unmatched_old)
        return {
            "old": {"output": self.old.root, "name": self.old.name, "format": self.old.format,
                    "generation": self.old.generation, "rows": len(self.old.rows),
                    "repeated_keys": self.old.repeated_keys},
            "new": {"output": self.new.root, "name": self.new.name, "format": self.new.format,
                    "generation": self.new.generation, "rows": len(self.new.rows),
                    "repeated_keys": self.new.repeated_keys},
            "matched": len(self.pairs), "changed_keys": changed, "same_keys": len(self.pairs) - changed,
            "unmatched_old": len(self.unmatched_old), "unmatched_old_examples": self.unmatched_old[:UNMATCHED_SHOWN],
            "unmatched_old_by_dataset": dict(sorted((str(k), v) for k, v in by_ds.items())),
            "ambiguous_old": len(self.ambiguous_old), "unmatched_new": self.unmatched_new,
        }


def build(old_path: str, new_path: str, slash_ids: Iterable[str] = SLASH_IDS) -> KeyMap:
    """Pair the rows of ``old_path`` with those of ``new_path`` (see the module doc)."""
    slash_ids = frozenset(slash_ids)
    old, new = read_output(old_path), read_output(new_path)
    by_ident: dict[tuple, list[str]] = defaultdict(list)
    for row in new.rows.values():
        ident = _identity(row, slash_ids)
        if ident is not None:
            by_ident[ident].append(row.key)
    pairs, unmatched, ambiguous, used = [], [], [], set()
    for okey in sorted(old.rows):
        row = old.rows[okey]
        ident = _identity(row, slash_ids)
        hits = by_ident.get(ident, []) if ident is not None else []
        if len(hits) > 1:
            ambiguous.append(okey)
            continue
        nkey = hits[0] if hits else (okey if ident is None and okey in new.rows else None)
        if nkey is None:
            unmatched.append(okey)
            continue
        nrow = new.rows[nkey]
        pairs.append((okey, nkey, nrow.dataset, nrow.record_id))
        used.add(nkey)
    return KeyMap(old, new, pairs, unmatched, ambiguous, len(set(new.rows) - used))


def write_map(km: KeyMap, path: str | os.PathLike) -> Path:
    """The key map as parquet (``old_key, new_key, dataset, record_id``), written whole: a temporary file in
    the same folder, fsynced, then renamed over ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if "://" in str(path):
        raise UserError(f"{path}: --write takes a local file")
    dest = Path(path)
    if dest.is_dir():
        raise UserError(f"{dest}: is a folder; give a file name (e.g. {dest / 'keymap.parquet'})")
    if not dest.parent.is_dir():
        raise UserError(f"{dest.parent}: no such folder")
    cols = list(zip(*km.pairs)) if km.pairs else [[], [], [], []]
    table = pa.table({name: pa.array(list(vals), pa.string()) for name, vals in zip(MAP_COLUMNS, cols)})
    info = {"format": "instructdiffusion-data/keymap/1", "old": km.old.name, "old_format": km.old.format,
            "old_generation": km.old.generation, "new": km.new.name, "new_format": km.new.format,
            "new_generation": km.new.generation}
    table = table.replace_schema_metadata({b"idd.keymap": json.dumps(info, sort_keys=True).encode()})
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def read_map(path: str | os.PathLike) -> dict[str, str]:
    """``{old_key: new_key}`` of a key map written by :func:`write_map`."""
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(str(path), columns=["old_key", "new_key"])
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: not a key map ({type(e).__name__}: {e})") from None
    return dict(zip(t.column("old_key").to_pylist(), t.column("new_key").to_pylist()))


# -- labels ---------------------------------------------------------------------------------------

def _label_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)  # read only
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM labels ORDER BY id")]
    except sqlite3.DatabaseError as e:
        raise UserError(f"{path}: not a labels database ({e})") from None
    finally:
        con.close()


def _map_group(group_id: str | None, slash_ids: frozenset) -> str | None:
    """An automatic alignment group (``auto:<dataset>:<record id>:<md5 of the instruction>``, the auditor's
    catalogue) names a record: its id is normalised like the keys."""
    if not isinstance(group_id, str) or not group_id.startswith("auto:"):
        return group_id
    parts = group_id.split(":")
    if len(parts) < 4:
        return group_id
    ds, rid, digest = parts[1], ":".join(parts[2:-1]), parts[-1]
    return f"auto:{ds}:{normalise_record_id(ds, rid, slash_ids)}:{digest}"


@dataclass
class CarryResult:
    old_labels: str
    new_labels: str
    carried: int = 0  # old labelled keys whose labels were added to their new key
    no_match: int = 0  # old labelled keys with no new key
    already_labelled: int = 0  # new keys that had a label already (left as they were)
    rows_added: int = 0  # label rows inserted (a key's whole history is carried)
    picks_carried: int = 0  # alignment submissions carried
    picks_no_match: int = 0
    picks_already: int = 0
    no_match_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def carry_labels(km: KeyMap, slash_ids: Iterable[str] = SLASH_IDS) -> CarryResult:
    """Copy the old output's auditor labels onto the new keys in the new output's label store."""
    from .audit import labels as L

    slash_ids = frozenset(slash_ids)
    for o in (km.old, km.new):
        if "://" in o.root:
            raise UserError(f"{o.root}: auditor labels live beside local outputs only")
    # labels_path: the labels beside the output, after moving a file left inside it by older versions
    old_path, new_path = L.labels_path(km.old.root), L.labels_path(km.new.root)
    res = CarryResult(str(old_path), str(new_path))
    if old_path.resolve() == new_path.resolve():
        raise UserError(f"{old_path}: the old and new outputs share one label store")
    old_rows = _label_rows(old_path)
    if not old_rows:
        log.info("%s: no auditor labels to carry", old_path)
        return res
    mapping = km.mapping
    have = _label_rows(new_path)
    labelled = {r["key"] for r in have if r["verdict"] in ("accept", "reject") and r["key"] is not None}
    picked = {(r["group_id"], r["auditor"]) for r in have if r["verdict"] == "align_pick"}

    verdicts: dict[str, list[dict]] = defaultdict(list)  # old key -> its accept/reject rows, oldest first
    subs: dict[tuple, list[dict]] = defaultdict(list)  # (ts, auditor, group) -> one alignment submission
    for r in old_rows:
        if r["verdict"] in ("accept", "reject") and r["key"] is not None:
            verdicts[r["key"]].append(r)
        elif r["verdict"] == "align_pick":
            subs[(r["ts"], r["auditor"], r["group_id"])].append(r)

    inserts: list[tuple] = []  # (first old id, row): appended in the old store's order
    for okey, rows in verdicts.items():
        nkey = mapping.get(okey)
        if nkey is None:
            res.no_match += 1
            if len(res.no_match_examples) < UNMATCHED_SHOWN:
                res.no_match_examples.append(okey)
        elif nkey in labelled:
            res.already_labelled += 1
        else:
            labelled.add(nkey)
            res.carried += 1
            inserts += [(r["id"], (r["ts"], r["auditor"], km.new.name, nkey, r["verdict"], r["comment"], None))
                        for r in rows]
    for (_ts, auditor, group), rows in subs.items():
        keys = [r["key"] for r in rows if r["key"] is not None]
        if any(k not in mapping for k in keys):
            res.picks_no_match += 1
            continue
        ngroup = _map_group(group, slash_ids)
        if (ngroup, auditor) in picked:
            res.picks_already += 1
            continue
        res.picks_carried += 1
        inserts += [(r["id"], (r["ts"], r["auditor"], km.new.name, mapping.get(r["key"]) if r["key"] else None,
                               "align_pick", r["comment"], ngroup)) for r in rows]
    inserts.sort(key=lambda x: x[0])
    if inserts:
        cols = L._ROW_COLS  # the label store's own columns and schema (triggers included)
        with L._db(new_path, True) as con:
            con.executemany(f"INSERT INTO labels({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                            [row for _, row in inserts])
        res.rows_added = len(inserts)
    return res

