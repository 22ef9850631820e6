"""Segmentation masks: decode annotations into binary masks, draw a semi-transparent colour mask,
and recover the drawn mask from (source, target) to verify it.

Masks are ``bool`` arrays ``[H, W]``. Segments come in the shapes COCO-family files use:
``{"rle": {"size": [h, w], "counts": str | list}}``, ``{"polygons": [[x1, y1, x2, y2, ...], ...]}``,
or ``{"labelmap": path, "value": v}`` (a pixel-map PNG where pixels equal to ``v`` belong to the segment).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .. import imageio
from ..errors import RecordError


def polygons_to_rle(polygons: list, h: int, w: int, *, record: str | None = None) -> dict:
    """COCO polygons (flat [x1, y1, ...] lists) as one pycocotools RLE (their union), as COCO's own API
    rasterises them."""
    polys = []
    for poly in polygons:
        # the numbers as numpy reads them (nested lists flattened); the checks in plain Python, which
        # is faster than numpy calls on a few dozen numbers
        arr = np.asarray(poly, dtype=np.float64).reshape(-1).tolist()
        if len(arr) < 6 or len(arr) % 2 or not all(map(math.isfinite, arr)):
            raise RecordError("polygon has fewer than 3 points or bad coordinates", record=record, field="segmentation")
        xs, ys = arr[0::2], arr[1::2]
        if max(xs) < 0 or max(ys) < 0 or min(xs) > w or min(ys) > h:
            raise RecordError("polygon lies outside the image", record=record, field="segmentation")
        polys.append(arr)
    if not polys:
        raise RecordError("segment has no polygon", record=record, field="segmentation")
    return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))


def polygons_to_mask(polygons: list, h: int, w: int, *, record: str | None = None) -> np.ndarray:
    return rle_decode(polygons_to_rle(polygons, h, w, record=record))


def rle_string_total(counts: bytes) -> int | None:
    """The sum of the runs of a compressed COCO RLE string, parsed as pycocotools parses it (5-bit
    groups, 0x20 = more, 0x10 on the last group = negative, runs after the second coded as the
    difference to the run two before), or None when the string is malformed: a character outside
    '0'..'o', a value cut off or longer than 7 characters, or a negative run. pycocotools checks none
    of this: a decode of runs that overshoot the image fails, one that falls short leaves pixels
    unset, and a merge of either may not return."""
    c = np.frombuffer(counts, np.uint8)
    if not c.size:
        return 0
    if c.min() < 48 or c.max() > 111:
        return None
    c = c - np.uint8(48)
    ends = np.flatnonzero(c < 32)  # the last character of each value (no 0x20 "more" bit)
    if not ends.size or ends[-1] != c.size - 1:
        return None
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lens = ends - starts + 1
    if lens.max() > 7:
        return None
    digits = (c & np.uint8(31)).astype(np.int64)
    shift = 5 * (np.arange(c.size) - np.repeat(starts, lens))  # 5 bits per character, first = lowest
    vals = np.add.reduceat(digits << shift, starts)
    neg = np.flatnonzero(c[ends] & np.uint8(16))
    vals[neg] -= np.int64(1) << (5 * lens[neg])  # two's complement of the value's bits
    runs = vals.copy()
    runs[3::2] = np.cumsum(vals[1::2])[1:]  # run i = value i + run i - 2, for i > 2
    runs[4::2] = np.cumsum(vals[2::2])[1:]
    if runs.min() < 0:
        return None
    return int(runs.sum())


def checked_rle(rle: dict, h: int, w: int, *, record: str | None = None) -> dict:
    """A segment's ``rle`` (compressed string or uncompressed list of counts) as a pycocotools RLE,
    checked to cover the image exactly (an RLE that does not is corrupt)."""
    size = rle.get("size")
    if not size or list(size) != [h, w]:
        raise RecordError("RLE size differs from image size", record=record, field="segmentation.size",
                          rle_size=size, image_size=[h, w])
    counts = rle.get("counts")
    if isinstance(counts, list):  # uncompressed RLE (iscrowd annotations)
        out = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        out = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
        if not isinstance(out["counts"], bytes):
            raise RecordError("RLE counts is neither a string nor a list of counts", record=record,
                              field="segmentation.counts")
    total = rle_string_total(out["counts"])
    if total != h * w:
        raise RecordError("RLE counts do not cover the image", record=record, field="segmentation.counts",
                          pixels=total, image_size=[h, w])
    return out


def rle_to_mask(rle: dict, h: int, w: int, *, record: str | None = None) -> np.ndarray:
    return rle_decode(checked_rle(rle, h, w, record=record))


def segment_to_rle(seg: dict, h: int, w: int, *, record: str | None = None) -> dict | None:
    """An ``rle`` or ``polygons`` segment as a pycocotools RLE (validated as :func:`segment_to_mask`
    validates it); None for a label-map segment, which is a pixel map, not a region code."""
    if "rle" in seg:
        return checked_rle(seg["rle"], h, w, record=record)
    if "polygons" in seg:
        return polygons_to_rle(seg["polygons"], h, w, record=record)
    if "labelmap" in seg:
        return None
    raise RecordError("segment has no rle, polygons or labelmap", record=record, field="segmentation")


def segment_labelmap(seg: dict, h: int, w: int, *, record: str | None = None,
                     labelmaps: dict | None = None) -> np.ndarray:
    """The label map of a ``labelmap`` segment (read once per path when ``labelmaps`` caches them),
    checked to be the image's size."""
    lm = labelmaps.get(seg["labelmap"]) if labelmaps is not None else None
    if lm is None:
        lm = read_labelmap(seg["labelmap"], record=record)
        if labelmaps is not None:
            labelmaps[seg["labelmap"]] = lm
    if lm.shape != (h, w):
        raise RecordError("label map size differs from image size", file=seg["labelmap"], record=record,
                          labelmap_size=f"{lm.shape[1]}x{lm.shape[0]}", image_size=f"{w}x{h}")
    return lm


