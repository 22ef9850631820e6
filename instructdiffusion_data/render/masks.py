"""Segmentation masks: decode annotations into binary masks, draw a semi-transparent colour mask,
and recover the drawn mask from (source, target) to verify it.

Masks are ``bool`` arrays ``[H, W]``. Segments come in the shapes COCO-family files use:
``{"rle": {"size": [h, w], "counts": str | list}}``, ``{"polygons": [[x1, y1, x2, y2, ...], ...]}``,
or ``{"labelmap": path, "value": v}`` (a pixel-map PNG where pixels equal to ``v`` belong to the segment).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .. import imageio
from ..errors import RecordError


def polygons_to_mask(polygons: list, h: int, w: int, *, record: str | None = None) -> np.ndarray:
    """Rasterise COCO polygons (flat [x1, y1, ...] lists) with pycocotools, as COCO's own API does."""
    polys = []
    for poly in polygons:
        arr = np.asarray(poly, dtype=np.float64).reshape(-1)
        if arr.size < 6 or arr.size % 2 or not np.all(np.isfinite(arr)):
            raise RecordError("polygon has fewer than 3 points or bad coordinates", record=record, field="segmentation")
        xs, ys = arr[0::2], arr[1::2]
        if xs.max() < 0 or ys.max() < 0 or xs.min() > w or ys.min() > h:
            raise RecordError("polygon lies outside the image", record=record, field="segmentation")
        polys.append(arr.tolist())
    if not polys:
        raise RecordError("segment has no polygon", record=record, field="segmentation")
    rles = mask_utils.frPyObjects(polys, h, w)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def rle_to_mask(rle: dict, h: int, w: int, *, record: str | None = None) -> np.ndarray:
    size = rle.get("size")
    if not size or list(size) != [h, w]:
        raise RecordError("RLE size differs from image size", record=record, field="segmentation.size",
                          rle_size=size, image_size=[h, w])
    counts = rle.get("counts")
    if isinstance(counts, list):  # uncompressed RLE (iscrowd annotations)
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


def segment_to_mask(seg: dict, h: int, w: int, *, record: str | None = None, labelmaps: dict | None = None) -> np.ndarray:
    if "rle" in seg:
        return rle_to_mask(seg["rle"], h, w, record=record)
    if "polygons" in seg:
        return polygons_to_mask(seg["polygons"], h, w, record=record)
    if "labelmap" in seg:
        lm = labelmaps.get(seg["labelmap"]) if labelmaps is not None else None
        if lm is None:
            lm = read_labelmap(seg["labelmap"], record=record)
            if labelmaps is not None:
                labelmaps[seg["labelmap"]] = lm
        if lm.shape != (h, w):
            raise RecordError("label map size differs from image size", file=seg["labelmap"], record=record,
                              labelmap_size=f"{lm.shape[1]}x{lm.shape[0]}", image_size=f"{w}x{h}")
        return lm == seg["value"]
    raise RecordError("segment has no rle, polygons or labelmap", record=record, field="segmentation")


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


def overlay(rgb: np.ndarray, mask: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend ``color`` over the masked pixels at ``alpha``; pixels outside the mask are untouched."""
    out = rgb.copy()
    m8 = mask.view(np.uint8)
    x, y, w, h = cv2.boundingRect(m8)  # work inside the mask's box only
    if w and h:
        roi = rgb[y:y + h, x:x + w]
        solid = np.empty_like(roi)
        solid[:] = np.asarray(color, np.float32).round().astype(np.uint8)
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
    ``alpha / 2 * min_contrast / sqrt(3)``. The per-pixel algebra runs on those pixels (and on ``gt``,
    whose determinability the IoU needs), not on the whole image.
    """
    h, w = src.shape[:2]
    diff = cv2.absdiff(tgt, src)
    moved = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2]) >= int(alpha / 2 * min_contrast / np.sqrt(3))
    todo = moved | gt if gt is not None else moved
    idx = np.flatnonzero(todo)
    s = src.reshape(-1, 3)[idx].astype(np.float32)
    d = color[None, :] - s
    norm2 = np.einsum("ij,ij->i", d, d)
    ok = norm2 >= min_contrast * min_contrast
    a = np.einsum("ij,ij->i", tgt.reshape(-1, 3)[idx].astype(np.float32) - s, d) / np.maximum(norm2, 1.0)
    rec = np.zeros(h * w, bool)
    rec[idx] = (a > alpha / 2.0) & ok
    valid = np.ones(h * w, bool)  # pixels outside ``todo`` did not move: determinable as "not masked"
    valid[idx] = ok
    return rec.reshape(h, w), valid.reshape(h, w)


def changed_pixels(src: np.ndarray, drawn: np.ndarray, mask: np.ndarray, color: np.ndarray,
                   min_contrast: float = 48.0) -> tuple[np.ndarray, np.ndarray]:
    """(pixels the drawing changed, determinable) on exact, not yet encoded pixels: the cheap form of
    :func:`recover_mask` (same determinability rule: a masked pixel whose colour is within
    ``min_contrast`` of the mask colour cannot show the blend)."""
    diff = cv2.absdiff(drawn, src)
    changed = (diff[..., 0] | diff[..., 1] | diff[..., 2]) > 0  # (a reduce over the channel axis is 10x slower)
    valid = np.ones(mask.shape, bool)
    idx = np.flatnonzero(mask)
    if idx.size:
        d = color[None, :] - src.reshape(-1, 3)[idx].astype(np.float32)
        valid.reshape(-1)[idx] = np.einsum("ij,ij->i", d, d) >= min_contrast * min_contrast
    return changed, valid


def mask_iou(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    if valid is not None:
        pred, gt = pred & valid, gt & valid
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def mask_png(mask: np.ndarray) -> bytes:
    from ..imageio import encode_png

    return encode_png(mask.astype(np.uint8) * 255, compression=1)


def color_contrast(rgb: np.ndarray, mask: np.ndarray, color: np.ndarray, min_contrast: float = 48.0) -> float:
    """Fraction of masked pixels whose blend with ``color`` is visible (see :func:`recover_mask`)."""
    if not mask.any():
        return 1.0
    step = max(1, int(np.sqrt(mask.size / 16384)))  # a colour choice, not a measurement: a pixel grid is enough
    px = rgb[::step, ::step][mask[::step, ::step]]
    if not len(px):
        px = rgb[mask]
    d = color[None, :] - px.astype(np.float32)
    return float(np.mean(np.einsum("ij,ij->i", d, d) >= min_contrast * min_contrast))


def resize_bool(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask to (h, w) by area averaging and a 0.5 threshold (what a person would
    call the mask at the smaller size)."""
    h, w = shape
    if mask.shape == (h, w):
        return mask
    small = cv2.resize(mask.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_AREA)
    return small >= 128
