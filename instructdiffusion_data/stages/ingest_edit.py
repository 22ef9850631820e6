"""``ingest_edit``: load the images of an existing editing dataset's record and check it.

Resolves the image references a reader put in ``meta`` (files, parquet cells; inline bytes are
already in the row), checks that source and target decode and have the same size, binarises the
mask, re-encodes only where needed (``format: keep`` passes JPEG/PNG bytes through untouched), and
applies a score filter: ``min_scores: {clip_sim_dir: 0.2, ...}`` drops a row whose
``meta["scores"][name]`` is below the threshold with the reason ``clip_sim_dir<0.2``
(InstructPix2Pix's CLIP scores under their released names ``clip_sim_0``, ``clip_sim_1``,
``clip_sim_dir``, ``clip_sim_image``; ``clip_sim_direction`` is accepted as an alias of
``clip_sim_dir``; the paper trained on a filtered subset). A name no reader gives is a config error.
A row without a configured score is not filtered and lists it in ``meta.filter_missing``; when no row
of a batch has it, a warning says the threshold filters nothing. A missing, corrupt, empty or too large
image (every decode goes through :mod:`..imageio` and its pixel limit), a size mismatch (class ``size
mismatch between source and target``, the two sizes as details) and a NaN or empty instruction drop the
row with its reason.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from .. import imageio
from ..errors import ConfigError, RecordError
from ..readers._edit import IP2P_SCORES, SCORE_ALIASES, ParquetCells, instruction_problem, score_name
from ..schema import Row, drop
from ..stage import Stage, StageConfig

log = logging.getLogger(__name__)

COLUMNS = ("src", "tgt", "mask")


@dataclass
class IngestEditConfig(StageConfig):
    min_scores: dict[str, float] = field(default_factory=dict)  # meta["scores"] name -> minimum kept
    max_side: int | None = None  # downscale so the longer side is at most this (null: never)
    format: Literal["keep", "jpg", "png"] = "keep"  # keep: pass JPEG/PNG bytes through when not resized
    quality: int = 95
    mismatch: Literal["drop", "resize"] = "drop"  # target size differs from the source: drop, or resize target
    mask_mode: Literal["auto", "alpha", "luma"] = "auto"  # auto: transparent pixels of an RGBA mask, else bright pixels


class IngestEditStage(Stage):
    name = "ingest_edit"
    Config = IngestEditConfig

    def validate(self) -> None:
        c = self.config
        if c.max_side is not None and c.max_side < 8:
            raise ConfigError(f"stages.ingest_edit.max_side: must be >= 8 or null, got {c.max_side}")
        if not 1 <= c.quality <= 100:
            raise ConfigError(f"stages.ingest_edit.quality: must be in 1..100, got {c.quality}")
        self._min: dict[str, float] = {}
        for name, thr in (c.min_scores or {}).items():
            key = score_name(str(name))
            if key not in IP2P_SCORES:
                raise ConfigError(f"stages.ingest_edit.min_scores.{name}: no reader gives this score (known: "
                                  f"{', '.join(IP2P_SCORES)}; alias: {', '.join(SCORE_ALIASES)})")
            if key in self._min:
                raise ConfigError(f"stages.ingest_edit.min_scores.{name}: {key} is configured twice")
            if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not math.isfinite(thr):
                raise ConfigError(f"stages.ingest_edit.min_scores.{name}: expected a finite number, got {thr!r}")
            self._min[key] = float(thr)
        self._warned: set[str] = set()

    def setup(self) -> None:
        self._cells = ParquetCells()

    def process(self, rows: list[Row]) -> list[Row]:
        if not hasattr(self, "_cells"):
            self.setup()
        # read parquet cells file by file, row by row, so a row group is decoded once per batch
        order = sorted(range(len(rows)), key=lambda i: self._sort_key(rows[i]))
        out = list(rows)
        for i in order:
            new = dict(rows[i], meta=dict(rows[i]["meta"]))
            try:
                self._one(new)
            except RecordError as e:  # the row's own fault: dropped with its reason, the batch goes on
                new = drop(dict(rows[i], meta=dict(rows[i]["meta"])), f"{self.name}: {e.reason}", file=e.file,
                           record=e.record, field=e.field, **getattr(e, "detail", {}))
            out[i] = new
        for name in sorted(getattr(self, "_min", {})):
            if rows and name not in self._warned and not any(
                    name in {score_name(k) for k in ((r.get("meta") or {}).get("scores") or {})} for r in out):
                self._warned.add(name)
                log.warning("stages.ingest_edit.min_scores.%s: no row of this batch has meta.scores.%s; the "
                            "threshold filters nothing here (rows list it in meta.filter_missing)", name, name)
        return out

    @staticmethod
    def _sort_key(row: Row) -> tuple:
        ref = (row.get("meta") or {}).get("src_ref") or {}
        return (ref.get("parquet") or "", ref.get("row", -1))

    def _bytes(self, row: Row, col: str, rid: str) -> bytes | None:
        if row.get(col):
            return row[col]
        ref = row["meta"].get(f"{col}_ref")
        if ref is None:
            if col == "mask":
                return None
            raise RecordError(f"missing pair half: no {'source' if col == 'src' else 'target'} image", record=rid)
        if ref.get("path"):
            return imageio.read_bytes(ref["path"], rid)
        if ref.get("parquet"):
            return self._cells.get(ref["parquet"], int(ref["row"]), ref["column"], rid)
        if col == "mask":
            return None
        raise RecordError(f"{'source' if col == 'src' else 'target'} image missing", record=rid)

    def _one(self, row: Row) -> None:
        c = self.config
        meta = row["meta"]
        rid = str(meta.get("record_id"))
        problem = instruction_problem(row.get("instruction"))
        if problem:
            raise RecordError(problem, record=rid, field="instruction")
        row["instruction"] = row["instruction"].strip()
        data = {col: self._bytes(row, col, rid) for col in COLUMNS}
        where = meta.get("file")
        src = imageio.decode(data["src"], file=where, record=rid)
        tgt = imageio.decode(data["tgt"], file=where, record=rid)
        h, w = src.shape[:2]
        resized = False
        if tgt.shape[:2] != (h, w):
            if c.mismatch == "drop":
                raise RecordError("size mismatch between source and target", file=where, record=rid,
                                  source=f"{w}x{h}", target=f"{tgt.shape[1]}x{tgt.shape[0]}")
            tgt = cv2.resize(tgt, (w, h), interpolation=cv2.INTER_AREA)
            resized = True
        mask = self._mask(data["mask"], (h, w), where, rid) if data["mask"] else None
        scale = imageio.fit_scale(h, w, c.max_side)
        if scale != 1.0:
            src, tgt = imageio.resize(src, scale), imageio.resize(tgt, scale)
            if mask is not None:
                mask = imageio.resize_mask(mask, src.shape[:2])
        row["src"] = self._encode(data["src"], src, scale != 1.0)
        row["tgt"] = self._encode(data["tgt"], tgt, scale != 1.0 or resized)
        row["mask"] = imageio.encode_png(mask) if mask is not None else None
        for col in COLUMNS:  # inline placeholders carry nothing worth keeping
            if meta.get(f"{col}_ref") == {}:
                meta.pop(f"{col}_ref")
        meta.update(width=int(src.shape[1]), height=int(src.shape[0]), source_size=[w, h])
        if scale != 1.0:
            meta["scale"] = scale
        if resized:
            meta["target_resized"] = True
        if self._min:
            scores = {score_name(k): v for k, v in (meta.get("scores") or {}).items()}
            meta["filter"] = dict(self._min)
            missing = [name for name in sorted(self._min) if not isinstance(scores.get(name), (int, float))]
            if missing:
                meta["filter_missing"] = missing
            for name, thr in sorted(self._min.items()):
                v = scores.get(name)
                if isinstance(v, (int, float)) and v < thr:
                    drop(row, f"{name}<{thr:g}", record=rid, field=f"meta.scores.{name}", value=v)

    def _encode(self, original: bytes, rgb: np.ndarray, changed: bool) -> bytes:
        c = self.config
        ext = imageio.sniff_ext(original)
        if c.format == "keep" and not changed and ext in ("jpg", "png"):
            return original
        fmt = c.format if c.format != "keep" else (ext if ext in ("jpg", "png") else "jpg")
        return imageio.encode(rgb, fmt, c.quality)

    def _mask(self, data: bytes, shape: tuple[int, int], where, rid: str) -> np.ndarray:
        # through imageio: its pixel limit refuses a huge header ("image too large") before any decode
        arr = imageio.decode_unchanged(data, file=where, record=rid, what="mask image")
        if arr.dtype != np.uint8:
            arr = (arr / max(1, arr.max()) * 255).astype(np.uint8)
        mode = self.config.mask_mode
        if arr.ndim == 3 and arr.shape[2] == 4 and mode in ("auto", "alpha"):
            alpha = arr[..., 3]
            if mode == "alpha" or alpha.min() != alpha.max():
                m = alpha < 128
            else:
                m = cv2.cvtColor(arr[..., :3], cv2.COLOR_BGR2GRAY) > 127
        else:
            gray = arr if arr.ndim == 2 else cv2.cvtColor(arr[..., :3], cv2.COLOR_BGR2GRAY)
            m = gray > 127
        m = np.where(m, 255, 0).astype(np.uint8)
        if m.shape != shape:
            m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        return m


STAGE = IngestEditStage