def segment_to_mask(seg: dict, h: int, w: int, *, record: str | None = None, labelmaps: dict | None = None) -> np.ndarray:
    rle = segment_to_rle(seg, h, w, record=record)
    if rle is not None:
        return rle_decode(rle)
    return segment_labelmap(seg, h, w, record=record, labelmaps=labelmaps) == seg["value"]


def rle_decode(rle: dict) -> np.ndarray:
    """A pycocotools RLE as a bool mask in row-major order (pycocotools decodes column-major; crops,
    boolean indexing and OpenCV calls on a column-major mask copy or crawl)."""
    cols = mask_utils.decode(rle)  # [h, w] column-major: its transpose is a row-major [w, h] array
    return cv2.transpose(cols.T) != 0  # OpenCV's blocked transpose is several times numpy's copy


def rle_union(rles: list[dict]) -> dict:
    """The union of pycocotools RLEs of one size (``rles`` not empty)."""
    return rles[0] if len(rles) == 1 else mask_utils.merge(rles)


def value_counts(lm: np.ndarray) -> np.ndarray | None:
    """Pixels per value of an 8- or 16-bit label map (index = value); None for other types."""
    if lm.dtype not in (np.uint8, np.uint16):
        return None
    return np.bincount(lm.reshape(-1), minlength=256 if lm.dtype == np.uint8 else 0)


def read_labelmap(path: str, *, record: str | None = None) -> np.ndarray:
    """A label-map PNG as it is stored (``IMREAD_UNCHANGED``; the first channel of a colour file),
    read through :mod:`..imageio` so its pixel limit applies (``image too large`` before any decode)."""
    where = str(Path(path))
    try:
        data = imageio.decode_unchanged(imageio.read_bytes(path, record), file=where, record=record,
                                        what="label map")
    except imageio.ImageTooLarge:
        raise
    except RecordError:
        raise RecordError("label map missing or corrupt", file=where, record=record) from None
    return data[..., 0] if data.ndim == 3 else data


