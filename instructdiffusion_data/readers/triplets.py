"""Your own editing triplets: a JSONL, JSON (list), CSV or parquet table with a source image, a target
image and an instruction per row (column names configurable), for sets no public layout covers
(e.g. crawled Photoshop requests).

Image values may be paths (relative to ``image_root``, default: the table's folder), ``file://``
URIs, ``data:`` URIs, or bytes (parquet binary or ``{bytes, path}`` structs). ``http(s)://`` URIs are
refused per row (download the images first). ``dataset``/``task`` name the rows.

JSONL, CSV and parquet are streamed (parquet one row group at a time); a JSON list is read whole.
One record per row (``record_id`` = ``id_column``'s value, else the row number); a damaged line, a
row that is not an object, a repeated id or an unusable value is a dropped record naming the field.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal
from urllib.parse import unquote, urlparse

from ..config import check_path
from ..errors import ConfigError
from ..schema import TASKS, Row
from ..storage import exists, is_uri, read_bytes
from ._base import BAD_FIELD, NO_IMAGE_FILE, RecordSource, SourceConfig, finite, load_json
from . import _edit
from ._coco import annotation_inputs

BAD_LINE = "unreadable JSON line"
NOT_AN_OBJECT = "row is not an object"
EMPTY_VALUE = "image value is empty"
BAD_DATA_URI = "malformed data URI"
REMOTE_URI = "remote image URI (download the images first)"


@dataclass
class TripletsConfig(SourceConfig):
    file: str = ""  # the table (.jsonl, .json, .csv, .parquet)
    format: Literal["auto", "jsonl", "json", "csv", "parquet"] = "auto"
    dataset: str = "triplets"
    task: str = "edit"
    source_column: str = "source"
    target_column: str = "target"
    instruction_column: str = "instruction"
    mask_column: str | None = None
    id_column: str | None = None  # default: the row number
    image_root: str | None = None  # base of relative image paths (default: the table's folder)


def image_value_to_ref(value: Any, base: str, column: str) -> tuple[dict | None, bytes | None, tuple | None]:
    """A path/URI/bytes value of a triplet column -> (reference, inline bytes, fault)."""
    if value is None or (isinstance(value, float) and not finite(value)):
        return None, None, (EMPTY_VALUE, column)
    if isinstance(value, (bytes, bytearray)):
        return ({}, bytes(value), None) if value else (None, None, (EMPTY_VALUE, column))
    if isinstance(value, dict):
        if value.get("bytes"):
            return {}, bytes(value["bytes"]), None
        value = value.get("path")
        if value is None:
            return None, None, (EMPTY_VALUE, column)
    if not isinstance(value, str):
        return None, None, (BAD_FIELD, column, {"type": type(value).__name__})
    text = value.strip()
    if not text:
        return None, None, (EMPTY_VALUE, column)
    if text.startswith("data:"):
        m = re.match(r"data:[^;,]*(;base64)?,(.*)$", text, re.DOTALL)
        if not m:
            return None, None, (BAD_DATA_URI, column)
        try:
            data = base64.b64decode(m.group(2), validate=False) if m.group(1) else unquote(m.group(2)).encode("latin-1")
        except (binascii.Error, ValueError):
            return None, None, (BAD_DATA_URI, column)
        return {}, data, None
    parsed = urlparse(text)
    if parsed.scheme in ("http", "https"):
        return None, None, (REMOTE_URI, column, {"scheme": parsed.scheme})
    if parsed.scheme == "file":
        p = unquote(parsed.path)
    elif is_uri(text) or Path(text).is_absolute():
        p = text  # s3://, gs:// are read through storage
    else:
        p = f"{base.rstrip('/')}/{text}" if is_uri(base) else str(Path(base) / text)
    if not exists(p, "file"):
        return None, None, (NO_IMAGE_FILE, column, {"name": text[:200]})
    return {"path": p if is_uri(p) else str(Path(p).resolve())}, None, None


class TripletsSource(RecordSource):
    name = "triplets"
    Config = TripletsConfig

    def _format(self) -> str:
        if self.config.format != "auto":
            return self.config.format
        suffix = Path(self.config.file.split("?", 1)[0]).suffix.lower()
        fmt = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(suffix)
        if not fmt:
            raise ConfigError(f"source.file: cannot tell the format of {self.config.file} (set source.format)")
        return fmt

    def validate(self) -> None:
        if not self.config.file:
            raise ConfigError("source.file: required (a .jsonl, .json, .csv or .parquet table)")
        check_path(self.config.file, "source.file", kind="file")
        check_path(self.config.image_root, "source.image_root", kind="dir")
        if self.config.task not in TASKS:
            raise ConfigError(f"source.task: {self.config.task!r} is not one of {', '.join(TASKS)}")
        if self._format() == "parquet":
            _edit.check_parquet([self._file()], "source.file")

    def input_files(self) -> list[str]:
        """The table (not the image folder: see gier.py)."""
        return annotation_inputs(self, self._file())

    def _file(self) -> str:
        f = self.config.file
        return f if is_uri(f) else str(Path(f).resolve())

    def _lines(self) -> Iterator[str]:
        f = self._file()
        if is_uri(f):
            yield from io.StringIO(read_bytes(f).decode("utf-8", errors="replace"))
            return
        with open(f, encoding="utf-8", errors="replace", newline="") as fh:
            yield from fh

    def _rows(self) -> Iterator[tuple[int, dict, tuple | None]]:
        """(row number, values, fault) in file order; a damaged line is a row with its fault."""
        fmt = self._format()
        if fmt == "jsonl":
            for i, line in enumerate(self._lines()):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    yield i, {}, (BAD_LINE, "line", {"error": getattr(e, "msg", str(e))})
                    continue
                yield (i, rec, None) if isinstance(rec, dict) else (i, {}, (NOT_AN_OBJECT, "line"))
        elif fmt == "json":
            data = load_json(self._file(), "source.file")
            if not isinstance(data, list):
                raise ConfigError(f"source.file: {self.config.file}: expected a list of objects")
            for i, rec in enumerate(data):
                yield (i, rec, None) if isinstance(rec, dict) else (i, {}, (NOT_AN_OBJECT, "entry"))
        elif fmt == "csv":
            try:
                for i, rec in enumerate(csv.DictReader(self._lines())):
                    extra = rec.pop(None, None)
                    yield i, rec, (BAD_FIELD, "line", {"extra_values": len(extra)}) if extra else None
            except csv.Error as e:
                raise ConfigError(f"source.file: {self.config.file} is not readable CSV ({e})") from None
        else:
            f = self._file()
            schema = _edit.open_parquet(f, "source.file").schema_arrow
            self._image_cols = {n for n in schema.names if _edit.is_image_type(schema.field(n).type)}
            for i, rec, err in _edit.iter_parquet(f, [n for n in schema.names if n not in self._image_cols],
                                                  "source.file"):
                yield (i, rec, None) if err is None else (i, {}, (_edit.PARQUET_ROWS_UNREADABLE, "row", {"error": err}))

    def _ref(self, rec: dict, i: int, column: str | None, base: str) -> tuple[dict | None, bytes | None, tuple | None]:
        if column is None:
            return None, None, None
        if self._format() == "parquet" and column in getattr(self, "_image_cols", set()):
            return {"parquet": self._file(), "row": i, "column": column}, None, None
        if column not in rec:
            return None, None, (BAD_FIELD, column, {"missing": True})
        return image_value_to_ref(rec.get(column), base, column)

    def records(self) -> Iterator[Row]:
        c = self.config
        if c.image_root:
            base = c.image_root if is_uri(c.image_root) else str(Path(c.image_root).resolve())
        else:
            base = self._file().split("?", 1)[0].rsplit("/", 1)[0]
        seen: set[str] = set()
        for i, rec, fault in self._rows():
            faults = [fault] if fault else []
            rid_value = rec.get(c.id_column) if c.id_column else None
            if c.id_column and fault is None and (rid_value is None or (isinstance(rid_value, float) and not finite(rid_value))
                                                  or isinstance(rid_value, (dict, list, bytes))):
                faults.append((BAD_FIELD, c.id_column))
                rid_value = None
            rid, dup = _edit.unique_id(str(rid_value) if rid_value not in (None, "") else str(i), seen, i)
            if dup:
                faults.append((_edit.DUPLICATE_ID, c.id_column or "row"))
            src_ref, src_bytes, f_src = self._ref(rec, i, c.source_column, base) if not fault else ({}, None, None)
            tgt_ref, tgt_bytes, f_tgt = self._ref(rec, i, c.target_column, base) if not fault else ({}, None, None)
            mask_ref, mask_bytes, f_mask = self._ref(rec, i, c.mask_column, base) if not fault else (None, None, None)
            if f_mask and f_mask[0] == EMPTY_VALUE:
                f_mask = None  # the mask is optional per row
            faults += [f for f in (f_src, f_tgt, f_mask) if f]
            extra = {k: v for k, v in rec.items() if k not in {c.source_column, c.target_column, c.mask_column,
                                                              c.instruction_column} and not isinstance(v, (bytes, dict))}
            instruction = rec.get(c.instruction_column) if not fault else ""
            row = _edit.edit_record(c.dataset, rid, instruction, task=c.task,
                                    src_ref=src_ref if src_ref is not None else {},
                                    tgt_ref=tgt_ref if tgt_ref is not None else {},
                                    mask_ref=(mask_ref or {}) if c.mask_column else None,
                                    file=self._file(), faults=faults, src_field=c.source_column,
                                    tgt_field=c.target_column,
                                    instruction_field=c.instruction_column if not fault else fault[1],
                                    row_number=i, columns=extra)
            row["src"], row["tgt"], row["mask"] = src_bytes, tgt_bytes, mask_bytes
            yield row


SOURCE = TripletsSource
