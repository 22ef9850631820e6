"""``paint_replace``: edit the source region into the retrieved reference object (paper 3.2).

Input: region rows with ``meta["reference"]`` (the ``retrieve_reference`` stage). Output: the
same row, now a training triplet of task ``edit_replace``: ``src`` = the original image (its file
bytes, untouched), ``tgt`` = the edited image, ``mask`` = PNG (0/255) of the edited area,
``meta["edit"]`` = how it was made. The key is ``make_key(dataset, record_id, "replace")``.

Backends:

* ``poisson`` (default, weight-free, CPU): the old object is inpainted away (OpenCV Telea) and the
  reference patch is Poisson-blended (``cv2.seamlessClone``) into the region's box
  (:mod:`instructdiffusion_data.replace.blend`). ``meta["edit"]["weight_free"] = true``.
* ``paint_by_example``: PaintByExample (diffusers; :mod:`instructdiffusion_data.models.paint_by_example`,
  ``model`` = hub id or local folder in the published layout). Source, region mask (dilated by
  ``mask_dilate``) and reference patch (on white outside its mask, as the model was trained) go in at
  ``resolution``; ``steps``, ``guidance_scale`` and a per-row seed (from the pipeline seed and the
  key) in config. With ``paste_back`` only the masked area of the output replaces the source, the
  rest of the image stays bit-exact. Set ``num_gpus: 1`` and ``concurrency`` for a GPU actor pool.

Instructions: the ``caption`` (``annotations`` or ``blip2`` backend) and ``llm_instruction`` stages
that follow in the pipeline write them from ``meta["region"]["label"]`` and
``meta["reference"]["label"]``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from ..config import rng
from ..contracts import ReferencePatch
from ..errors import ConfigError, RecordError
from ..imageio import decode, encode, encode_png, read_bytes
from ..replace.blend import PoissonParams, poisson_replace
from ..replace.regions import region_mask
from ..schema import Row, make_key
from ..stage import Stage, StageConfig

log = logging.getLogger(__name__)


@dataclass
class PaintReplaceConfig(StageConfig):
    backend: Literal["poisson", "paint_by_example"] = "poisson"
    # poisson
    fit: float = field(default=1.0, metadata=rng(0.05, 4))  # reference scaled to the region's box times this
    dilate: int = field(default=3, metadata=rng(0))  # px grown around the source region before it is inpainted
    inpaint_radius: int = field(default=5, metadata=rng(1))
    clone: Literal["normal", "mixed"] = "normal"
    ring: float = field(default=0.08, metadata=rng(0, 1))  # clone mask = object grown by this fraction of its size
    # paint_by_example
    model: str = "Fantasy-Studio/Paint-by-Example"
    local_files_only: bool = False
    device: str | None = None  # None: cuda when available
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    steps: int = field(default=50, metadata=rng(1))
    guidance_scale: float = field(default=5.0, metadata=rng(0))
    resolution: int = field(default=512, metadata=rng(8))  # a multiple of 8
    mask_dilate: int = field(default=8, metadata=rng(0))  # px grown around the region before PaintByExample repaints it
    paste_back: bool = True
    # output
    tgt_format: Literal["jpg", "png"] = "jpg"
    jpeg_quality: int = field(default=95, metadata=rng(1, 100))
    batch_size: int = 8


class PaintReplaceStage(Stage):
    name = "paint_replace"
    Config = PaintReplaceConfig

    def validate(self) -> None:
        c = self.config
        if c.backend == "paint_by_example" and c.resolution % 8:
            raise ConfigError(f"stages({self.name}).resolution: must be a multiple of 8, got {c.resolution}")

    def setup(self) -> None:
        self.editor = None
        self._handles: dict = {}
        if self.config.backend == "paint_by_example":
            from ..models.paint_by_example import PaintByExampleEditor

            c = self.config
            self.editor = PaintByExampleEditor(c.model, device=c.device, dtype=c.dtype, steps=c.steps,
                                               guidance_scale=c.guidance_scale, resolution=c.resolution,
                                               local_files_only=c.local_files_only)

    def _inputs(self, row: Row) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
        m = row["meta"]
        rid = str(m.get("record_id"))
        ref = ReferencePatch.from_meta(m, record=rid)
        if ref is None or ref.patch is None:  # retrieve_reference writes it
            raise RecordError("no reference patch in the gallery", record=rid, field="reference.patch")
        src_bytes = read_bytes(m["file"], rid)
        src = decode(src_bytes, file=m["file"], record=rid)
        region = region_mask(m["region"], src.shape[0], src.shape[1])
        patch = ref.gallery_rgba(self._handles, record=rid)
        return src_bytes, src, region, patch

    def process(self, rows: list[Row]) -> list[Row]:
        c = self.config
        inputs = [self._inputs(r) for r in rows]
        if c.backend == "poisson":
            params = PoissonParams(fit=c.fit, dilate=c.dilate, inpaint_radius=c.inpaint_radius, clone=c.clone,
                                   ring=c.ring)
            results = [poisson_replace(src, region, patch, params) for _, src, region, patch in inputs]
            edit_meta = [{"backend": "poisson", "weight_free": True, "method": "cv2.inpaint(TELEA)+cv2.seamlessClone",
                          **info} for _, _, info in results]
            outs = [(img, area) for img, area, _ in results]
        else:
            outs, edit_meta = self._paint_by_example(rows, inputs)
        for r, (src_bytes, _, _, _), (img, area), em in zip(rows, inputs, outs, edit_meta):
            m = r["meta"]
            r["key"] = make_key(r["dataset"], m.get("record_id"), "replace")
            r["task"] = "edit_replace"
            r["src"] = src_bytes
            r["tgt"] = encode(img, c.tgt_format, c.jpeg_quality)
            r["mask"] = encode_png((area > 0).astype(np.uint8) * 255)
            m["edit"] = em
        return rows

    def _paint_by_example(self, rows: list[Row], inputs) -> tuple[list, list]:
        c = self.config
        k = 2 * c.mask_dilate + 1
        masks = [cv2.dilate(region, np.ones((k, k), np.uint8)) if c.mask_dilate > 0 else region
                 for _, _, region, _ in inputs]
        refs = []
        for _, _, _, patch in inputs:
            # the exemplar on white outside its object, the way PaintByExample's training crops look
            refs.append(np.where(patch[..., 3:4] > 127, patch[..., :3], np.uint8(255)).astype(np.uint8))
        seeds = [int(self.rng(r["key"], "pbe").integers(0, 2**31 - 1)) for r in rows]
        edited = self.editor.edit([src for _, src, _, _ in inputs], masks, refs, seeds)
        outs, metas = [], []
        for (_, src, _, _), mask, img, seed in zip(inputs, masks, edited, seeds):
            if c.paste_back:
                img = np.where(mask[..., None] > 0, img, src)
            outs.append((img, mask))
            metas.append({"backend": "paint_by_example", "weight_free": False, "model": c.model, "steps": c.steps,
                          "guidance_scale": c.guidance_scale, "resolution": c.resolution, "seed": seed,
                          "mask_dilate": c.mask_dilate, "paste_back": c.paste_back, "device": self.editor.device})
        return outs, metas


STAGE = PaintReplaceStage
