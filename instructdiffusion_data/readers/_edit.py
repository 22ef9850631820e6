"""What the editing-set readers (InstructPix2Pix, MagicBrush, GIER, GQA-Inpaint, triplets) and the
``ingest_edit`` stage share.

An editing record is a row with task ``edit`` whose ``meta`` holds image *references*, resolved by
the stage (the driver never holds pixels):

- ``{"path": "/abs/file.jpg"}``: a file (or a URI);
- ``{"parquet": "/abs/file.parquet", "row": 12, "column": "source_img"}``: a cell of a parquet file,
  binary or a ``{bytes, path}`` struct (the Hugging Face ``Image`` feature).

``meta["src_ref"]``, ``meta["tgt_ref"]`` and optionally ``meta["mask_ref"]``. Inline images
(``data:`` URIs, bytes in a table) are put straight into ``src``/``tgt``/``mask`` by the reader.

Parquet files are read one row group at a time, in batches, text columns only
(:func:`iter_parquet`); a row group that cannot be read gives one dropped record per lost row.
"""

from __future__ import annotations

import glob
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, RecordError
from ..schema import Row, drop
from ..storage import Location, child_path, exists, is_uri
from ._base import bad_record, record_row
from ._pairs import MISSING_HALF

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# reason classes of the family (the same fault reads the same in every editing set)
INSTRUCTION_MISSING = "instruction is missing"
INSTRUCTION_NAN = "instruction is NaN"
INSTRUCTION_NOT_TEXT = "instruction is not text"
INSTRUCTION_EMPTY = "instruction is empty"
PARQUET_ROWS_UNREADABLE = "unreadable parquet rows"
DUPLICATE_ID = "duplicate record id"

# InstructPix2Pix's CLIP scores as its released metadata.jsonl names them (dataset_creation/
# generate_img_dataset.py); ``clip_sim_direction`` (this engine's old name) is an alias of ``clip_sim_dir``
IP2P_SCORES = ("clip_sim_0", "clip_sim_1", "clip_sim_dir", "clip_sim_image")
SCORE_ALIASES = {"clip_sim_direction": "clip_sim_dir"}


def score_name(name: str) -> str:
    """The released name of a score (``clip_sim_direction`` -> ``clip_sim_dir``)."""
    return SCORE_ALIASES.get(name, name)


def unique_id(rid: str, seen: set[str], where: Any) -> tuple[str, bool]:
    """``rid``, or ``rid#<where>`` when a record of this source already has it (keys must not repeat);
    the second value says whether it was a repeat. ``seen`` is updated."""
    dup = rid in seen
    if dup:
        rid = f"{rid}#{where}"
        while rid in seen:
            rid += "#"
    seen.add(rid)
    return rid, dup


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def instruction_problem(value: Any) -> str | None:
    """The reason class of an unusable instruction (None when it is fine)."""
    if value is None:
        return INSTRUCTION_MISSING
    if isinstance(value, float) and not math.isfinite(value):
        return INSTRUCTION_NAN
    if not isinstance(value, str):
        return INSTRUCTION_NOT_TEXT
    text = value.strip()
    if not text:
        return INSTRUCTION_EMPTY
    if text.lower() in ("nan", "none", "null"):
        return INSTRUCTION_NAN
    return None


def json_safe(obj: Any) -> Any:
    """A copy of a pass-through value (fields kept in ``meta`` for reference, not read by the engine)
    that is strict JSON: NaN/inf become None (GIER's bare ``NaN`` marks an empty field), bytes a size."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bytes, bytearray)):
        return f"<{len(obj)} bytes>"
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def edit_record(dataset: str, record_id: str, instruction: Any, *, src_ref: dict | None, tgt_ref: dict | None,
                mask_ref: dict | None = None, file: str | None = None, task: str = "edit",
                faults: list[tuple] = (), src_field: str = "src_ref", tgt_field: str = "tgt_ref",
                instruction_field: str = "instruction", **extra: Any) -> Row:
    """One editing record. ``faults`` (``(reason class, field[, {detail}])``) drop it; so do an
    unusable instruction and a missing image reference (``None``; ``{}`` means "inline or explained by
    a fault")."""
    file = file or (src_ref or {}).get("path") or (src_ref or {}).get("parquet")
    meta: dict[str, Any] = {"file": file, "src_ref": src_ref, "tgt_ref": tgt_ref, **json_safe(extra)}
    if mask_ref is not None:
        meta["mask_ref"] = mask_ref
    row = record_row(dataset, task, record_id, meta)
    row["instruction"] = instruction.strip() if isinstance(instruction, str) else None
    faults = [tuple(f) for f in faults]
    named = {f[1] for f in faults}
    problem = instruction_problem(instruction)
    if problem and instruction_field not in named:
        faults.append((problem, instruction_field))
    if src_ref is None and src_field not in named:
        faults.append((MISSING_HALF, src_field, {"missing": "source image"}))
    if tgt_ref is None and tgt_field not in named:
        faults.append((MISSING_HALF, tgt_field, {"missing": "target image"}))
    for cls, field, *detail in faults:
        drop(row, cls, **{"file": file, "record": record_id, "field": field, **(detail[0] if detail else {})})
    return row


def find_image(folder: str, stem: str) -> str | None:
    """``folder/stem.<ext>`` for the first image extension that exists (path or URI), else None."""
    for ext in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS):
        p = child_path(str(folder), f"{stem}{ext}")
        if exists(p, "file"):
            return p
    return None


