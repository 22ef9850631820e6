"""Semantic segmentation targets (paper 3.1, 4.1): one category's pixels under a named colour at
alpha 0.5. A share of samples names a category absent from the image; their target equals the source.

Reads the COCO-Stuff record payload: ``meta.segments`` [{category_id, name, rle | polygons}] (json
form) or ``meta.labelmap`` + ``label_offset`` (pixel-map form: pixel value + offset = category id,
255 = unlabeled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Callable

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

    def _categories(self, meta: dict, h0: int, w0: int, rid) -> Categories:
        """The record's categories (all annotations of one merged) at the file's resolution."""
        if meta.get("labelmap"):
            return _labelmap_categories(meta, h0, w0, rid)
        return _segment_categories(meta.get("segments", []), h0, w0, rid)

    def render(self, rec: Row, src: SourceImage, templates: list[str]) -> list[Row]:
        cfg = self.config
        meta = rec["meta"]
        rid = meta.get("record_id")
        h, w = src.rgb.shape[:2]
        h0, w0 = src.orig_size
        cats = self._categories(meta, h0, w0, rid)
        # present = covering enough of the image; masks are decoded and resized only when a variant draws them
        present = sorted(n for n, a in cats.areas.items() if a >= cfg.min_area_frac * (h0 * w0))
        small: dict[str, np.ndarray] = {}
        vocab = [n for n in vocabulary() if n not in cats.areas]
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
                    small[name] = M.resize_bool(cats.mask(name), (h, w))
                mask = small[name]
            color = pick_mask_color(src.rgb, mask, cfg, rng)
            t_idx, text = choose(templates, rng, color=color, object=object_phrase(name))
            rows.append(mask_row(rec, src, mask, color, cfg, variant=v, instruction=text,
                                 meta=dict(base, category=name, absent=absent, template=t_idx, present=present)))
        return rows


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """The category names absent draws pick from (cleaned once, sorted)."""
    return tuple(sorted({clean_name(n) for i, n in cocostuff_labels().items() if i != 183}))


@dataclass
class Categories:
    """Category name -> pixels at the file's resolution, and the mask of a category on demand (most
    categories of an image are never drawn)."""

    areas: dict[str, int]
    masks: dict[str, Callable[[], np.ndarray]]

    def mask(self, name: str) -> np.ndarray:
        return self.masks[name]()


def _labelmap_categories(meta: dict, h0: int, w0: int, rid) -> Categories:
    lm = M.read_labelmap(meta["labelmap"], record=rid)
    if lm.shape != (h0, w0):
        raise RecordError("label map size differs from image size", file=meta["labelmap"], record=rid,
                          labelmap_size=f"{lm.shape[1]}x{lm.shape[0]}", image_size=f"{w0}x{h0}")
    off = int(meta.get("label_offset", 1))
    labels = cocostuff_labels()
    counts = M.value_counts(lm)
    if counts is not None:
        values = np.flatnonzero(counts).astype(lm.dtype)
        counts = counts[values]
    else:
        values, counts = np.unique(lm, return_counts=True)
    areas: dict[str, int] = {}
    masks: dict[str, Callable[[], np.ndarray]] = {}
    for val, n in zip(values, counts):
        if val == VOID:
            continue
        cid = int(val) + off
        if cid not in labels or cid == 183:
            raise RecordError("unknown category id in label map", file=meta["labelmap"], record=rid,
                              field="pixel", category_id=cid, pixel=int(val))
        name = clean_name(labels[cid])  # a later value of the same name replaces an earlier one
        areas[name] = int(n)
        masks[name] = partial(np.equal, lm, val)
    return Categories(areas, masks)


@dataclass
class _Parts:
    """The segments of one category: region codes (merged by pycocotools), integer label-map values
    (counted from the map's histogram) and other label-map masks (compared as they came)."""

    rles: list[dict] = field(default_factory=list)
    values: list[tuple[str, np.ndarray, int]] = field(default_factory=list)  # (label map path, map, value)
    dense: list[np.ndarray] = field(default_factory=list)

    def mask(self) -> np.ndarray:
        out = M.rle_decode(M.rle_union(self.rles)) if self.rles else None
        for m in [lm == value for _, lm, value in self.values] + self.dense:
            out = m if out is None else out | m
        assert out is not None
        return out

    def area(self, counts: dict[str, np.ndarray | None]) -> int:
        if not (self.values or self.dense):
            return int(M.mask_utils.area(M.rle_union(self.rles)))
        paths = {p for p, _, _ in self.values}
        if not (self.rles or self.dense) and len(paths) == 1:
            path = paths.pop()
            if path not in counts:
                counts[path] = M.value_counts(self.values[0][1])
            n = counts[path]
            if n is not None:  # distinct values cover distinct pixels
                return sum(int(n[v]) for v in {v for _, _, v in self.values} if 0 <= v < n.size)
        return int(np.count_nonzero(self.mask()))


def _segment_categories(segments: list, h0: int, w0: int, rid) -> Categories:
    parts: dict[str, _Parts] = {}
    labelmaps: dict[str, np.ndarray] = {}
    for i, raw in enumerate(segments):
        seg = Segment.from_meta(raw, rid, f"segments[{i}]")
        if not isinstance(seg.name, str):
            raise RecordError("segment has no category name", record=rid, field=f"segments[{i}].name")
        sm = seg.to_meta()
        rle = M.segment_to_rle(sm, h0, w0, record=rid)
        p = parts.setdefault(seg.name, _Parts())
        if rle is not None:
            p.rles.append(rle)
            continue
        lm = M.segment_labelmap(sm, h0, w0, record=rid, labelmaps=labelmaps)
        value = sm["value"]
        if type(value) is int:
            p.values.append((sm["labelmap"], lm, value))
        else:  # compared now, as any value is (an error surfaces at its segment)
            p.dense.append(lm == value)
    counts: dict[str, np.ndarray | None] = {}
    return Categories({n: p.area(counts) for n, p in parts.items()}, {n: p.mask for n, p in parts.items()})


STAGE = RenderSemseg
