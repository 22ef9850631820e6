"""Task-aware paired augmentation: the same crop (or pad), resize and flip for source and target, with
every mark the instruction names kept whole.

A blind random square crop of a 512x341 image keeps at most 67% of its width: a keypoint circle, a
segmentation or referring mask, or the object of a remove/add/replace edit can fall outside it while
the instruction still asks for it. Here each sample first gets its *protected region*
(:func:`protected_region`), the box in source pixels that must stay inside the crop:

- the ``mask`` member (segmentation, referring segmentation, IEIW and MagicBrush edits): the box of its
  non-zero pixels;
- ``meta.drawn`` + ``meta.radius`` (keypoints): the box of every drawn circle;
- a positional phrase ("the leftmost person", "man on left", "the cup on top of the table"): every
  person or object it is relative to must stay too. Keypoint rows name their person in ``meta.person``
  and the reader's ``meta.people`` boxes (file pixels, times ``meta.scale``) cover them when present;
  where the boxes are not in the row (referring expressions, edits, keypoint rows written without
  ``people``) the whole image is protected and padded to a square;
- adaptation rows (task ``adapt``, no source): their circles (``meta.drawn``) as above; one made from a
  segmentation target (``meta.mask_area`` > 0) has lost its mask member, so it keeps the whole image;
- edit tasks without a mask (``diff_tasks``): the box of the pixels the edit changed (source vs
  target, at low resolution); a change over more than ``global_edit_frac`` of the image is a global
  edit (style, colour) that any crop keeps, so it protects nothing.

The crop is then a square of side ``min(h, w) / s`` (``s ~ U(scale)``), enlarged to the protected box
when needed, at a random place that contains the box; when no square inside the image contains it
(or the whole image is protected) the image is padded to a square instead (``pad_value``, the same for
source and target) at a random offset. Flips stay guarded by task and words (:func:`flip_allowed`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

# words that place a person or object relative to others (or to the frame): a crop that cuts those
# others away, or changes the frame, makes the phrase wrong
POSITIONAL_WORDS = [
    "left", "right", "leftmost", "rightmost", "top", "bottom", "topmost", "bottommost", "middle", "center",
    "centre", "central", "upper", "lower", "uppermost", "lowermost", "above", "below", "beneath", "under",
    "underneath", "behind", "front", "beside", "between", "next", "near", "nearest", "closest", "farthest",
    "furthest", "corner", "first", "second", "third", "fourth", "fifth", "last",
]


@dataclass
class AugmentConfig:
    scale: list[float] = field(default_factory=lambda: [1.0, 1.1])  # crop side = shorter side / U(scale)
    flip_p: float = 0.5  # horizontal flip probability (source and target together)
    # a flip would make these instructions wrong ("circle the left shoulder", "the rightmost dog")
    no_flip_tasks: list[str] = field(default_factory=lambda: ["keypoint", "referring_seg"])
    no_flip_words: list[str] = field(default_factory=lambda: ["left", "right"])
    # keep the marks and the edited region whole (module docstring); false: the blind random crop
    task_aware: bool = True
    margin: int = 2  # px (source pixels) around the protected region that stay inside the crop too
    positional_words: list[str] = field(default_factory=lambda: list(POSITIONAL_WORDS))
    # tasks whose edited region, without a mask member, is where source and target differ
    diff_tasks: list[str] = field(default_factory=lambda: ["edit", "edit_remove", "edit_add", "edit_replace",
                                                           "dewatermark"])
    diff_threshold: int = 24  # a pixel changed: max channel difference above this (after a 3x3 opening)
    global_edit_frac: float = 0.35  # share of changed pixels above which an edit is global (any crop keeps it)
    pad_value: list[int] = field(default_factory=lambda: [0, 0, 0])  # RGB of the padding (source and target)


@dataclass(frozen=True)
class Region:
    """What a crop must keep: ``box`` (x0, y0, x1, y1, end exclusive, source pixels) or nothing; ``whole``:
    the whole image (pad to a square, never crop). ``why`` says where it came from (logs, tests)."""

    box: tuple[int, int, int, int] | None = None
    whole: bool = False
    why: str = ""


@dataclass(frozen=True)
class Geometry:
    """One sample's placement: ``crop`` a ``side``-square at (x, y), or ``pad`` the image onto a
    ``side``-square canvas at offset (x, y); then resize to the resolution and maybe flip."""

    kind: str  # "crop" | "pad"
    x: int
    y: int
    side: int
    flip: bool = False


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def positional_phrase(task: str | None, text: str, meta: dict, words: list[str]) -> str | None:
    """The phrase of the sample that places something relative to others, or None. Keypoint rows name
    their person in ``meta.person`` (the instruction's "left shoulder" is a body side, not a place);
    referring rows their expression in ``meta.sentence``; other rows are read whole."""
    if task == "keypoint" and isinstance(meta.get("person"), str):
        phrase = meta["person"]
    elif task == "referring_seg" and isinstance(meta.get("sentence"), str):
        phrase = meta["sentence"]
    else:
        phrase = text or ""
    return phrase if _words(phrase) & set(words) else None


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _written_scale(meta: dict, hw: tuple[int, int]) -> tuple[float, float]:
    """Factor from the row's written-image pixels (``meta.size`` [h, w]) to the decoded source."""
    size = meta.get("size")
    if isinstance(size, list) and len(size) == 2 and all(_num(v) for v in size):
        return hw[1] / float(size[1]), hw[0] / float(size[0])
    return 1.0, 1.0


def _circle_boxes(meta: dict, hw: tuple[int, int]) -> list[tuple[float, float, float, float]]:
    drawn = meta.get("drawn")
    if not isinstance(drawn, list):
        return []
    sx, sy = _written_scale(meta, hw)
    r = _num(meta.get("radius")) or 0.0
    out = []
    for d in drawn:
        if not isinstance(d, dict):
            continue
        x, y = _num(d.get("x")), _num(d.get("y"))
        if x is None or y is None:
            continue
        # cv2.circle fills the pixels within r of the centre: one pixel more each side covers rounding
        out.append(((x - r - 1) * sx, (y - r - 1) * sy, (x + r + 2) * sx, (y + r + 2) * sy))
    return out


def _people_boxes(meta: dict, hw: tuple[int, int]) -> list[tuple[float, float, float, float]] | None:
    """``meta.people`` ([x, y, w, h] in file pixels, times ``meta.scale``) with the row's own ``bbox``;
    None when the row does not carry them."""
    people = meta.get("people")
    if not isinstance(people, list) or not people:
        return None
    s = _num(meta.get("scale")) or 1.0
    sx, sy = _written_scale(meta, hw)
    out = []
    for b in [*people, meta.get("bbox")]:
        if isinstance(b, list) and len(b) == 4 and all(_num(v) is not None for v in b):
            x, y, w, h = (float(v) * s for v in b)
            out.append((x * sx, y * sy, (x + w) * sx, (y + h) * sy))
    return out or None


def mask_box(mask: np.ndarray, hw: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """Box of the non-zero pixels of ``mask``, in the pixels of an image of size ``hw``."""
    m = (mask > 0).view(np.uint8) if mask.dtype == bool else (mask > 0).astype(np.uint8)
    x, y, w, h = cv2.boundingRect(m)
    if w == 0 or h == 0:
        return None
    sx, sy = hw[1] / mask.shape[1], hw[0] / mask.shape[0]
    return x * sx, y * sy, (x + w) * sx, (y + h) * sy


def changed_box(src: np.ndarray, tgt: np.ndarray, aug: AugmentConfig) -> tuple[tuple[float, float, float, float] | None, float]:
    """Box of the pixels that differ between source and target (at most 128 px on the longer side, a
    3x3 opening removes codec noise) and the changed share of the image."""
    h, w = src.shape[:2]
    f = min(1.0, 128.0 / max(h, w))
    if f < 1.0:
        size = (max(1, round(w * f)), max(1, round(h * f)))
        a = cv2.resize(src, size, interpolation=cv2.INTER_AREA)
        b = cv2.resize(tgt, size, interpolation=cv2.INTER_AREA)
    else:
        a, b = src, tgt
    d = (cv2.absdiff(a, b).max(-1) > aug.diff_threshold).astype(np.uint8)
    d = cv2.morphologyEx(d, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    frac = float(d.mean())
    x, y, bw, bh = cv2.boundingRect(d)
    if bw == 0 or bh == 0:
        return None, 0.0
    sx, sy = w / d.shape[1], h / d.shape[0]
    # one low-resolution cell more each side: the opening and the area averaging blur the border
    return ((x - 1) * sx, (y - 1) * sy, (x + bw + 1) * sx, (y + bh + 1) * sy), frac


def protected_region(*, task: str | None, text: str, meta: dict, hw: tuple[int, int], mask: np.ndarray | None = None,
                     src: np.ndarray | None = None, tgt: np.ndarray | None = None,
                     aug: AugmentConfig | None = None) -> Region:
    """The region of a sample (decoded source size ``hw``) that every crop must keep (module docstring)."""
    aug = aug or AugmentConfig()
    meta = meta if isinstance(meta, dict) else {}
    h, w = hw
    boxes: list[tuple[float, float, float, float]] = []
    why = []
    if mask is not None:
        b = mask_box(mask, hw)
        if b is not None:
            boxes.append(b)
            why.append("mask")
    circles = _circle_boxes(meta, hw)
    if circles:
        boxes.extend(circles)
        why.append("drawn")
    if task == "adapt" and not boxes and _num(meta.get("mask_area")):
        # an adaptation row of a segmentation target: adapt_caption drops the mask member and there is
        # no source to compare with, so the masked region is unknown: keep the whole image
        return Region(whole=True, why="adaptation row of a masked target without its mask member")
    phrase = positional_phrase(task, text, meta, aug.positional_words)
    if phrase is not None:
        people = _people_boxes(meta, hw)
        if people is None:
            return Region(whole=True, why=f"positional phrase without the boxes it is relative to: {phrase!r}")
        boxes.extend(people)
        why.append("people")
    if not boxes and task in aug.diff_tasks and src is not None and tgt is not None and src.shape == tgt.shape:
        b, frac = changed_box(src, tgt, aug)
        if b is not None and frac <= aug.global_edit_frac:
            boxes.append(b)
            why.append("changed pixels")
        elif b is not None:
            return Region(why=f"global change ({frac:.0%} of the pixels)")
    if not boxes:
        return Region(why="nothing to protect")
    m = aug.margin
    x0 = max(0, math.floor(min(b[0] for b in boxes) - m))
    y0 = max(0, math.floor(min(b[1] for b in boxes) - m))
    x1 = min(w, math.ceil(max(b[2] for b in boxes) + m))
    y1 = min(h, math.ceil(max(b[3] for b in boxes) + m))
    if x1 <= x0 or y1 <= y0:
        return Region(why="protected region outside the image")
    return Region(box=(x0, y0, x1, y1), why="+".join(why))


def plan(h: int, w: int, region: Region | None, rng: np.random.Generator | None, aug: AugmentConfig,
         allow_flip: bool = True) -> Geometry:
    """Where to crop (or pad): a square of side ``min(h, w) / s`` (``s ~ U(aug.scale)``) at a random
    place, grown to the protected box and placed to contain it; padding to a square when the box
    does not fit in any square inside the image. ``rng=None`` (validation): no zoom, the square
    closest to the centre, no flip."""
    region = region or Region()
    short = min(h, w)
    scale = 1.0 if rng is None else float(rng.uniform(aug.scale[0], aug.scale[-1]))
    side = max(1, min(short, round(short / scale)))
    box = region.box
    if region.whole or (box is not None and max(box[2] - box[0], box[3] - box[1]) > short):
        side = max(h, w)
        if rng is None:
            x, y = (side - w) // 2, (side - h) // 2
        else:
            x, y = int(rng.integers(0, side - w + 1)), int(rng.integers(0, side - h + 1))
        kind = "pad"
    else:
        if box is not None:
            side = max(side, box[2] - box[0], box[3] - box[1])
            xlo, xhi = max(0, box[2] - side), min(box[0], w - side)
            ylo, yhi = max(0, box[3] - side), min(box[1], h - side)
        else:
            xlo, xhi, ylo, yhi = 0, w - side, 0, h - side
        if rng is None:
            x = min(max((w - side) // 2, xlo), xhi)
            y = min(max((h - side) // 2, ylo), yhi)
        else:
            y, x = int(rng.integers(ylo, yhi + 1)), int(rng.integers(xlo, xhi + 1))
        kind = "crop"
    flip = rng is not None and allow_flip and bool(rng.random() < aug.flip_p)
    return Geometry(kind, x, y, side, flip)


def _interp(side: int, resolution: int) -> int:
    # area averaging only where it matters (strong downscale, aliasing); linear is 3x cheaper
    return cv2.INTER_AREA if side > 2 * resolution else cv2.INTER_LINEAR if side > resolution else cv2.INTER_CUBIC


def apply(img: np.ndarray, g: Geometry, resolution: int, aug: AugmentConfig) -> np.ndarray:
    """Place one image as ``g`` says, at ``resolution`` px square (uint8 RGB, contiguous)."""
    h, w = img.shape[:2]
    if g.kind == "crop":
        out = img[g.y:g.y + g.side, g.x:g.x + g.side]  # crop first, then resize only the crop
        if g.side != resolution:
            out = cv2.resize(out, (resolution, resolution), interpolation=_interp(g.side, resolution))
    else:
        # resize the image to its share of the square, then pad (cheaper than padding first)
        f = resolution / g.side
        nw, nh = max(1, round(w * f)), max(1, round(h * f))
        ox = min(round(g.x * f), resolution - nw)
        oy = min(round(g.y * f), resolution - nh)
        small = img if (nw, nh) == (w, h) else cv2.resize(img, (nw, nh), interpolation=_interp(g.side, resolution))
        pad = tuple(int(v) for v in aug.pad_value)
        out = cv2.copyMakeBorder(small, oy, resolution - nh - oy, ox, resolution - nw - ox, cv2.BORDER_CONSTANT,
                                 value=pad)
    if g.flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def augment_pair(src: np.ndarray | None, tgt: np.ndarray, resolution: int, rng: np.random.Generator | None,
                 aug: AugmentConfig, allow_flip: bool = True, region: Region | None = None
                 ) -> tuple[np.ndarray | None, np.ndarray, Geometry]:
    """:func:`paired_augment` with the placement it used (side, offset, crop or pad, flip)."""
    ref = tgt if src is None else src
    h, w = ref.shape[:2]
    if src is not None and tgt.shape[:2] != (h, w):
        tgt = cv2.resize(tgt, (w, h), interpolation=cv2.INTER_AREA)
    g = plan(h, w, region if aug.task_aware else None, rng, aug, allow_flip)
    return (None if src is None else apply(src, g, resolution, aug)), apply(tgt, g, resolution, aug), g


def paired_augment(src: np.ndarray | None, tgt: np.ndarray, resolution: int, rng: np.random.Generator | None,
                   aug: AugmentConfig, allow_flip: bool = True, region: Region | None = None
                   ) -> tuple[np.ndarray | None, np.ndarray]:
    """The same crop (or pad), resize and flip for source and target (:func:`plan`): ``region``, the
    protected region of the sample, stays whole; None protects nothing (the blind crop).
    ``src=None`` (adaptation rows): the target alone. ``rng=None``: validation placement, no flip."""
    a, b, _ = augment_pair(src, tgt, resolution, rng, aug, allow_flip, region)
    return a, b


def flip_allowed(text: str, task: str | None, aug: AugmentConfig) -> bool:
    if task in aug.no_flip_tasks:
        return False
    words = set(text.lower().replace(",", " ").replace(".", " ").split())
    return not any(w in words or any(x.startswith(w) for x in words) for w in aug.no_flip_words)


def region_of(doc: dict, text: str, hw: tuple[int, int], mask: np.ndarray | None, src: np.ndarray | None,
              tgt: np.ndarray | None, aug: AugmentConfig) -> Region:
    """:func:`protected_region` of a decoded sample (``doc`` = its json member)."""
    meta = doc.get("meta") if isinstance(doc, dict) else None
    if isinstance(meta, str):  # written as a JSON string by an older writer
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            meta = {}
    return protected_region(task=doc.get("task") if isinstance(doc, dict) else None, text=text,
                            meta=meta if isinstance(meta, dict) else {}, hw=hw, mask=mask, src=src, tgt=tgt, aug=aug)
