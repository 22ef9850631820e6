"""The row schema every stage reads and writes (DESIGN.md, "One row").

A batch travels between stages as a ``pyarrow.Table`` with exactly :data:`ARROW_SCHEMA`.
Inside a stage it is a list of :class:`dict` rows whose ``meta`` is already parsed; the helpers
here convert both ways so that every stage sees the same thing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Iterable

import pyarrow as pa

TASKS = (
    "keypoint",
    "semantic_seg",
    "referring_seg",
    "deblur",
    "denoise",
    "dewatermark",
    "edit_remove",
    "edit_add",
    "edit_replace",
    "edit",
)

# Public columns (DESIGN.md) then the runner's bookkeeping columns (underscore).
COLUMNS = ("key", "task", "dataset", "src", "tgt", "instruction", "mask", "meta", "keep", "drop_reason")
PRIVATE_COLUMNS = ("_shard", "_rec")

ARROW_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("task", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("src", pa.binary()),
        pa.field("tgt", pa.binary()),
        pa.field("instruction", pa.string()),
        pa.field("mask", pa.binary()),
        pa.field("meta", pa.string()),
        pa.field("keep", pa.bool_()),
        pa.field("drop_reason", pa.string()),
        pa.field("_shard", pa.int64()),
        pa.field("_rec", pa.int64()),
    ]
)

Row = dict[str, Any]

_KEY_SAFE = re.compile(r"[^A-Za-z0-9-]+")


def make_key(dataset: str, record_id: Any, variant: Any = 0) -> str:
    """Deterministic, WebDataset-safe key from dataset, source record and variant.

    The readable part keeps auditors oriented; a short hash of the exact inputs guarantees that
    two different record ids never collide after sanitising (no dots: WebDataset splits on them).
    """
    rid = str(record_id)
    digest = hashlib.sha1(f"{dataset}\x00{rid}\x00{variant}".encode()).hexdigest()[:8]
    slug = _KEY_SAFE.sub("-", rid).strip("-")[:64] or "r"
    ds = _KEY_SAFE.sub("-", dataset)
    var = _KEY_SAFE.sub("-", str(variant))
    return f"{ds}_{slug}_{var}_{digest}"


def new_row(**fields: Any) -> Row:
    """A row with every column present (defaults: kept, no images, empty meta)."""
    row: Row = {
        "key": None,
        "task": None,
        "dataset": None,
        "src": None,
        "tgt": None,
        "instruction": None,
        "mask": None,
        "meta": {},
        "keep": True,
        "drop_reason": None,
        "_shard": -1,
        "_rec": -1,
    }
    unknown = set(fields) - set(row)
    if unknown:
        raise KeyError(f"unknown row columns: {sorted(unknown)}")
    row.update(fields)
    return row


def drop(row: Row, reason: str) -> Row:
    """Mark a row as dropped, never delete it; the first reason wins, later ones are appended."""
    row["keep"] = False
    row["drop_reason"] = reason if not row.get("drop_reason") else f"{row['drop_reason']};{reason}"
    return row


def dumps_meta(meta: dict) -> str:
    """Strict JSON for ``meta``: a NaN or infinite number raises ValueError naming its key path.

    ``json.dumps`` would otherwise write the bare tokens ``NaN`` / ``Infinity``, which are not JSON and
    which strict readers (browsers, the auditor, other languages) reject.
    """
    try:
        return json.dumps(meta, sort_keys=True, separators=(",", ":"), default=_json_default, allow_nan=False)
    except ValueError as e:
        found = _nonfinite_path(meta, "meta")
        if found is None:
            raise
        path, value = found
        raise ValueError(f"{path} is not a finite number ({float(value)!r}); meta must be strict JSON") from e


def _nonfinite_path(obj: Any, path: str) -> tuple[str, float] | None:
    """``(key path, value)`` of the first non-finite float in ``obj`` (``meta.scores[2].x``), or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (path, obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return None
    if isinstance(obj, dict):
        items = ((f"{path}.{k}", v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(obj))
    else:
        try:
            conv = _json_default(obj)  # numpy scalars and arrays, as json.dumps sees them
        except TypeError:
            return None
        return None if conv is obj else _nonfinite_path(conv, path)
    for p, v in items:
        found = _nonfinite_path(v, p)
        if found is not None:
            return found
    return None


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays end up in meta often (joint coordinates, scores)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"meta value of type {type(obj).__name__} is not JSON serialisable")


def table_to_rows(table: pa.Table) -> list[Row]:
    rows = table.to_pylist()
    for r in rows:
        m = r.get("meta")
        r["meta"] = json.loads(m) if m else {}
    return rows


def rows_to_table(rows: Iterable[Row]) -> pa.Table:
    out = []
    for r in rows:
        d = dict(r)
        if not isinstance(d.get("meta"), str):
            d["meta"] = dumps_meta(d.get("meta") or {})
        if d.get("keep") is None:
            d["keep"] = True
        out.append({c: d.get(c) for c in ARROW_SCHEMA.names})
    return pa.Table.from_pylist(out, schema=ARROW_SCHEMA)


def empty_table() -> pa.Table:
    return ARROW_SCHEMA.empty_table()
