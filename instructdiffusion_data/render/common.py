"""Shared pieces of the rendering stages: source loading at the written resolution, target
encoding, and the semi-transparent-mask sample used by semantic and referring segmentation."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from .. import imageio
from ..instructions import load_templates
from ..schema import Row
from ..config import rng
from ..stage import Stage, StageConfig
from . import masks as M
from .palette import PALETTE, names as palette_names


@dataclass
class RenderConfig(StageConfig):
    # independent draws per source record (the variant index is part of the key)
    variants_per_record: int = field(default=1, metadata=rng(1))
    # images are written with their longer side at most this (never upscaled)
    max_side: int = field(default=512, metadata=rng(16))
    tgt_format: Literal["jpg", "png"] = "jpg"
    jpeg_quality: int = field(default=95, metadata=rng(1, 100))  # for targets, and for sources that had to be resized
    verify: bool = True  # recover what was drawn and drop samples that fail
    # share of samples (chosen by key, reproducibly) whose *written bytes* are decoded and verified; the
    # others are verified on the exact pixels before encoding (same rule, no decode). 1.0: decode all.
    # The split is in each row's meta.verify.on and in the stats (verified.written).
    verify_written: float = field(default=0.1, metadata=rng(0, 1))
    colors: list[str] | None = None  # palette subset (default: the whole palette, >= 9 named colours)
    batch_size: int = 8


@dataclass
class MaskRenderConfig(RenderConfig):
    alpha: float = field(default=0.5, metadata=rng(0.05, 1))  # mask opacity (the paper: 0.5)
    # verification: recovered vs ground-truth mask IoU at the written resolution, at least
    min_iou: float = field(default=0.98, metadata=rng(0, 1))
    # a blend is visible only where |colour - pixel| (RGB distance, 0-442) >= this
    min_contrast: float = field(default=48.0, metadata=rng(0, 442))
    # colours tried for one sample before settling for the most visible one
    colors_tried: int = field(default=4, metadata=rng(1))
    templates: str | None = None  # template set name (default: the task name)
    extra: dict = field(default_factory=dict)


@dataclass
class SourceImage:
    """The source image as written: RGB pixels at the written resolution and their bytes."""

    rgb: np.ndarray
    data: bytes  # original bytes when no resize was needed (passed through unchanged)
    scale: float
    orig_size: tuple[int, int]  # (h, w) of the file


def load_source(meta: dict, max_side: int, quality: int, record: str | None = None) -> SourceImage:
    path = meta.get("file")
    if not path:
        from ..errors import RecordError

        raise RecordError("record has no image file", record=record, field="file")
    raw = imageio.read_bytes(path, record=record)
    rgb = imageio.decode(raw, file=str(path), record=record)
    h, w = rgb.shape[:2]
    scale = imageio.fit_scale(h, w, max_side)
    if scale == 1.0 and imageio.sniff_ext(raw) in ("jpg", "png"):
        return SourceImage(rgb, raw, 1.0, (h, w))
    small = imageio.resize(rgb, scale)
    return SourceImage(small, imageio.encode_jpeg(small, quality), scale, (h, w))


def encode_target(rgb: np.ndarray, cfg: RenderConfig) -> bytes:
    return imageio.encode(rgb, cfg.tgt_format, cfg.jpeg_quality)


def verify_written(key: str, cfg: RenderConfig) -> bool:
    """Whether this sample's written bytes are decoded for verification (a reproducible draw by key)."""
    if cfg.verify_written >= 1.0:
        return True
    import hashlib

    u = int.from_bytes(hashlib.sha1(f"verify\x00{key}".encode()).digest()[:4], "little") / 2**32
    return u < cfg.verify_written


def object_phrase(text: str) -> str:
    """'left guy' -> 'the left guy'; keeps an article that is already there."""
    t = " ".join(str(text).strip().split())
    first = t.split(" ", 1)[0].lower() if t else ""
    if first in ("the", "a", "an", "all", "both", "two", "three", "every", "each"):
        return t
    return f"the {t}"


