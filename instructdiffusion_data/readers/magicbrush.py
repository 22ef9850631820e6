"""MagicBrush (the Hugging Face ``osunlp/MagicBrush`` parquet files, ``data/train-*.parquet``).

Columns: ``img_id`` (the session: the MS-COCO image id), ``turn_index`` (1, 2, 3 ...),
``source_img``, ``mask_img``, ``instruction``, ``target_img``; older files say
``input_img``/``output_img`` for the images: both are accepted. Each turn is one record
(``record_id = "<img_id>/<turn_index>"``), in file order; a multi-turn session keeps its order in
``meta`` (``session``, ``turn_index``, ``session_turns``, ``turn_position``, ``previous_key``: the
turn before, whose target is this turn's source), known from a first pass over the two id columns.
Files are read one row group at a time, text columns only (the stage reads the image cells).

``source.exclude_image_ids`` applies to ``img_id`` (MagicBrush edits COCO images: keep evaluation
images out). A row whose ``img_id`` or ``turn_index`` is missing, of the wrong type or not finite
is a dropped record naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError
from ..schema import Row, make_key
from ._base import BAD_FIELD, EXCLUDED, NOT_FINITE, RecordSource, SourceConfig
from . import _edit
from ._coco import annotation_inputs

DATASET = "magicbrush"
SOURCE_COLUMNS = ("source_img", "input_img")
TARGET_COLUMNS = ("target_img", "output_img")


@dataclass
class MagicBrushConfig(SourceConfig):
    parquet: str | list[str] = ""  # file(s), a folder (searched recursively) or a glob
    use_mask: bool = True


def _session(v: Any) -> tuple[str | None, str | None]:
    """(session id, fault class) of an ``img_id`` value."""
    if isinstance(v, bool) or v is None:
        return None, BAD_FIELD
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return None, NOT_FINITE
        return (str(int(v)), None) if v.is_integer() else (None, BAD_FIELD)
    if isinstance(v, int):
        return str(v), None
    if isinstance(v, str) and v.strip() and "/" not in v:
        return v.strip(), None
    return None, BAD_FIELD


def _turn(v: Any) -> tuple[int | None, str | None]:
    if isinstance(v, bool) or v is None:
        return None, BAD_FIELD
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return None, NOT_FINITE
        return (int(v), None) if v.is_integer() else (None, BAD_FIELD)
    if isinstance(v, int):
        return v, None
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v.strip()), None
    return None, BAD_FIELD


class MagicBrushSource(RecordSource):
    name = "magicbrush"
    Config = MagicBrushConfig

    def validate(self) -> None:
        if not self.config.parquet:
            raise ConfigError("source.parquet: required (MagicBrush parquet files or their folder)")
        files = _edit.parquet_files(self.config.parquet)
        if not files:
            raise ConfigError(f"source.parquet: no parquet files match {self.config.parquet}")
        self._columns = {}
        for f, schema in _edit.check_parquet(files, "source.parquet").items():
            names = schema.names
            src = next((c for c in SOURCE_COLUMNS if c in names), None)
            tgt = next((c for c in TARGET_COLUMNS if c in names), None)
            if not src or not tgt or not {"instruction", "img_id", "turn_index"} <= set(names):
                raise ConfigError(f"source.parquet: {f}: expected columns img_id, turn_index, instruction, "
                                  f"source_img|input_img and target_img|output_img (found: {', '.join(names)})")
            mask = "mask_img" if self.config.use_mask and "mask_img" in names else None
            self._columns[f] = (src, tgt, mask, _edit.text_columns(schema))

    def input_files(self) -> list[str]:
        return annotation_inputs(self, *_edit.parquet_files(self.config.parquet))

    def records(self) -> Iterator[Row]:
        seen: set[str] = set()
        for f, (src_col, tgt_col, mask_col, text_cols) in self._columns.items():
            sessions = self._sessions(f)
            stem = Path(f).stem
            for i, rec, err in _edit.iter_parquet(f, text_cols, "source.parquet"):
                if err is not None:
                    row = _edit.unreadable_row(DATASET, f, i, err)
                    seen.add(row["meta"]["record_id"])
                    yield row
                    continue
                ref = {"parquet": f, "row": i}
                session, s_fault = _session(rec.get("img_id"))
                turn, t_fault = _turn(rec.get("turn_index"))
                faults: list[tuple] = []
                if s_fault:
                    faults.append((s_fault, "img_id"))
                if t_fault:
                    faults.append((t_fault, "turn_index"))
                rid, dup = _edit.unique_id(f"{session}/{turn}" if not faults else f"{stem}/{i}", seen, f"{stem}/{i}")
                if dup:
                    faults.append((_edit.DUPLICATE_ID, "img_id"))
                if session is not None and not s_fault and self.excluded(session):
                    self.stats["excluded"] += 1
                    faults.append((EXCLUDED, "img_id"))
                turns = sessions.get(session, []) if not faults else []
                prev = [t for t in turns if turn is not None and t < turn]
                yield _edit.edit_record(
                    DATASET, rid, rec.get("instruction"), src_ref={**ref, "column": src_col},
                    tgt_ref={**ref, "column": tgt_col}, mask_ref={**ref, "column": mask_col} if mask_col else None,
                    file=f, parquet_row=i, faults=faults, session=session, turn_index=turn,
                    session_turns=len(turns) or None, turn_position=turns.index(turn) + 1 if turn in turns else None,
                    previous_key=make_key(DATASET, f"{session}/{prev[-1]}", "rec") if prev else None,
                )

    @staticmethod
    def _sessions(f: str) -> dict[str, list[int]]:
        """session -> its turn numbers (sorted, distinct), from the two id columns only."""
        out: dict[str, set[int]] = {}
        for _i, rec, err in _edit.iter_parquet(f, ["img_id", "turn_index"], "source.parquet", batch_rows=65536):
            if err is None:
                s, sf = _session(rec.get("img_id"))
                t, tf = _turn(rec.get("turn_index"))
                if not sf and not tf:
                    out.setdefault(s, set()).add(t)
        return {k: sorted(v) for k, v in out.items()}


SOURCE = MagicBrushSource
