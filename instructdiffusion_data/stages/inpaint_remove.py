"""Object removal and addition pairs from referring regions (paper section 3.2, "Object removal").

Input: record rows with ``meta.file`` (the image), ``meta.polygons`` (PhraseCut layout
[instance][polygon][[x, y]]), ``meta.width/height`` and ``meta.phrase`` (the ``phrasecut`` reader).
Per region:

1. the image is read (and scaled so its longer side is at most ``max_side``), the union of the
   polygons is rasterised at that size and dilated by ``dilate_px`` (+ ``dilate_frac`` of the
   region's equivalent diameter) so that inpainting also covers the object's edge;
2. the inpainting adapter (:mod:`instructdiffusion_data.models.inpaint`, ``lama`` or ``opencv``)
   fills the mask; the filled pixels are composited back over the source, so outside the mask the
   target is the source, pixel for pixel;
3. the removal check: outside the mask source and target must be identical, inside they must
   differ by at least ``min_inside_diff`` (mean absolute difference, 0..255); a failing pair is
   dropped with its reason (both rows);
4. two rows: ``edit_remove`` (src = original, tgt = inpainted, "Remove the {phrase}.") and
   ``edit_add`` (swapped, "Add {a_phrase}." with a grammatical article), keys
   ``make_key("phrasecut", task_id, "remove"|"add")``, both with the dilated mask PNG and a shared
   ``meta["pair_id"]``. Later stages (captions/LLM rewording, quality filter) may rewrite
   ``instruction``; the phrase stays in ``meta["phrase"]`` and its parts in ``meta["phrase_structure"]``.

Source and target are encoded from the same pixel arrays with the same codec: with JPEG every 8x8
block that the mask does not touch decodes identically in both images.

With ``num_gpus > 0`` the runner runs this stage as a Ray actor pool (``concurrency`` actors), each
loading the model once in :meth:`setup`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from ..config import rng
from ..contracts import record_drop
from ..errors import RecordError
from ..imageio import decode, encode, encode_png, fit_scale, read_bytes, resize
from ..instructions import choose, load_templates
from ..models.inpaint import make_inpainter, resolve_lama_path
from ..readers.phrasecut import dilate_mask, polygons_to_mask
from ..text import indefinite_article, removal_phrase, with_article  # noqa: F401 (re-exported)
from ..schema import Row, drop, make_key
from ..stage import Stage, StageConfig, child

log = logging.getLogger(__name__)


@dataclass
class InpaintRemoveConfig(StageConfig):
    backend: Literal["opencv", "lama"] = "opencv"
    opencv_method: Literal["telea", "ns"] = "telea"
    opencv_radius: int = field(default=5, metadata=rng(1))  # neighbourhood of cv2.inpaint, pixels
    lama_model: str | None = None  # big-lama TorchScript file; None: $LAMA_MODEL
    device: str = "auto"  # lama: "auto" (cuda when available), "cuda", "cuda:1", "cpu"
    lama_batch: int = field(default=8, metadata=rng(1))  # images per lama forward (same padded size)
    half: bool = False  # lama on CUDA in float16
    dilate_px: int = field(default=5, metadata=rng(0))  # mask margin in output pixels
    # extra margin as a fraction of the region's equivalent diameter
    dilate_frac: float = field(default=0.0, metadata=rng(0, 1))
    # scale images down so the longer side is at most this; None: original size
    max_side: int | None = field(default=512, metadata=rng(16))
    image_format: Literal["jpg", "png"] = "jpg"
    jpeg_quality: int = field(default=95, metadata=rng(1, 100))
    # removal check: mean |tgt - src| (0-255) inside the mask must reach this
    min_inside_diff: float = field(default=2.0, metadata=rng(0, 255))
    templates_dir: str | None = None  # default configs/instructions (edit_remove.txt, edit_add.txt)
    dataset: str = "phrasecut"  # dataset name used in keys


class InpaintRemoveStage(Stage):
    name = "inpaint_remove"
    Config = InpaintRemoveConfig

    def max_rows_per_input(self) -> int:
        return 2  # the removal pair and, swapped, the addition pair

    def validate(self) -> None:
        c = self.config
        if c.backend == "lama":
            resolve_lama_path(c.lama_model)  # fail before any work when the weights are missing
        for task in ("edit_remove", "edit_add"):
            load_templates(task, c.templates_dir)

    def __init__(self, config=None, *, seed: int = 0):
        super().__init__(config, seed=seed)
        if self.config.backend == "lama":
            # the weights' path resolved on the driver, so that Ray actors (which may not share the
            # driver's environment) get it explicitly: a resolved copy, the caller's config is left as it was
            self.config = dataclasses.replace(self.config,
                                              lama_model=str(resolve_lama_path(self.config.lama_model).resolve()))

    def setup(self) -> None:
        c = self.config
        self.inpainter = make_inpainter(c.backend, opencv_method=c.opencv_method, opencv_radius=c.opencv_radius,
                                        lama_model=c.lama_model, device=c.device, batch_size=c.lama_batch,
                                        half=c.half)
        self.templates = {t: load_templates(t, c.templates_dir) for t in ("edit_remove", "edit_add")}

    # -----------------------------------------------------------------------------------------
    def _load(self, row: Row) -> tuple[np.ndarray, np.ndarray, dict]:
        m = row["meta"]
        rid = m.get("record_id")
        if "polygons" not in m or "file" not in m:
            raise RecordError("record has no polygons or file (not a phrasecut-style record)", record=rid,
                              field="polygons" if "polygons" not in m else "file")
        img = decode(read_bytes(m["file"], rid), file=m["file"], record=rid)
        h, w = img.shape[:2]
        if (m.get("width"), m.get("height")) not in ((w, h), (None, None)):
            raise RecordError("image size differs from the annotations", file=m["file"], record=rid,
                              image=f"{w}x{h}", annotations=f"{m.get('width')}x{m.get('height')}")
        scale = fit_scale(h, w, self.config.max_side)
        img = resize(img, scale)
        oh, ow = img.shape[:2]
        mask = polygons_to_mask(m["polygons"], oh, ow, scale=scale)
        area = int(np.count_nonzero(mask))
        if area == 0:
            raise RecordError("region is empty at the output size", record=rid)
        px = self.config.dilate_px + round(self.config.dilate_frac * 2 * math.sqrt(area / math.pi))
        dil = dilate_mask(mask, px)
        info = {"scale": round(scale, 6), "size": [ow, oh], "dilate_px": px,
                "mask_area_frac": round(float(np.count_nonzero(dil)) / (oh * ow), 6)}
        return img, dil, info

    def process(self, rows: list[Row]) -> list[Row]:
        loaded, out = [], []
        for r in rows:
            try:
                loaded.append((r, *self._load(r)))
            except RecordError as e:
                out.append(record_drop(r, self.name, e))
        if not loaded:
            return out
        filled = self.inpainter.inpaint([x[1] for x in loaded], [x[2] for x in loaded])
        for (r, img, mask, info), inp in zip(loaded, filled):
            out.extend(self._pair(r, img, mask, info, inp))
        return out

    def _pair(self, r: Row, img: np.ndarray, mask: np.ndarray, info: dict, inp: np.ndarray) -> list[Row]:
        c = self.config
        tgt = img.copy()
        np.copyto(tgt, inp, where=(mask > 0)[..., None])
        ok, reason, detail, diff = removal_check(img, tgt, mask, c.min_inside_diff)

        src_b = encode(img, c.image_format, c.jpeg_quality)
        tgt_b = encode(tgt, c.image_format, c.jpeg_quality)
        mask_b = encode_png(mask)
        m = r["meta"]
        rid = m.get("record_id", r["key"])
        phrase = m.get("phrase", "")
        struct = m.get("phrase_structure") or {}
        pair_id = make_key(c.dataset, rid, "pair")
        common = {
            "pair_id": pair_id, "phrase": phrase, "phrase_structure": struct,
            "inpaint": {"backend": self.inpainter.backend, "model_id": self.inpainter.model_id, **info,
                        "inside_diff": round(diff, 3)},
            "source_key": r["key"],
        }
        rows = []
        for variant, task, s, t in (("remove", "edit_remove", src_b, tgt_b), ("add", "edit_add", tgt_b, src_b)):
            values = {"phrase": removal_phrase(phrase)} if task == "edit_remove" else {
                "a_phrase": with_article(phrase, struct.get("name"))}
            tid, text = choose(self.templates[task], self.rng(r["key"], variant), **values)
            meta = dict(m, **common, variant=variant, template_id=tid)
            row = child(r, key=make_key(c.dataset, rid, variant), task=task, src=s, tgt=t, mask=mask_b,
                        instruction=text, meta=meta)
            if not ok:
                drop(row, f"{self.name}: {reason}", **detail)
            rows.append(row)
        return rows


def removal_check(src: np.ndarray, tgt: np.ndarray, mask: np.ndarray,
                  min_inside_diff: float) -> tuple[bool, str, dict, float]:
    """(passed, reason class, its details, mean abs difference inside the mask). Outside the mask the
    pixels must be identical; inside they must differ on average by at least ``min_inside_diff``."""
    if src.shape != tgt.shape:
        return False, "removal check failed: target size differs from source", {
            "target": list(tgt.shape), "source": list(src.shape)}, 0.0
    m = np.where(mask > 0, 255, 0).astype(np.uint8)
    d = cv2.absdiff(src, tgt)
    dmax = np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])
    outside_changed = cv2.countNonZero(cv2.bitwise_and(dmax, cv2.bitwise_not(m)))
    diff = float(np.mean(cv2.mean(d, mask=m)[:3])) if cv2.countNonZero(m) else 0.0
    if outside_changed:
        return False, "removal check failed: pixels changed outside the mask", {"pixels": int(outside_changed)}, diff
    if diff < min_inside_diff:
        return False, "removal check failed: region unchanged", {"mean_diff": round(diff, 2),
                                                                 "min": min_inside_diff}, diff
    return True, "", {}, diff


STAGE = InpaintRemoveStage
