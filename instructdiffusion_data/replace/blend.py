"""Weight-free object replacement: the reference patch Poisson-blended into the source region.

1. The source object is removed: its mask (dilated by ``dilate`` px) is inpainted with OpenCV's
   Telea method, so no part of the old object survives outside the new one.
2. The reference patch (RGBA, alpha = its object mask) is trimmed to its object, scaled to fit the
   region's bounding box (times ``fit``, aspect kept) and centred on it, shifted inside the image.
3. ``cv2.seamlessClone`` over the object grown by a ring of its own surroundings (``ring``; a mask
   ending exactly on the outline would lose the outline's gradient and a flat object would fade into
   the scene) (Poisson image editing, Pérez et al. 2003) blends it in: gradients of the
   reference, boundary colours of the scene (``normal``), or the stronger gradient of the two
   (``mixed``).

Returns the edited image and the edited area (old region | new object), which is the row's mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from ..errors import RecordError
from .regions import mask_bbox


@dataclass
class PoissonParams:
    fit: float = 1.0  # reference scaled to fit the region's bbox times this
    dilate: int = 3  # px grown around the source region before it is inpainted
    inpaint_radius: int = 5
    clone: Literal["normal", "mixed"] = "normal"
    ring: float = 0.08  # the clone mask = the object grown by this fraction of its size (keeps its outline)


def poisson_replace(src: np.ndarray, region: np.ndarray, ref_rgba: np.ndarray,
                    p: PoissonParams | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(edited RGB, edited-area mask uint8 {0,1}, placement info)."""
    p = p or PoissonParams()
    H, W = region.shape
    x, y, w, h = mask_bbox(region)
    if w == 0:
        raise RecordError("source region is empty")
    alpha = ref_rgba[..., 3] > 127
    _rx, _ry, rw, rh = mask_bbox(alpha)
    if rw < 2 or rh < 2:
        raise RecordError("reference patch has no object pixels")
    scale = min(w * p.fit / rw, h * p.fit / rh)
    # the object plus its ring and a 2 px frame must fit inside the image (seamlessClone needs a margin)
    scale = min(scale, (W - 8) / (rw * 1.2), (H - 8) / (rh * 1.2))
    pw_all, ph_all = max(2, round(ref_rgba.shape[1] * scale)), max(2, round(ref_rgba.shape[0] * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    ref_all = cv2.resize(np.ascontiguousarray(ref_rgba[..., :3]), (pw_all, ph_all), interpolation=interp)
    a_all = cv2.resize(alpha.astype(np.uint8), (pw_all, ph_all), interpolation=cv2.INTER_NEAREST)
    if a_all.sum() < 4:
        raise RecordError("reference too small after scaling")
    # Poisson cloning keeps the gradients inside its mask: the mask must include the object's outline,
    # so it is the object grown by a ring of the reference's own surroundings (the patch's context)
    ring = max(4, round(p.ring * max(mask_bbox(a_all)[2:])))  # OpenCV erodes the mask 1 px and needs 2 more
    clone_a = cv2.dilate(a_all, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring + 1, 2 * ring + 1)))
    ax, ay, aw, ah = mask_bbox(a_all)

    k = 2 * p.dilate + 1
    hole = cv2.dilate(region.astype(np.uint8), np.ones((k, k), np.uint8)) if p.dilate > 0 else region.astype(np.uint8)
    base = cv2.inpaint(np.ascontiguousarray(src), hole * 255, p.inpaint_radius, cv2.INPAINT_TELEA)

    # pad by 2 px (replicated pixels, mask 0) so that the mask never touches the patch border
    pad = 2 + ring
    ref_p = cv2.copyMakeBorder(ref_all, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    c_p = cv2.copyMakeBorder(clone_a, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    a_p = cv2.copyMakeBorder(a_all, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    # crop to the clone mask's box + 2 px
    cx, cy, cw, ch = mask_bbox(c_p)
    sl = (slice(cy - 2, cy + ch + 2), slice(cx - 2, cx + cw + 2))
    ref_p, c_p, a_p = ref_p[sl], c_p[sl], a_p[sl]
    ph, pw = c_p.shape
    if pw > W - 2 or ph > H - 2:
        raise RecordError("reference does not fit inside the image")
    # centre the object (not its ring) on the region's box, then shift the patch inside the image
    ox, oy = ax + pad - (cx - 2), ay + pad - (cy - 2)  # object box origin inside the cropped patch
    x0 = round(x + w / 2 - aw / 2) - ox
    y0 = round(y + h / 2 - ah / 2) - oy
    x0 = min(max(x0, 1), W - pw - 1)
    y0 = min(max(y0, 1), H - ph - 1)
    # The patch goes onto a canvas of the destination's size at its final place, and the clone is
    # centred on the mask's own box, so the placement is the identity. (OpenCV 5.0 left the
    # destination unchanged for a source smaller than it, and erodes the mask argument in place:
    # it gets a copy.)
    canvas = base.copy()
    canvas[y0:y0 + ph, x0:x0 + pw] = ref_p
    clone_mask = np.zeros((H, W), np.uint8)
    clone_mask[y0:y0 + ph, x0:x0 + pw] = c_p * 255
    bx, by, bw, bh = cv2.boundingRect(clone_mask)
    center = (bx + bw // 2, by + bh // 2)
    flags = cv2.NORMAL_CLONE if p.clone == "normal" else cv2.MIXED_CLONE
    out = cv2.seamlessClone(canvas, base, clone_mask.copy(), center, flags)
    placed = np.zeros((H, W), np.uint8)
    placed[y0:y0 + ph, x0:x0 + pw] = c_p
    obj = np.zeros((H, W), np.uint8)
    obj[y0:y0 + ph, x0:x0 + pw] = a_p
    edited = (hole | placed).astype(np.uint8)
    info = {"placement": mask_bbox(obj), "scale": round(float(scale), 4), "clone": p.clone,
            "fit": p.fit, "dilate": p.dilate, "ring_px": ring}
    return out, edited, info
