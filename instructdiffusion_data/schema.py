"""The row schema every stage reads and writes (docs/architecture.md, "The row").

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

import orjson
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
    "adapt",
)

# Tasks whose rows carry a target image and no source: ``adapt`` rows (paper 3.3, pretraining adaptation)
# are a rendered task target and its caption, for a text-to-image fine-tune. Their one image is ``tgt``.
TARGET_ONLY_TASKS = ("adapt",)


def image_column(task: str | None) -> str:
    """The column that must hold a row's image: ``tgt`` for :data:`TARGET_ONLY_TASKS`, else ``src``."""
    return "tgt" if task in TARGET_ONLY_TASKS else "src"

# Public columns (docs/architecture.md, "The row") then the runner's bookkeeping columns (underscore):
# ``_shard`` the shard index, ``_rec`` the record's index inside its shard (every row made from one
# record keeps it), ``_nrec`` the shard's record count and ``_sinfo`` shard-level facts (inputs, reader
# counters) carried on the rows of record 0. The writer checks every record of a shard arrived.
COLUMNS = ("key", "task", "dataset", "src", "tgt", "instruction", "mask", "meta", "keep", "drop_reason",
           "drop_class", "drop_detail")
PRIVATE_COLUMNS = ("_shard", "_rec", "_nrec", "_sinfo")

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
        pa.field("drop_class", pa.string()),
        pa.field("drop_detail", pa.list_(pa.string())),
        pa.field("_shard", pa.int64()),
        pa.field("_rec", pa.int64()),
        pa.field("_nrec", pa.int64()),
        pa.field("_sinfo", pa.string()),
    ]
)

Row = dict[str, Any]
_COLUMN_NAMES = tuple(ARROW_SCHEMA.names)

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
        "drop_class": None,
        "drop_detail": None,
        "_shard": -1,
        "_rec": -1,
        "_nrec": -1,
        "_sinfo": None,
    }
    unknown = set(fields) - set(row)
    if unknown:
        raise KeyError(f"unknown row columns: {sorted(unknown)}")
    row.update(fields)
    return row


def drop(row: Row, reason: str, **detail: Any) -> Row:
    """Mark a row as dropped, never delete it.

    ``reason`` is the *class* of the drop, the same text for every row dropped for the same cause
    ("image file missing", "aesthetic_tgt<4.5"); per-record values go in ``detail`` (``file=``,
    ``record=``, ``field=``, measured numbers). They are stored apart: ``drop_class`` (the first
    class, what counts and filters use), ``drop_detail`` (one JSON object per reason, in order, with
    its class) and ``drop_reason`` (the human-readable text of all reasons, for display only; nothing
    parses it back).
    """
    row["keep"] = False
    clean = {k: v for k, v in detail.items() if v is not None}
    entry = json.dumps({"class": reason, **clean}, sort_keys=True, default=str)
    row["drop_detail"] = [*(row.get("drop_detail") or []), entry]
    if not row.get("drop_class"):
        row["drop_class"] = reason
    text = f"{reason} ({', '.join(f'{k}={v}' for k, v in clean.items())})" if clean else reason
    row["drop_reason"] = text if not row.get("drop_reason") else f"{row['drop_reason']};{text}"
    return row


def drop_entries(row: Row) -> list[dict]:
    """The row's drop reasons as dicts (``{"class": ..., **detail}``), oldest first."""
    return [json.loads(d) for d in row.get("drop_detail") or []]


