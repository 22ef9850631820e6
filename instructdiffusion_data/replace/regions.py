"""Semantic regions of SA-1B and OpenImages: selection rules and mask decoding.

A *region record* is a row whose ``meta["region"]`` describes one object mask of one image::

    {"id": str, "label": str | None, "label_id": str | None, "bbox": [x, y, w, h] (pixels),
     "area_frac": float, "predicted_iou": float | None, "stability_score": float | None,
     "mask": {"rle": {"size": [h, w], "counts": str}}            # SA-1B, COCO compressed RLE
          | {"zip": "/abs/path/x-masks-0.zip", "member": "….png"}}  # OpenImages, PNG inside a zip

Readers compute the numbers from the annotations and apply :class:`RegionSelect`; a region that
fails a rule is still yielded, dropped, with the rule as its reason (``region area_frac<0.02``).
"""

from __future__ import annotations

import threading
import zipfile
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from .. import imageio
from ..errors import RecordError


@dataclass
class RegionSelect:
    """Which regions of an image become replacement queries / gallery patches."""

    min_area_frac: float = 0.02  # region area / image area, lower bound
    max_area_frac: float = 0.6  # upper bound (huge regions are background, not objects)
    min_predicted_iou: float = 0.0  # SA-1B predicted_iou / OpenImages PredictedIoU; SA-1B's own cut is 0.88
    min_stability: float = 0.0  # SA-1B stability_score (absent in OpenImages: rule skipped)
    border: Literal["allow", "drop"] = "drop"  # drop regions whose bbox touches the image border
    border_margin: int = 2  # pixels: "touches" = bbox within this distance of an edge
    max_per_image: int = 3  # at most this many regions per image pass, the rest are dropped (0 = no cap)
    order: Literal["area", "predicted_iou"] = "area"  # which regions win the per-image cap (larger first)


def region_reasons(regions: list[dict], width: int, height: int, cfg: RegionSelect) -> list[str | None]:
    """For each region dict (keys ``area_frac``, ``bbox``, ``predicted_iou``, ``stability_score``)
    the reason it is rejected, or None when kept. The cap applies after the threshold rules, in
    ``cfg.order`` (ties broken by position, so the result is deterministic)."""
    reasons: list[str | None] = []
    for r in regions:
        a = float(r["area_frac"])
        x, y, w, h = r["bbox"]
        piou, stab = r.get("predicted_iou"), r.get("stability_score")
        if a < cfg.min_area_frac:
            reasons.append(f"region area_frac<{cfg.min_area_frac:g}")
        elif a > cfg.max_area_frac:
            reasons.append(f"region area_frac>{cfg.max_area_frac:g}")
        elif piou is not None and piou < cfg.min_predicted_iou:
            reasons.append(f"region predicted_iou<{cfg.min_predicted_iou:g}")
        elif stab is not None and stab < cfg.min_stability:
            reasons.append(f"region stability_score<{cfg.min_stability:g}")
        elif cfg.border == "drop" and (
            x <= cfg.border_margin or y <= cfg.border_margin
            or x + w >= width - cfg.border_margin or y + h >= height - cfg.border_margin
        ):
            reasons.append("region touches image border")
        else:
            reasons.append(None)
    if cfg.max_per_image > 0:
        kept = [i for i, why in enumerate(reasons) if why is None]
        if cfg.order == "area":
            kept.sort(key=lambda i: (-float(regions[i]["area_frac"]), i))
        else:
            kept.sort(key=lambda i: (-float(regions[i].get("predicted_iou") or 0.0), i))
        for i in kept[cfg.max_per_image:]:
            reasons[i] = f"region over per-image cap ({cfg.max_per_image})"
    return reasons


def mask_bbox(mask: np.ndarray) -> list[int]:
    """[x, y, w, h] of the non-zero pixels (w = xmax - xmin + 1); [0, 0, 0, 0] when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


# -- mask decoding ----------------------------------------------------------------------------

def decode_rle(rle: dict) -> np.ndarray:
    """COCO compressed RLE ({"size": [h, w], "counts": str|bytes}) -> uint8 [h, w] in {0, 1}."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    else:
        rle = {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}
    return np.ascontiguousarray(mask_utils.decode(rle)).astype(np.uint8)


def encode_rle(mask: np.ndarray) -> dict:
    """uint8/bool [h, w] -> COCO compressed RLE with ``counts`` as str (SA-1B's json layout)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray((mask > 0).astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


_zip_local = threading.local()


def _open_zip(path: str) -> zipfile.ZipFile:
    """One open ZipFile per archive and thread (the central directory is read once)."""
    cache = getattr(_zip_local, "zips", None)
    if cache is None:
        cache = _zip_local.zips = {}
    z = cache.get(path)
    if z is None:
        try:
            z = cache[path] = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise RecordError("mask archive missing", file=path) from None
        except zipfile.BadZipFile:
            raise RecordError("mask archive is not a zip", file=path) from None
    return z


def read_zip_member(path: str, member: str) -> bytes:
    z = _open_zip(path)
    try:
        return z.read(member)
    except KeyError:
        raise RecordError("mask PNG not in archive", file=path, field=member) from None


def decode_png_mask(data: bytes, *, file: str | None = None, member: str | None = None) -> np.ndarray:
    """A mask PNG of an archive as {0, 1}; read through :mod:`..imageio`, so a header declaring more
    pixels than its limit is ``image too large`` before any decode."""
    try:
        arr = imageio.decode_unchanged(data, file=file, what="mask PNG")
    except imageio.ImageTooLarge as e:
        e.field = member  # the archive's member, as for a corrupt one
        raise
    except RecordError:
        raise RecordError("mask PNG is corrupt", file=file, field=member) from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    return (arr > 0).astype(np.uint8)


def region_mask(region: dict, height: int, width: int) -> np.ndarray:
    """The region's mask at image resolution, uint8 [height, width] in {0, 1}.

    OpenImages masks are stored at their own (smaller) resolution: they are resized with nearest
    neighbour, as the dataset's documentation prescribes."""
    spec = region.get("mask") or {}
    if "rle" in spec:
        m = decode_rle(spec["rle"])
    elif "zip" in spec:
        m = decode_png_mask(read_zip_member(spec["zip"], spec["member"]), file=spec["zip"], member=spec["member"])
    else:
        raise RecordError("region has no mask", field="meta.region.mask")
    if m.shape != (height, width):
        m = cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST)
    return m