def pick_mask_color(rgb: np.ndarray, mask: np.ndarray, cfg: MaskRenderConfig, rng: np.random.Generator) -> str:
    """A random palette colour; when it would be hard to see on this region, try a few more and keep
    the most visible one (the instruction names the colour, the model must see it)."""
    choices = [str(c) for c in rng.permutation(palette_names(cfg.colors))]
    best, best_score = choices[0], -1.0
    for name in choices[: max(1, cfg.colors_tried)]:
        score = M.color_contrast(rgb, mask, np.array(PALETTE[name], np.float32), cfg.min_contrast)
        if score >= 0.95:
            return name
        if score > best_score:
            best, best_score = name, score
    return best


def mask_row(parent: Row, src: SourceImage, mask: np.ndarray, color: str, cfg: MaskRenderConfig, *, variant: int,
             instruction: str, meta: dict) -> Row:
    """One mask sample as a row: target bytes, mask PNG, verification (dropped with the reason when
    the recovered mask misses). An empty mask (absent category, no-target expression) gives a target
    identical to the source, byte for byte."""
    from ..schema import drop, make_key
    from ..stage import child

    c = np.array(PALETTE[color], np.float32)
    h, w = src.rgb.shape[:2]
    info: dict = {"color": color, "rgb": list(PALETTE[color]), "alpha": cfg.alpha,
                  "mask_area": int(np.count_nonzero(mask)), "variant": variant, "scale": src.scale, "size": [h, w]}
    if not info["mask_area"]:
        tgt_bytes, drawn = src.data, src.rgb
    else:
        drawn = M.overlay(src.rgb, mask, c, cfg.alpha)
        tgt_bytes = encode_target(drawn, cfg)
    key = make_key(parent["dataset"], parent["meta"].get("record_id"), f"v{variant}")
    mask_bytes = M.mask_png(mask) if info["mask_area"] else M.empty_mask_png(*mask.shape)
    row = child(parent, key=key, src=src.data, tgt=tgt_bytes, mask=mask_bytes, instruction=instruction,
                meta={**meta, **info})
    if cfg.verify:
        if verify_written(key, cfg):  # what a reader of the shard gets: decoded, then recovered
            on = "written"
            rec, valid = M.recover_mask(src.rgb, imageio.decode(tgt_bytes), c, cfg.alpha, cfg.min_contrast, gt=mask)
            iou = M.mask_iou(rec, mask, valid)
            seen = float(valid[mask].mean()) if info["mask_area"] else 1.0
        else:  # the exact pixels before encoding
            on = "pixels"
            iou, seen = M.drawn_scores(src.rgb, drawn, mask, c, cfg.min_contrast)
        row["meta"]["verify"] = {"iou": round(iou, 5), "determinable": round(seen, 4), "on": on}
        row["meta"]["verified"] = bool(iou >= cfg.min_iou)
        if not row["meta"]["verified"]:
            drop(row, "verification failed: recovered mask IoU too low", iou=round(iou, 5), min_iou=cfg.min_iou)
    return row


class RenderStage(Stage):
    """A stage that turns each source record into ``variants_per_record`` rendered rows: the templates
    are loaded once per batch and the source image once per record; subclasses draw the variants."""

    task: ClassVar[str] = ""  # the default template set (configs/instructions/<task>.txt)

    def max_rows_per_input(self) -> int:
        return self.config.variants_per_record

    def template_set(self) -> str:
        return getattr(self.config, "templates", None) or self.task

    def validate(self) -> None:
        load_templates(self.template_set())

    def process(self, rows: list[Row]) -> list[Row]:
        cfg = self.config
        templates = load_templates(self.template_set())
        out: list[Row] = []
        last: tuple[object, SourceImage] | None = None
        for rec in rows:
            # records of one image come together (one per person, per expression): load it once
            file = rec["meta"].get("file")
            if last is not None and file and last[0] == file:
                src = last[1]
            else:
                src = load_source(rec["meta"], cfg.max_side, cfg.jpeg_quality, record=rec["meta"].get("record_id"))
                src.rgb.flags.writeable = False  # shared by the records of the image: renderers draw on copies
                last = (file, src)
            out.extend(self.render(rec, src, templates))
        return out

    @abc.abstractmethod
    def render(self, rec: Row, src: SourceImage, templates: list[str]) -> list[Row]:
        """The variant rows of one record, drawn on ``src`` (the image at the written resolution)."""