def _max_channel(diff: np.ndarray) -> np.ndarray:
    """The largest channel of [H, W, 3] uint8, per pixel (per-channel planes: a reduce over the
    channel axis, or numpy views of it, are several times slower)."""
    c0, c1, c2 = cv2.split(diff)
    return cv2.max(cv2.max(c0, c1), c2)


def _changed(diff: np.ndarray) -> np.ndarray:
    """Pixels with any channel of an absolute difference [H, W, 3] non-zero."""
    return _max_channel(diff) > 0


_SUM3 = np.ones((1, 3), np.float32)


def integral_color(c: np.ndarray) -> bool:
    """Whether a colour is three whole numbers in 0..255 (every palette colour): its channel
    differences to uint8 pixels are then exact integers, and OpenCV's integer operations give what
    the float32 arithmetic on them gives."""
    return c.shape == (3,) and all(0 <= v <= 255 and float(v).is_integer() for v in c.tolist())


def _scalar(c: np.ndarray) -> tuple[float, float, float, float]:
    return float(c[0]), float(c[1]), float(c[2]), 0.0


def _sq_dist(a: np.ndarray, b: np.ndarray | tuple, buf: np.ndarray) -> np.ndarray:
    """Per pixel, the sum over channels of (a - b)^2 for uint8 [H, W, 3] ``a`` and ``b`` (or a
    scalar), as float32 [H, W]: an integer below 2^24, exact. ``buf`` [H, W, 3] float32 is scratch."""
    ad = cv2.absdiff(a, b)
    cv2.multiply(ad, ad, dst=buf, dtype=cv2.CV_32F)
    return cv2.transform(buf, _SUM3).reshape(a.shape[:2])


def dist2(rgb: np.ndarray, color: np.ndarray) -> np.ndarray:
    """Per pixel of ``rgb`` [H, W, 3]: the squared RGB distance to ``color`` as the arithmetic
    ``sum((color - pixel.astype(float32))^2)`` gives it, [H, W] (float32 for a float32 colour).

    For a colour of whole numbers in 0..255 the distance is an integer below 2^24, exact in float32,
    and a few OpenCV passes compute it (no per-pixel numpy temporaries); other colours take that
    arithmetic itself."""
    c = np.asarray(color)
    if integral_color(c):
        buf = np.empty(rgb.shape, np.float32)
        return _sq_dist(rgb, _scalar(c), buf).astype(np.result_type(c.dtype, np.float32), copy=False)
    d = c[None, :] - rgb.reshape(-1, 3).astype(np.float32)
    return np.einsum("ij,ij->i", d, d).reshape(rgb.shape[:2])


def far_from(rgb: np.ndarray, color: np.ndarray, min_contrast: float) -> np.ndarray:
    """Per pixel of ``rgb`` [H, W, 3]: whether ``|color - pixel|`` (RGB distance) is at least
    ``min_contrast``, i.e. whether a blend towards ``color`` can be seen there; bool [H, W]."""
    return dist2(rgb, color) >= min_contrast * min_contrast


