"""Your own editing triplets: a JSONL, JSON (list), CSV or parquet table with a source image, a target
image and an instruction per row (column names configurable), for sets no public layout covers
(e.g. crawled Photoshop requests).

Image values may be paths (relative to ``image_root``, default: the table's folder), ``file://``
URIs, ``data:`` URIs, or bytes (parquet binary or ``{bytes, path}`` structs). ``http(s)://`` URIs are
refused per row (download the images first). ``dataset``/``task`` name the rows.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError
from ..schema import TASKS, Row, drop
from ._base import RecordSource, SourceConfig
from . import _edit


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


class TripletsSource(RecordSource):
    name = "triplets"
    Config = TripletsConfig

    def _format(self) -> str:
        if self.config.format != "auto":
            return self.config.format
        suffix = Path(self.config.file).suffix.lower()
        fmt = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(suffix)
        if not fmt:
            raise ConfigError(f"source.file: cannot tell the format of {self.config.file} (set source.format)")
        return fmt

    def validate(self) -> None:
        from ..config import check_path

        if not self.config.file:
            raise ConfigError("source.file: required (a .jsonl, .json, .csv or .parquet table)")
        check_path(self.config.file, "source.file", kind="file")
        check_path(self.config.image_root, "source.image_root", kind="dir")
        if self.config.task not in TASKS:
            raise ConfigError(f"source.task: {self.config.task!r} is not one of {', '.join(TASKS)}")
        self._format()

    def _rows(self) -> Iterator[tuple[int, dict, str | None]]:
        """(row number, values, problem) in file order; a damaged line is a row with its problem."""
        path = Path(self.config.file)
        fmt = self._format()
        if fmt == "jsonl":
            with open(path, encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                        yield i, rec if isinstance(rec, dict) else {}, None if isinstance(rec, dict) else "line is not an object"
                    except ValueError as e:
                        yield i, {}, f"unreadable JSON line ({e.msg})"
        elif fmt == "json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as e:
                raise ConfigError(f"source.file: {path} is not valid JSON ({e})") from None
            if not isinstance(data, list):
                raise ConfigError(f"source.file: {path}: expected a list of objects")
            for i, rec in enumerate(data):
                yield i, rec if isinstance(rec, dict) else {}, None if isinstance(rec, dict) else "entry is not an object"
        elif fmt == "csv":
            with open(path, encoding="utf-8", newline="") as fh:
                for i, rec in enumerate(csv.DictReader(fh)):
                    yield i, rec, None
        else:
            try:
                schema = pq.read_schema(path)
            except (OSError, pa.ArrowException) as e:
                raise ConfigError(f"source.file: {path} is not a readable parquet file ({type(e).__name__})") from None
            self._image_cols = {n for n in schema.names if _edit.is_image_type(schema.field(n).type)}
            text_cols = [n for n in schema.names if n not in self._image_cols]
            for i, rec in _edit.iter_parquet(path, text_cols):
                if _edit.READ_ERROR in rec:
                    yield i, {}, rec[_edit.READ_ERROR]
                    continue
                yield i, rec, None

    def _ref(self, rec: dict, i: int, column: str | None, base: Path) -> tuple[dict | None, bytes | None, str | None]:
        if column is None:
            return None, None, None
        if self._format() == "parquet" and column in getattr(self, "_image_cols", set()):
            return {"parquet": str(Path(self.config.file).resolve()), "row": i, "column": column}, None, None
        if column not in rec:
            return None, None, f"column {column!r} missing"
        return _edit.image_value_to_ref(rec.get(column), base, column)

    def records(self) -> Iterator[Row]:
        c = self.config
        base = Path(c.image_root).resolve() if c.image_root else Path(c.file).resolve().parent
        for i, rec, problem in self._rows():
            rid = str(rec.get(c.id_column)) if c.id_column and rec.get(c.id_column) not in (None, "") else str(i)
            src_ref, src_bytes, p_src = self._ref(rec, i, c.source_column, base)
            tgt_ref, tgt_bytes, p_tgt = self._ref(rec, i, c.target_column, base)
            mask_ref, mask_bytes, p_mask = self._ref(rec, i, c.mask_column, base)
            if p_mask and p_mask.endswith("is empty"):
                p_mask = None  # the mask is optional per row
            extra = {k: v for k, v in rec.items() if k not in {c.source_column, c.target_column, c.mask_column,
                                                              c.instruction_column} and not isinstance(v, (bytes, dict))}
            # refs are {} when the bytes are inline or the value is unusable (the precise reason follows)
            row = _edit.edit_record(c.dataset, rid, rec.get(c.instruction_column), task=c.task,
                                    src_ref=src_ref or {}, tgt_ref=tgt_ref or {},
                                    mask_ref=(mask_ref or {}) if c.mask_column else None,
                                    file=str(Path(c.file).resolve()), row_number=i, columns=_edit.sanitize(extra))
            row["src"], row["tgt"], row["mask"] = src_bytes, tgt_bytes, mask_bytes
            for p in (problem, p_src, p_tgt, p_mask):
                if p:
                    drop(row, f"{p} (record={rid}, file={c.file})")
            yield row


SOURCE = TripletsSource
