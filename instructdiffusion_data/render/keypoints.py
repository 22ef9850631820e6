"""Keypoint targets: opaque colour circles on chosen joints, and their recovery for verification."""

from __future__ import annotations

import cv2
import numpy as np

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


def pick_color(rgb: np.ndarray, x: float, y: float, r: int, palette: dict[str, tuple], exclude: set[str],
               rng: np.random.Generator) -> str:
    """A palette colour, random among those that stand out from the source around the joint (so the
    circle is visible and recoverable); falls back to any unused colour."""
    h, w = rgb.shape[:2]
    ys, xs = patch_bounds(x, y, r, h, w)
    patch = rgb[ys, xs].reshape(-1, 3).astype(np.float32)
    names = [n for n in rng.permutation(list(palette)) if n not in exclude]
    for n in names:
        c = np.array(palette[n], np.float32)
        if np.mean(np.abs(patch - c).max(-1) < COLOR_TOL * 1.5) < 0.02:
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
    that changed to its colour; ``inf`` when no such pixel is found."""
    h, w = tgt.shape[:2]
    errors = []
    for (x, y), c in zip(points, colors):
        ys, xs = patch_bounds(x, y, radius, h, w)
        t = tgt[ys, xs].astype(np.float32)
        s = src[ys, xs].astype(np.float32)
        close = np.abs(t - np.array(c, np.float32)).max(-1) < COLOR_TOL
        changed = np.abs(t - s).max(-1) > 12
        sel = close & changed
        if sel.sum() < max(3, 0.3 * np.pi * radius * radius):
            errors.append(float("inf"))
            continue
        yy, xx = np.nonzero(sel)
        cx, cy = xx.mean() + xs.start, yy.mean() + ys.start
        errors.append(float(np.hypot(cx - x, cy - y)))
    return errors
