"""Keypoint targets: opaque colour circles on chosen joints, and their recovery for verification."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from .masks import integral_color

SHIFT = 4  # cv2 fixed-point bits: circle centres are drawn at 1/16 px precision
COLOR_TOL = 60.0  # max channel distance of a recovered circle pixel to its colour (JPEG slack)


def radius_for(h: int, w: int, frac: float, minimum: int = 3) -> int:
    return max(minimum, int(round(frac * max(h, w))))


def select_joints(joints: list[dict], h: int, w: int, radius: int, k: int, rng: np.random.Generator,
                  min_visibility: int = 1) -> list[int]:
    """Up to ``k`` labelled joints, in random order, whose circles lie inside the image and do not
    touch each other (so every circle stays recoverable)."""
    cand = [i for i, j in enumerate(joints)
            if j["v"] >= min_visibility and radius <= j["x"] <= w - 1 - radius and radius <= j["y"] <= h - 1 - radius]
    order = list(rng.permutation(cand)) if cand else []
    chosen: list[int] = []
    gap = 2 * radius + 3
    for i in order:
        if all((joints[i]["x"] - joints[c]["x"]) ** 2 + (joints[i]["y"] - joints[c]["y"]) ** 2 >= gap * gap for c in chosen):
            chosen.append(int(i))
        if len(chosen) == k:
            break
    return chosen


def patch_bounds(x: float, y: float, r: int, h: int, w: int) -> tuple[slice, slice]:
    m = 2 * r + 2
    return slice(max(0, int(y) - m), min(h, int(y) + m + 1)), slice(max(0, int(x) - m), min(w, int(x) + m + 1))


@lru_cache(maxsize=8)
def _near_bits(colors: tuple[tuple, ...]) -> np.ndarray:
    """[3, 256] uint64: per channel and channel value, bit j set when the value lies within
    ``1.5 * COLOR_TOL`` of that channel of colour j (in float32, as :func:`pick_color` tests a pixel)."""
    v = np.arange(256, dtype=np.float32)[None, :, None]
    near = np.abs(v - np.array(colors, np.float32).reshape(-1, 3).T[:, None, :]) < COLOR_TOL * 1.5
    bits = np.bitwise_or.reduce(near.astype(np.uint64) << np.arange(len(colors), dtype=np.uint64), axis=-1)
    bits.flags.writeable = False  # cached and shared
    return bits


def pick_color(rgb: np.ndarray, x: float, y: float, r: int, palette: dict[str, tuple], exclude: set[str],
               rng: np.random.Generator) -> str:
    """A palette colour, random among those that stand out from the source around the joint (so the
    circle is visible and recoverable); falls back to any unused colour.

    A colour stands out when under 2% of the patch pixels are within ``1.5 * COLOR_TOL`` of it on
    every channel. The patch is tested against the whole palette in one pass: per-channel tables
    (a uint8 channel has 256 values) give each pixel a bit set of the colours it is near."""
    h, w = rgb.shape[:2]
    ys, xs = patch_bounds(x, y, r, h, w)
    names = [n for n in rng.permutation(list(palette)) if n not in exclude]
    patch = rgb[ys, xs].reshape(-1, 3)
    if not patch.shape[0]:  # no pixel around the joint: nothing stands out
        return str(names[0])
    col = {n: j for j, n in enumerate(palette)}
    if patch.dtype == np.uint8 and len(palette) <= 64:
        t = _near_bits(tuple(tuple(c) for c in palette.values()))
        near = t[0].take(patch[:, 0]) & t[1].take(patch[:, 1]) & t[2].take(patch[:, 2])

        def share(n: str) -> float:
            return np.count_nonzero(near & np.uint64(1 << col[n])) / patch.shape[0]
    else:
        d = np.abs(patch.astype(np.float32)[:, None, :] - np.array(list(palette.values()), np.float32)[None])
        counts = np.count_nonzero((d < COLOR_TOL * 1.5).all(-1), axis=0)

        def share(n: str) -> float:
            return counts[col[n]] / patch.shape[0]
    for n in names:
        if share(n) < 0.02:
            return str(n)
    return str(names[0])


def draw(rgb: np.ndarray, points: list[tuple[float, float]], colors: list[tuple[int, int, int]], radius: int) -> np.ndarray:
    out = rgb.copy()
    scale = 1 << SHIFT
    for (x, y), c in zip(points, colors):
        centre = (int(round(x * scale)), int(round(y * scale)))
        cv2.circle(out, centre, radius * scale, tuple(int(v) for v in c), thickness=-1, lineType=cv2.LINE_8, shift=SHIFT)
    return out


def recover_centres(src: np.ndarray, tgt: np.ndarray, points: list[tuple[float, float]],
                    colors: list[tuple[int, int, int]], radius: int) -> list[float]:
    """For each drawn joint, the distance between the joint and the centroid of the pixels near it
    that changed to its colour (every channel within ``COLOR_TOL``, some channel moved by more than
    12); ``inf`` when fewer than 30% of a circle's pixels (at least 3) are found."""
    h, w = tgt.shape[:2]
    need = max(3, 0.3 * np.pi * radius * radius)
    errors = []
    for (x, y), c in zip(points, colors):
        ys, xs = patch_bounds(x, y, radius, h, w)
        t, s = tgt[ys, xs], src[ys, xs]
        col = np.asarray(c, np.float32)
        if not t.size:  # a joint outside the image
            errors.append(float("inf"))
            continue
        if integral_color(col) and float(COLOR_TOL).is_integer():
            # |t - c| < TOL on every channel <=> c - TOL < t < c + TOL, on integers
            lo = tuple(v - COLOR_TOL + 1 for v in col.tolist()) + (0.0,)
            hi = tuple(v + COLOR_TOL - 1 for v in col.tolist()) + (0.0,)
            close = cv2.inRange(t, lo, hi)
            still = cv2.inRange(cv2.absdiff(t, s), (0.0, 0.0, 0.0, 0.0), (12.0, 12.0, 12.0, 0.0))
            sel = cv2.subtract(close, still)  # 255 where close and some channel moved by more than 12
        else:
            tf = t.astype(np.float32)
            near = np.abs(tf - col).max(-1) < COLOR_TOL
            moved = np.abs(tf - s.astype(np.float32)).max(-1) > 12
            sel = (near & moved).view(np.uint8)
        if cv2.countNonZero(sel) < need:
            errors.append(float("inf"))
            continue
        mo = cv2.moments(sel, binaryImage=True)  # integer sums of x and y over the selected pixels
        cx, cy = mo["m10"] / mo["m00"] + xs.start, mo["m01"] / mo["m00"] + ys.start
        errors.append(float(np.hypot(cx - x, cy - y)))
    return errors
