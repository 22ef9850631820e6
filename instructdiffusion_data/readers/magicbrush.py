"""MagicBrush (the Hugging Face ``osunlp/MagicBrush`` parquet files, ``data/train-*.parquet``).

Columns: ``img_id`` (the session), ``turn_index`` (1, 2, 3 ...), ``source_img``, ``mask_img``,
``instruction``, ``target_img``; older files say ``input_img``/``output_img`` for the images: both
are accepted. Each turn is one record; a multi-turn session keeps its order in ``meta``
(``session``, ``turn_index``, ``session_turns``, ``previous_key``: the turn before, whose target is
this turn's source). Records are sorted by (session, turn).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError
from ..schema import Row, drop, make_key, new_row
from ._base import RecordSource, SourceConfig
from . import _edit

SOURCE_COLUMNS = ("source_img", "input_img")
TARGET_COLUMNS = ("target_img", "output_img")


@dataclass
class MagicBrushConfig(SourceConfig):
    parquet: str | list[str] = ""  # file(s), a folder (searched recursively) or a glob
    use_mask: bool = True


def _turn(v) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 1 << 30


class MagicBrushSource(RecordSource):
    name = "magicbrush"
    Config = MagicBrushConfig

    def validate(self) -> None:
        if not self.config.parquet:
            raise ConfigError("source.parquet: required (MagicBrush parquet files or their folder)")
        if not _edit.parquet_files(self.config.parquet):
            raise ConfigError(f"source.parquet: no parquet files match {self.config.parquet}")

    def records(self) -> Iterator[Row]:
        for f in _edit.parquet_files(self.config.parquet):
            try:
                schema = pq.read_schema(f)
            except (OSError, pa.ArrowException) as e:
                row = new_row(key=make_key("magicbrush", f.name, "rec"), task="edit", dataset="magicbrush",
                              meta={"file": str(f), "record_id": f.name})
                yield drop(row, f"parquet file unreadable ({type(e).__name__}) (file={f})")
                continue
            names = schema.names
            src_col = next((c for c in SOURCE_COLUMNS if c in names), None)
            tgt_col = next((c for c in TARGET_COLUMNS if c in names), None)
            if not src_col or not tgt_col or "instruction" not in names:
                raise ConfigError(f"source.parquet: {f}: expected columns instruction, source_img|input_img and "
                                  f"target_img|output_img (found: {', '.join(names)})")
            mask_col = "mask_img" if self.config.use_mask and "mask_img" in names else None
            text_cols = [n for n in names if not _edit.is_image_type(schema.field(n).type)]
            recs = []
            for i, rec in _edit.iter_parquet(f, text_cols):
                if _edit.READ_ERROR in rec:
                    yield _edit.read_error_record("magicbrush", f, i, rec[_edit.READ_ERROR])
                else:
                    recs.append((i, rec))
            sessions: dict[str, list[int]] = {}
            for i, rec in recs:
                sessions.setdefault(str(rec.get("img_id")), []).append(_turn(rec.get("turn_index")))
            for i, rec in sorted(recs, key=lambda ir: (str(ir[1].get("img_id")), _turn(ir[1].get("turn_index")), ir[0])):
                session = str(rec.get("img_id"))
                turn = _turn(rec.get("turn_index"))
                rid = f"{session}/{rec.get('turn_index')}"
                turns = sorted(sessions[session])
                prev = [t for t in turns if t < turn]
                ref = {"parquet": str(f), "row": i}
                yield _edit.edit_record(
                    "magicbrush", rid, rec.get("instruction"), src_ref={**ref, "column": src_col},
                    tgt_ref={**ref, "column": tgt_col}, mask_ref={**ref, "column": mask_col} if mask_col else None,
                    file=str(f), parquet_row=i, session=session, turn_index=rec.get("turn_index"),
                    session_turns=len(turns), turn_position=turns.index(turn) + 1 if turn in turns else None,
                    previous_key=make_key("magicbrush", f"{session}/{prev[-1]}", "rec") if prev else None,
                )


SOURCE = MagicBrushSource