# Typed score columns of the sidecar parquet (float32, null where not computed): one fixed set in every
# sidecar, named by scorer. ``meta["scores"]`` keeps the raw values; the writer maps them here. The
# aesthetic scores depend on the quality filter's profile: the LAION predictor on CLIP ViT-L/14
# (``profile: clip``) and the weight-free classical score (``profile: weightfree``) are different
# scales, so they get different columns.
SCORE_COLUMNS: tuple[str, ...] = (
    "aesthetic_laion_src", "aesthetic_laion_tgt", "aesthetic_laion_diff",
    "aesthetic_classical_src", "aesthetic_classical_tgt", "aesthetic_classical_diff",
    "giqa_src", "giqa_tgt", "giqa_diff",
    "edit_change", "background_change", "replace_gain",
    "ip2p_clip_sim_0", "ip2p_clip_sim_1", "ip2p_clip_sim_dir", "ip2p_clip_sim_image",
)
_PLAIN_SCORES = ("giqa_src", "giqa_tgt", "giqa_diff", "edit_change", "background_change", "replace_gain")
# InstructPix2Pix's released metadata names (``clip_sim_direction`` is accepted as an alias of ``_dir``)
_IP2P_SCORES = {"clip_sim_0": "ip2p_clip_sim_0", "clip_sim_1": "ip2p_clip_sim_1", "clip_sim_dir": "ip2p_clip_sim_dir",
                "clip_sim_direction": "ip2p_clip_sim_dir", "clip_sim_image": "ip2p_clip_sim_image"}


def scores_from_columns(row: dict) -> dict[str, float] | None:
    """The filter's score names (``aesthetic_tgt``, ``giqa_tgt``, ...) from a sidecar row's typed
    columns; None for a format-1 sidecar without them (read ``meta["scores"]`` then)."""
    if "giqa_tgt" not in row:
        return None
    out: dict[str, float] = {}
    for role in ("src", "tgt", "diff"):
        v = row.get(f"aesthetic_laion_{role}")
        v = v if v is not None else row.get(f"aesthetic_classical_{role}")
        if v is not None:
            out[f"aesthetic_{role}"] = float(v)
    for name in _PLAIN_SCORES:
        if row.get(name) is not None:
            out[name] = float(row[name])
    return out


def typed_scores(meta: dict) -> dict[str, float | None]:
    """The :data:`SCORE_COLUMNS` of one row from its meta (None where not computed)."""
    out: dict[str, float | None] = dict.fromkeys(SCORE_COLUMNS)
    scores = meta.get("scores") if isinstance(meta, dict) else None
    if not isinstance(scores, dict):
        return out
    profile = (meta.get("filter") or {}).get("profile") if isinstance(meta.get("filter"), dict) else None
    aesthetic = "aesthetic_laion" if profile == "clip" else "aesthetic_classical"

    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    for role in ("src", "tgt", "diff"):
        if f"aesthetic_{role}" in scores:
            out[f"{aesthetic}_{role}"] = num(scores[f"aesthetic_{role}"])
    for name in _PLAIN_SCORES:
        if name in scores:
            out[name] = num(scores[name])
    for name, col in _IP2P_SCORES.items():
        if name in scores and out[col] is None:
            out[col] = num(scores[name])
    return out


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


# orjson reads an integer outside 64 bits as a float; json.loads keeps it an int. Such an integer is a
# number token of 19+ digits: it starts the text or follows "[", ":", "," or whitespace (a "-" between),
# and ends the text or meets ",", "]", "}" or whitespace (or "." / "e" / "E": a float, sent the slow way
# too). To find one fast, the text's bytes are mapped to classes (one C pass) and searched with memmem:
# "0" digit, "s" a start, "b" start or end, "e" an end, "-" minus, "a" anything else.
_CLASSES = bytearray(b"a" * 256)
for _chars, _cls in ((b"0123456789", b"0"), (b"[:", b"s"), (b", \t\n\r", b"b"), (b"]}.eE", b"e"), (b"-", b"-")):
    for _c in _chars:
        _CLASSES[_c] = _cls[0]
_CLASSES = bytes(_CLASSES)
_RUN = b"0" * 19
_ZEROS = re.compile(rb"0*")


