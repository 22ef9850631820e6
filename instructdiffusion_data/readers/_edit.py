"""Shared helpers of the editing-dataset readers (InstructPix2Pix, MagicBrush, GIER, GQA-Inpaint,
triplets) and of the ``ingest_edit`` stage.

An editing record is a row with task ``edit`` whose ``meta`` holds image *references*, resolved by
the stage (the driver never holds pixels):

- ``{"path": "/abs/file.jpg"}``: a file;
- ``{"parquet": "/abs/file.parquet", "row": 12, "column": "source_img"}``: a cell of a parquet file,
  binary or a ``{bytes, path}`` struct (the Hugging Face ``Image`` feature).

``meta["src_ref"]``, ``meta["tgt_ref"]`` and optionally ``meta["mask_ref"]``. Inline images
(``data:`` URIs) are decoded by the reader straight into ``src``/``tgt``/``mask``.
"""

from __future__ import annotations

import base64
import glob
import binascii
import math
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import RecordError
from ..schema import Row, drop, make_key, new_row

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def instruction_problem(value: Any) -> str | None:
    """Why an instruction is unusable (None when it is fine)."""
    if value is None:
        return "instruction is missing"
    if is_nan(value):
        return "instruction is NaN"
    if not isinstance(value, str):
        return f"instruction is not text ({type(value).__name__})"
    text = value.strip()
    if not text:
        return "instruction is empty"
    if text.lower() in ("nan", "none", "null"):
        return "instruction is NaN"
    return None


def sanitize(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become None (the meta column must be valid JSON)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    if isinstance(obj, (bytes, bytearray)):
        return f"<{len(obj)} bytes>"
    return obj


def edit_record(dataset: str, record_id: str, instruction: Any, *, src_ref: dict | None, tgt_ref: dict | None,
                mask_ref: dict | None = None, file: str | None = None, task: str = "edit", **extra: Any) -> Row:
    """One editing record; an unusable instruction or a missing image reference drops it."""
    meta: dict[str, Any] = {"file": file or (src_ref or {}).get("path") or (src_ref or {}).get("parquet"),
                            "record_id": record_id, "src_ref": src_ref, "tgt_ref": tgt_ref, **sanitize(extra)}
    if mask_ref is not None:
        meta["mask_ref"] = mask_ref
    text = instruction.strip() if isinstance(instruction, str) else None
    row = new_row(key=make_key(dataset, record_id, "rec"), task=task, dataset=dataset, instruction=text, meta=meta)
    problem = instruction_problem(instruction)
    if problem:
        drop(row, f"{problem} (record={record_id})")
    if src_ref is None:
        drop(row, f"missing pair half: no source image (record={record_id})")
    if tgt_ref is None:
        drop(row, f"missing pair half: no target image (record={record_id})")
    return row


def find_image(folder: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS):
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def path_ref(path: Path | None) -> dict | None:
    return {"path": str(path.resolve())} if path is not None and path.is_file() else None


def parquet_files(spec: str | list[str]) -> list[Path]:
    """Parquet files named by a file, a folder (searched recursively) or a glob, sorted."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    out: list[Path] = []
    for s in specs:
        p = Path(s)
        if p.is_dir():
            out += sorted(p.rglob("*.parquet"))
        elif any(c in s for c in "*?["):
            out += sorted(Path(m) for m in glob.glob(s, recursive=True))
        else:
            out.append(p)
    return [p.resolve() for p in out]


def is_image_type(t: pa.DataType) -> bool:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    return pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields))


READ_ERROR = "__read_error__"


def iter_parquet(path: Path, columns: list[str]) -> Iterator[tuple[int, dict]]:
    """(row index, {column: value}) of the given (non-image) columns of a parquet file, one row group
    at a time. A row group that cannot be read gives one item ``(first row, {READ_ERROR: message})``
    and reading goes on with the next group."""
    try:
        pf = pq.ParquetFile(path)
        groups = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    except (OSError, pa.ArrowException) as e:
        yield 0, {READ_ERROR: f"parquet file unreadable ({type(e).__name__}: {e})"}
        return
    first = 0
    for g, n in enumerate(groups):
        try:
            recs = pf.read_row_group(g, columns=columns).to_pylist()
        except (OSError, pa.ArrowException) as e:
            yield first, {READ_ERROR: f"unreadable parquet rows {first}-{first + n - 1} ({type(e).__name__}: {e})"}
            recs = None
        for j, rec in enumerate(recs or []):
            yield first + j, rec
        first += n


def read_error_record(dataset: str, path: Path, i: int, message: str) -> Row:
    rid = f"{path.stem}/{i}-unreadable"
    row = new_row(key=make_key(dataset, rid, "rec"), task="edit", dataset=dataset,
                  meta={"file": str(path), "record_id": rid})
    return drop(row, f"{message} (file={path})")


def image_value_to_ref(value: Any, base: Path, where: str) -> tuple[dict | None, bytes | None, str | None]:
    """A path/URI/bytes value of a triplet column -> (reference, inline bytes, problem)."""
    if value is None or is_nan(value):
        return None, None, f"{where} is empty"
    if isinstance(value, (bytes, bytearray)):
        return None, bytes(value), None
    if isinstance(value, dict):
        if value.get("bytes"):
            return None, bytes(value["bytes"]), None
        value = value.get("path")
        if not value:
            return None, None, f"{where} is empty"
    if not isinstance(value, str):
        return None, None, f"{where} has unsupported type {type(value).__name__}"
    text = value.strip()
    if text.startswith("data:"):
        m = re.match(r"data:[^;,]*(;base64)?,(.*)$", text, re.DOTALL)
        if not m:
            return None, None, f"{where} is a malformed data URI"
        try:
            data = base64.b64decode(m.group(2), validate=False) if m.group(1) else unquote(m.group(2)).encode("latin-1")
        except (binascii.Error, ValueError):
            return None, None, f"{where} is a malformed data URI"
        return None, data, None
    parsed = urlparse(text)
    if parsed.scheme in ("http", "https", "s3", "gs"):
        return None, None, f"{where} is a remote URI ({parsed.scheme}://); download the images first"
    if parsed.scheme == "file":
        p = Path(unquote(parsed.path))
    elif not text:
        return None, None, f"{where} is empty"
    else:
        p = Path(text)
        if not p.is_absolute():
            p = base / p
    if not p.is_file():
        return None, None, f"{where}: image file missing ({p})"
    return {"path": str(p.resolve())}, None, None


class ParquetCells:
    """Reads single cells of parquet files for the stage, one row group at a time (small LRU)."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._groups: OrderedDict[tuple, pa.Table] = OrderedDict()
        self._files: dict[str, tuple[pq.ParquetFile, list[int]]] = {}

    def _file(self, path: str) -> tuple[pq.ParquetFile, list[int]]:
        if path not in self._files:
            pf = pq.ParquetFile(path)
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
        except (OSError, pa.ArrowException) as e:
            raise RecordError(f"parquet file unreadable ({type(e).__name__})", file=path, record=record) from None
        if not 0 <= row < starts[-1]:
            raise RecordError(f"parquet row {row} out of range", file=path, record=record)
        g = next(i for i in range(len(starts) - 1) if starts[i] <= row < starts[i + 1])
        key = (path, g, column)
        table = self._groups.get(key)
        if table is None:
            try:
                table = pf.read_row_group(g, columns=[column])
            except (OSError, pa.ArrowException, KeyError) as e:
                raise RecordError(f"unreadable parquet row ({type(e).__name__}: {e})", file=path, record=record,
                                  field=column) from None
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