def path_ref(path: str | None) -> dict | None:
    return {"path": str(path)} if path else None


def parquet_files(spec: str | list[str]) -> list[str]:
    """Parquet files named by a file, a folder (searched recursively; a URI folder: its own files) or
    a glob, sorted; local paths absolute."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for s in specs:
        if is_uri(s):
            loc = Location(s)
            out += [child_path(s, n) for n in loc.names() if n.endswith(".parquet")] if loc.is_dir() else [s]
            continue
        p = Path(s)
        if p.is_dir():
            out += [str(f.resolve()) for f in sorted(p.rglob("*.parquet"))]
        elif any(c in s for c in "*?["):
            out += [str(Path(m).resolve()) for m in sorted(glob.glob(s, recursive=True))]
        else:
            out.append(str(p.resolve()))
    return out


def open_parquet(path: str, where: str) -> pq.ParquetFile:
    """A parquet file's reader; a file that is not parquet is one ConfigError line."""
    try:
        if is_uri(path):
            loc = Location(path)
            return pq.ParquetFile(loc.fs.open_input_file(loc.path))
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found: {path}") from None
    except (OSError, pa.ArrowException) as e:
        raise ConfigError(f"{where}: {path} is not a readable parquet file ({type(e).__name__}: {e})") from None


def check_parquet(files: list[str], where: str) -> dict[str, pa.Schema]:
    """Every file's schema (a footer read each); a missing or damaged file is one ConfigError line."""
    if not files:
        raise ConfigError(f"{where}: no parquet files found")
    return {f: open_parquet(f, where).schema_arrow for f in files}


def is_image_type(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields))


def text_columns(schema: pa.Schema) -> list[str]:
    return [n for n in schema.names if not is_image_type(schema.field(n).type)]


def iter_parquet(path: str, columns: list[str], where: str, batch_rows: int = 1024
                 ) -> Iterator[tuple[int, dict | None, str | None]]:
    """``(row index, {column: value}, None)`` of the given (non-image) columns of a parquet file, one
    row group at a time in batches of ``batch_rows``; the rows of a row group that cannot be read come
    as ``(row index, None, error)``, one each, and reading goes on with the next group."""
    pf = open_parquet(path, where)
    first = 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        i = first
        try:
            for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[g], columns=columns):
                for rec in batch.to_pylist():
                    yield i, rec, None
                    i += 1
        except (OSError, pa.ArrowException) as e:
            err = f"{type(e).__name__}: {e}"
            for j in range(i, first + n):
                yield j, None, err
        first += n


def unreadable_row(dataset: str, path: str, i: int, error: str, task: str = "edit") -> Row:
    """The dropped record of a parquet row that could not be read."""
    return bad_record(dataset, task, f"{Path(path).stem}/{i}", PARQUET_ROWS_UNREADABLE, path, None,
                      parquet_row=i, error=error)


class ParquetCells:
    """Reads single cells of parquet files for the stage, one row group at a time (small LRU)."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._groups: OrderedDict[tuple, pa.Table] = OrderedDict()
        self._files: dict[str, tuple[pq.ParquetFile, list[int]]] = {}

    def _file(self, path: str) -> tuple[pq.ParquetFile, list[int]]:
        if path not in self._files:
            pf = open_parquet(path, "parquet")
            starts, n = [], 0
            for g in range(pf.metadata.num_row_groups):
                starts.append(n)
                n += pf.metadata.row_group(g).num_rows
            starts.append(n)
            self._files[path] = (pf, starts)
        return self._files[path]

    def get(self, path: str, row: int, column: str, record: str | None = None) -> bytes:
        try:
            pf, starts = self._file(path)
        except ConfigError:
            raise RecordError("parquet file unreadable", file=path, record=record) from None
        if not 0 <= row < starts[-1]:
            raise RecordError("parquet row out of range", file=path, record=record, field=column)
        g = next(i for i in range(len(starts) - 1) if starts[i] <= row < starts[i + 1])
        key = (path, g, column)
        table = self._groups.get(key)
        if table is None:
            try:
                table = pf.read_row_group(g, columns=[column])
            except (OSError, pa.ArrowException, KeyError):
                raise RecordError("unreadable parquet row", file=path, record=record, field=column) from None
            self._groups[key] = table
            while len(self._groups) > self.capacity:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(key)
        value = table.column(0)[row - starts[g]].as_py()
        if isinstance(value, dict):
            value = value.get("bytes")
        if not value:
            raise RecordError("unreadable parquet row: image cell is empty", file=path, record=record, field=column)
        return bytes(value)