def _long_number(text: str) -> bool:
    """Whether ``text`` holds a number token of 19+ digits (see above)."""
    t = text.encode("utf-8", "surrogatepass").translate(_CLASSES)
    i = t.find(_RUN)
    while i >= 0:
        j = i  # the run's first digit
        while j > 0 and t[j - 1] == 48:
            j -= 1
        k = _ZEROS.match(t, i).end()  # past its last digit
        if j > 0 and t[j - 1] == 45:  # "-"
            j -= 1
        if (j == 0 or t[j - 1] in b"sb") and (k == len(t) or t[k] in b"be"):
            return True
        i = t.find(_RUN, k)
    return False


def loads_meta(text: str) -> Any:
    """``json.loads(text)``, the same objects, ~7x faster on meta carrying polygons: orjson reads
    strict JSON with correctly rounded floats; text it refuses (NaN, Infinity, lone surrogates) or
    would read differently (a number of 19+ digits: maybe an integer outside 64 bits) goes to
    ``json.loads``, which also gives the errors."""
    if not _long_number(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def table_to_rows(table: pa.Table) -> list[Row]:
    rows = table.to_pylist()
    for r in rows:
        m = r.get("meta")
        r["meta"] = loads_meta(m) if m else {}
    return rows


NON_FINITE_META = "non-finite number in meta"


def _finite_only(obj: Any) -> Any:
    """``obj`` with every NaN/Infinity replaced by None (numpy values converted first)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_only(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_only(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    try:
        conv = _json_default(obj)
    except TypeError:
        return obj
    return obj if conv is obj else _finite_only(conv)


def rows_to_table(rows: Iterable[Row]) -> pa.Table:
    """Rows as a table of :data:`ARROW_SCHEMA`. A row whose meta holds NaN/Infinity (not JSON) is kept
    but dropped, with the offending key path as detail and the numbers written as null: one bad
    number never fails a whole batch or shard."""
    rows = list(rows)
    metas = [_meta_text(r) for r in rows]
    cols = {}
    for f in ARROW_SCHEMA:  # column by column: several times faster than from_pylist over dicts
        if f.name == "meta":
            vals = metas
        elif f.name == "keep":
            vals = [True if r.get("keep") is None else r.get("keep") for r in rows]
        else:
            vals = [r.get(f.name) for r in rows]
        cols[f.name] = pa.array(vals, type=f.type)
    return pa.Table.from_arrays(list(cols.values()), schema=ARROW_SCHEMA)


def _meta_text(r: Row) -> str:
    """The row's meta as strict JSON; a NaN/Infinity drops the row (see :func:`rows_to_table`)."""
    m = r.get("meta")
    if isinstance(m, str):
        return m
    try:
        return dumps_meta(m or {})
    except ValueError as e:
        path = _nonfinite_path(r.get("meta") or {}, "meta")
        drop(r, NON_FINITE_META, path=path[0] if path else None, error=str(e)[:200])
        return dumps_meta(_finite_only(r.get("meta") or {}))


_INT_COLUMNS = ("_shard", "_rec", "_nrec")
_BYTES_COLUMNS = ("src", "tgt", "mask")


def normalize_rows(rows: Iterable[Row]) -> list[Row]:
    """``table_to_rows(rows_to_table(rows))`` without building the table: the rows a stage hands on,
    as the next step would see them after an Arrow round trip (only the schema's columns, in its order;
    meta through strict JSON, a non-finite number dropping the row; ``keep`` None read as True).
    Stages chained in one process exchange rows through this, so they see exactly what they would see
    between Ray operators."""
    out = []
    for r in rows:
        m = _meta_text(r)
        n = {name: r.get(name) for name in _COLUMN_NAMES}
        n["meta"] = loads_meta(m) if m else {}
        n["keep"] = True if n["keep"] is None else bool(n["keep"])
        for c in _INT_COLUMNS:
            if n[c] is not None:
                n[c] = int(n[c])
        for c in _BYTES_COLUMNS:
            if n[c] is not None and not isinstance(n[c], bytes):
                n[c] = bytes(n[c])
        if n["drop_detail"] is not None:
            n["drop_detail"] = list(n["drop_detail"])
        out.append(n)
    return out


def empty_table() -> pa.Table:
    return ARROW_SCHEMA.empty_table()