def overlay(rgb: np.ndarray, mask: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend ``color`` over the masked pixels at ``alpha``; pixels outside the mask are untouched."""
    out = rgb.copy()
    m8 = mask.view(np.uint8)
    x, y, w, h = cv2.boundingRect(m8)  # work inside the mask's box only
    if w and h:
        roi = rgb[y:y + h, x:x + w]
        col = np.asarray(color, np.float32).round().astype(np.uint8)
        # one row, then repeated: a broadcast fill with a 3-element inner axis is ~50x slower
        solid = np.repeat(np.tile(col, w).reshape(1, w, 3), h, axis=0)
        blend = cv2.addWeighted(roi, 1.0 - alpha, solid, alpha, 0.0)  # rounds to nearest, like np.rint
        dst = out[y:y + h, x:x + w]
        cv2.copyTo(blend, m8[y:y + h, x:x + w], dst)
        out[y:y + h, x:x + w] = dst
    return out


def recover_mask(src: np.ndarray, tgt: np.ndarray, color: np.ndarray, alpha: float = 0.5,
                 min_contrast: float = 48.0, gt: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Estimate, per pixel, the blend weight that turns ``src`` into ``tgt`` towards ``color``.

    Returns (recovered mask, determinable): where the source is already close to the mask colour
    (``|color - src| < min_contrast``) a blend cannot be seen, so those pixels are excluded.

    Only pixels that changed enough to pass the blend test can be in the recovered mask: with
    ``|color - src| >= min_contrast`` a weight above ``alpha / 2`` moves some channel by at least
    ``alpha / 2 * min_contrast / sqrt(3)``. The per-pixel algebra runs on the box around those pixels
    (and ``gt``, whose determinability the IoU needs), not on the whole image.
    """
    h, w = src.shape[:2]
    rec = np.zeros((h, w), bool)
    valid = np.ones((h, w), bool)  # pixels outside ``todo`` did not move: determinable as "not masked"
    moved = _max_channel(cv2.absdiff(tgt, src)) >= int(alpha / 2 * min_contrast / np.sqrt(3))
    todo = moved | gt if gt is not None else moved
    x, y, bw, bh = cv2.boundingRect(todo.view(np.uint8))
    if not (bw and bh):
        return rec, valid
    box = (slice(y, y + bh), slice(x, x + bw))
    s, t, td = src[box], tgt[box], todo[box]
    c = np.asarray(color)
    if integral_color(c):
        # (t - s) . (c - s) = (|t - s|^2 + |c - s|^2 - |c - t|^2) / 2: sums of squared uint8
        # differences, integers below 2^24 and so exact in float32, one scratch buffer for all three
        buf = np.empty((bh, bw, 3), np.float32)
        norm2 = _sq_dist(s, _scalar(c), buf)
        dot = (_sq_dist(t, s, buf) + norm2 - _sq_dist(t, _scalar(c), buf)) * np.float32(0.5)
        dtype = np.result_type(c.dtype, np.float32)
        norm2, dot = norm2.astype(dtype, copy=False), dot.astype(dtype, copy=False)
    else:
        sf = s.reshape(-1, 3).astype(np.float32)
        d = c[None, :] - sf
        norm2 = np.einsum("ij,ij->i", d, d).reshape(bh, bw)
        dot = np.einsum("ij,ij->i", t.reshape(-1, 3).astype(np.float32) - sf, d).reshape(bh, bw)
    ok = norm2 >= min_contrast * min_contrast
    a = dot / np.maximum(norm2, 1.0)
    rec[box] = td & (a > alpha / 2.0) & ok
    valid[box] = ~td | ok
    return rec, valid


def drawn_scores(src: np.ndarray, drawn: np.ndarray, mask: np.ndarray, color: np.ndarray,
                 min_contrast: float = 48.0) -> tuple[float, float]:
    """(IoU, determinable) of the pixels the drawing changed against the bool ``mask``, on exact, not
    yet encoded pixels: the cheap form of :func:`recover_mask` + :func:`mask_iou`. Determinable: the
    share of masked pixels far enough from the mask colour (:func:`far_from`) to show a blend; only
    those count for the IoU, as in :func:`recover_mask`.

    Works inside the mask's bounding box: every pixel outside it is outside the mask (determinable),
    so it only adds to the union when the drawing changed it; the strips around the box are compared
    first and the changed pixels counted over the whole image only when one of them differs."""
    h, w = mask.shape
    x, y, bw, bh = cv2.boundingRect(mask.view(np.uint8))
    if not (bw and bh):  # empty mask: the IoU is 1 when nothing changed, else 0
        return (1.0 if cv2.norm(src, drawn, cv2.NORM_INF) == 0 else 0.0), 1.0
    box = (slice(y, y + bh), slice(x, x + bw))
    m, s = mask[box], src[box]
    changed = _changed(cv2.absdiff(drawn[box], s))
    n_changed = int(np.count_nonzero(changed))
    outside = 0
    strips = [(slice(0, y), slice(None)), (slice(y + bh, h), slice(None)), (box[0], slice(0, x)),
              (box[0], slice(x + bw, w))]
    if any(src[st].size and cv2.norm(src[st], drawn[st], cv2.NORM_INF) != 0 for st in strips):
        outside = int(np.count_nonzero(_changed(cv2.absdiff(drawn, src)))) - n_changed
    seen_px = far_from(s, color, min_contrast) & m
    seen = int(np.count_nonzero(seen_px))
    inter = int(np.count_nonzero(seen_px & changed))
    # union: determinable masked pixels, plus changed pixels outside the mask
    union = seen + n_changed - int(np.count_nonzero(changed & m)) + outside
    return (inter / union if union else 1.0), seen / int(np.count_nonzero(m))


def mask_iou(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    if valid is not None:
        pred, gt = pred & valid, gt & valid
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


# An 8-bit 0/255 mask is long runs of two values: run-length deflate without row filters encodes it
# ~5x faster than the default and smaller; still a plain 8-bit grayscale PNG.
_MASK_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
             cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


def mask_png(mask: np.ndarray) -> bytes:
    """A boolean mask as an 8-bit grayscale PNG with values 0 and 255."""
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * np.uint8(255), _MASK_PNG)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


@lru_cache(maxsize=16)
def empty_mask_png(h: int, w: int) -> bytes:
    """:func:`mask_png` of an all-false ``h`` x ``w`` mask (absent-category samples), encoded once per size."""
    return mask_png(np.zeros((h, w), bool))


def color_contrast(rgb: np.ndarray, mask: np.ndarray, color: np.ndarray, min_contrast: float = 48.0) -> float:
    """Fraction of masked pixels whose blend with ``color`` is visible (see :func:`far_from`)."""
    if not mask.any():
        return 1.0
    step = max(1, int(np.sqrt(mask.size / 16384)))  # a colour choice, not a measurement: a pixel grid is enough
    x, y, bw, bh = cv2.boundingRect(mask.view(np.uint8))
    y0, x0 = y // step * step, x // step * step  # the grid inside the mask's box
    grid = mask[y0:y + bh:step, x0:x + bw:step]
    n = int(np.count_nonzero(grid))
    if n:  # the grid's rows at full width (row-strided, no copy), then its columns
        far = far_from(rgb[y0:y + bh:step, x0:x + bw], color, min_contrast)[:, ::step]
        return int(np.count_nonzero(far & grid)) / n
    box = (slice(y, y + bh), slice(x, x + bw))
    return int(np.count_nonzero(far_from(rgb[box], color, min_contrast) & mask[box])) / int(np.count_nonzero(mask))


def resize_bool(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask to (h, w) with the interpolation the image itself gets
    (:func:`~instructdiffusion_data.imageio.resize`: bilinear down to half size, area averaging below)
    and a 0.5 threshold: the mask lands on the resized image's pixels as its object does. Bilinear
    at 640 -> 512 is ~5x faster than area averaging; the two masks differ on boundary pixels only
    (mean IoU 0.997 over COCO instance masks)."""
    h, w = shape
    if mask.shape == (h, w):
        return np.ascontiguousarray(mask)
    m255 = np.multiply(mask, np.uint8(255), dtype=np.uint8, order="C")  # one pass, row-major whatever came in
    interp = cv2.INTER_LINEAR if h >= mask.shape[0] / 2 and w >= mask.shape[1] / 2 else cv2.INTER_AREA
    small = cv2.resize(m255, (w, h), interpolation=interp)
    return small >= 128
