"""Semantic segmentation targets (paper 3.1, 4.1): one category's pixels under a named colour at
alpha 0.5. A share of samples names a category absent from the image; their target equals the source.

Reads the COCO-Stuff record payload: ``meta.segments`` [{category_id, name, rle | polygons}] (json
form) or ``meta.labelmap`` + ``label_offset`` (pixel-map form: pixel value + offset = category id,
255 = unlabeled).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import rng
from ..contracts import Segment
from ..errors import ConfigError, RecordError
from ..instructions import choose
from ..readers._coco import clean_name, cocostuff_labels
from ..render import masks as M
from ..render.common import MaskRenderConfig, RenderStage, SourceImage, mask_row, object_phrase, pick_mask_color
from ..schema import Row

VOID = 255


@dataclass
class RenderSemsegConfig(MaskRenderConfig):
    # share of samples naming a category that is not in the image
    absent_ratio: float = field(default=0.2, metadata=rng(0, 1))
    # categories covering less of the image than this share are not chosen as present
    min_area_frac: float = field(default=0.001, metadata=rng(0, 1))
    vocabulary: str = "cocostuff"  # category names for absent draws (the bundled COCO-Stuff list)


class RenderSemseg(RenderStage):
    name = "render_semseg"
    Config = RenderSemsegConfig
    task = "semantic_seg"

    def validate(self) -> None:
        if self.config.vocabulary != "cocostuff":
            raise ConfigError(f"{self.name}.vocabulary: unknown vocabulary {self.config.vocabulary!r} (cocostuff)")
        super().validate()

    def _category_masks(self, meta: dict, h0: int, w0: int, rid) -> dict[str, np.ndarray]:
        """name -> mask at the file's resolution, all annotations of a category merged."""
        masks: dict[str, np.ndarray] = {}
        labels = cocostuff_labels()
        if meta.get("labelmap"):
            lm = M.read_labelmap(meta["labelmap"], record=rid)
            if lm.shape != (h0, w0):
                raise RecordError("label map size differs from image size", file=meta["labelmap"], record=rid,
                                  labelmap_size=f"{lm.shape[1]}x{lm.shape[0]}", image_size=f"{w0}x{h0}")
            off = int(meta.get("label_offset", 1))
            for val in np.unique(lm):
                if val == VOID:
                    continue
                cid = int(val) + off
                if cid not in labels or cid == 183:
                    raise RecordError("unknown category id in label map", file=meta["labelmap"], record=rid,
                                      field="pixel", category_id=cid, pixel=int(val))
                masks[clean_name(labels[cid])] = lm == val
            return masks
        for i, raw in enumerate(meta.get("segments", [])):
            seg = Segment.from_meta(raw, rid, f"segments[{i}]")
            if not isinstance(seg.name, str):
                raise RecordError("segment has no category name", record=rid, field=f"segments[{i}].name")
            m = seg.mask(h0, w0, record=rid)
            name = seg.name
            masks[name] = masks[name] | m if name in masks else m
        return masks

    def render(self, rec: Row, src: SourceImage, templates: list[str]) -> list[Row]:
        cfg = self.config
        meta = rec["meta"]
        rid = meta.get("record_id")
        h, w = src.rgb.shape[:2]
        h0, w0 = src.orig_size
        full = self._category_masks(meta, h0, w0, rid)
        # present = covering enough of the image; masks are resized only when a variant draws them
        present = sorted(n for n, m in full.items() if np.count_nonzero(m) >= cfg.min_area_frac * m.size)
        small: dict[str, np.ndarray] = {}
        vocab = sorted({clean_name(n) for i, n in cocostuff_labels().items() if i != 183} - set(full))
        base = {k: v for k, v in meta.items() if k not in ("segments",)}
        rows = []
        for v in range(cfg.variants_per_record):
            rng = self.rng(rec["key"], v)
            absent = (not present) or rng.random() < cfg.absent_ratio
            if absent:
                name = str(vocab[int(rng.integers(len(vocab)))])
                mask = np.zeros((h, w), bool)
            else:
                name = present[int(rng.integers(len(present)))]
                if name not in small:
                    small[name] = M.resize_bool(full[name], (h, w))
                mask = small[name]
            color = pick_mask_color(src.rgb, mask, cfg, rng)
            t_idx, text = choose(templates, rng, color=color, object=object_phrase(name))
            rows.append(mask_row(rec, src, mask, color, cfg, variant=v, instruction=text,
                                 meta=dict(base, category=name, absent=absent, template=t_idx, present=present)))
        return rows


STAGE = RenderSemseg
