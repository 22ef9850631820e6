"""``enhance_pair``: turn a (degraded, clean) pair record into a training row (deblur, denoise,
dewatermark).

Loads both images (and the watermark mask when the record has one), checks that they have the same
size, cuts the same seeded random crop out of each (``crop_size``; ``null`` keeps the full
resolution, as the paper evaluates GoPro), and picks an instruction from the task's templates
(``configs/instructions/<task>.txt``). ``crops_per_pair`` > 1 gives several crops of one pair, each
its own row and key. A size mismatch, a missing or corrupt image drops the row with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .. import imageio
from ..config import rng
from ..contracts import record_drop
from ..errors import RecordError
from ..instructions import choose, load_templates
from ..schema import Row, make_key
from ..stage import Stage, StageConfig, child

TASKS = ("deblur", "denoise", "dewatermark")


@dataclass
class EnhancePairConfig(StageConfig):
    # side of the square training crop; null = full resolution
    crop_size: int | None = field(default=256, metadata=rng(8))
    # random crops per pair (each its own row); 1 when crop_size is null
    crops_per_pair: int = field(default=1, metadata=rng(1))
    allow_smaller: bool = True  # an image smaller than crop_size gives the largest crop that fits; false drops it
    # downscale both halves first so the longer side is at most this (null: never)
    max_side: int | None = field(default=None, metadata=rng(8))
    format: Literal["png", "jpg"] = "png"  # encoding of src/tgt (png: lossless, what restoration targets need)
    quality: int = field(default=95, metadata=rng(1, 100))  # JPEG quality when format is jpg
    templates_dir: str | None = None  # folder of <task>.txt templates (default: configs/instructions)


class EnhancePairStage(Stage):
    name = "enhance_pair"
    Config = EnhancePairConfig

    def max_rows_per_input(self) -> int:
        return self.config.crops_per_pair

    def validate(self) -> None:
        c = self.config
        for task in TASKS:  # fail before any work when a template file is missing
            load_templates(task, c.templates_dir)

    def process(self, rows: list[Row]) -> list[Row]:
        out: list[Row] = []
        for row in rows:
            try:
                out.extend(self._one(row))
            except RecordError as e:  # the row's own fault: dropped with its reason, the batch goes on
                out.append(record_drop(child(row), self.name, e))
        return out

    def _load(self, meta: dict, field: str, rid: str) -> tuple[np.ndarray, bytes]:
        path = meta.get(field)
        if not path:
            raise RecordError("missing pair half", record=rid, field=field)
        data = imageio.read_bytes(path, rid)
        return imageio.decode(data, file=path, record=rid), data

    def _one(self, row: Row) -> list[Row]:
        c = self.config
        meta = row["meta"]
        rid = str(meta.get("record_id"))
        task = row["task"]
        if task not in TASKS:
            raise RecordError("not an enhancement task", record=rid, field="task", task=task)
        src, _ = self._load(meta, "file", rid)
        tgt, _ = self._load(meta, "target_file", rid)
        if src.shape != tgt.shape:
            raise RecordError("size mismatch between source and target", file=meta.get("file"), record=rid,
                              source=f"{src.shape[1]}x{src.shape[0]}", target=f"{tgt.shape[1]}x{tgt.shape[0]}")
        mask = None
        if meta.get("mask_file"):
            mdata = imageio.read_bytes(meta["mask_file"], rid)
            mask = imageio.decode_gray(mdata, file=meta["mask_file"], record=rid)
            if mask.shape[:2] != src.shape[:2]:
                raise RecordError("size mismatch between mask and image", file=meta["mask_file"], record=rid,
                                  mask=f"{mask.shape[1]}x{mask.shape[0]}", image=f"{src.shape[1]}x{src.shape[0]}")
        h0, w0 = src.shape[:2]
        scale = imageio.fit_scale(h0, w0, c.max_side)
        if scale != 1.0:
            src, tgt = imageio.resize(src, scale), imageio.resize(tgt, scale)
            if mask is not None:
                mask = imageio.resize_mask(mask, src.shape[:2])
        h, w = src.shape[:2]
        if c.crop_size is None:
            crops = [("full", 0, 0, w, h)]
        else:
            cw, ch = min(c.crop_size, w), min(c.crop_size, h)
            if (cw < c.crop_size or ch < c.crop_size) and not c.allow_smaller:
                raise RecordError("image smaller than crop_size", file=meta.get("file"), record=rid,
                                  size=f"{w}x{h}", crop_size=c.crop_size)
            crops = []
            for i in range(c.crops_per_pair):
                rng = self.rng(row["key"], "crop", i)
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                crops.append((f"crop{i}", x, y, cw, ch))
        templates = load_templates(task, c.templates_dir)
        out = []
        for variant, x, y, cw, ch in crops:
            s, t = src[y:y + ch, x:x + cw], tgt[y:y + ch, x:x + cw]
            t_idx, text = choose(templates, self.rng(row["key"], "instruction", variant))
            new = child(row, key=make_key(row["dataset"], rid, variant), src=imageio.encode(s, c.format, c.quality),
                        tgt=imageio.encode(t, c.format, c.quality), instruction=text)
            if mask is not None:
                m = mask[y:y + ch, x:x + cw]
                new["mask"] = imageio.encode_png(np.where(m > 127, 255, 0).astype(np.uint8))
            new["meta"].update(crop=[x, y, cw, ch], source_size=[w0, h0], scale=scale, width=cw, height=ch,
                               template=t_idx, variant=variant)
            out.append(new)
        return out


STAGE = EnhancePairStage
