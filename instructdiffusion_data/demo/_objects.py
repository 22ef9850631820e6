"""Procedural object scenes for the object-replacement demo datasets (SA-1B and OpenImages formats).

A scene is a smooth textured background with 2-4 non-overlapping objects of a few classes, each
with its own shape, colour family and texture, so that a weight-free embedder groups objects of a
class and retrieval has something real to find. Every object comes with its exact binary mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# (display name, OpenImages LabelName) - real MIDs of the boxable classes.
CLASSES = [
    ("Apple", "/m/014j1m"),
    ("Ball", "/m/018xm"),
    ("Car", "/m/0k4j"),
    ("Flower", "/m/0c9ph5"),
    ("Kite", "/m/02zt3"),
]


@dataclass
class SceneObject:
    cls: int  # index into CLASSES
    mask: np.ndarray  # uint8 [H, W] in {0, 1}
    bbox: list[int]  # [x, y, w, h]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0 = rng.integers(60, 200, 3)
    c1 = rng.integers(60, 200, 3)
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    img = (c0 * (1 - t) + c1 * t) * np.ones((1, w, 1))
    noise = cv2.GaussianBlur(rng.normal(0, 18, (h, w, 1)).astype(np.float32), (0, 0), 3)[..., None]
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _draw(cls: int, rng: np.random.Generator, img: np.ndarray, cx: int, cy: int, r: int) -> np.ndarray:
    """Draw one object centred at (cx, cy) with radius r onto img; return its mask."""
    h, w = img.shape[:2]
    m = np.zeros((h, w), np.uint8)
    jitter = rng.integers(-25, 26, 3)
    name = CLASSES[cls][0]
    if name == "Apple":
        col = np.clip(np.array([200, 30, 30]) + jitter, 0, 255)
        cv2.circle(m, (cx, cy), r, 1, -1)
        cv2.rectangle(m, (cx - max(1, r // 10), cy - r - r // 3), (cx + max(1, r // 10), cy - r + 2), 1, -1)
        layer = np.zeros_like(img)
        layer[:] = col
        cv2.circle(layer, (cx - r // 3, cy - r // 3), max(2, r // 4), (250, 200, 200), -1)
        layer[max(0, cy - r - r // 3): max(0, cy - r + 2), :] = (90, 60, 20)
    elif name == "Ball":
        cv2.circle(m, (cx, cy), r, 1, -1)
        layer = np.zeros_like(img)
        a, b = np.clip(np.array([30, 90, 220]) + jitter, 0, 255), (245, 245, 245)
        ys = np.arange(h)[:, None] * np.ones((1, w))
        stripes = ((ys - cy) // max(2, r // 3)).astype(int) % 2 == 0
        layer[stripes] = a
        layer[~stripes] = b
    elif name == "Car":
        bw, bh = r * 2, max(4, int(r * 0.8))
        x0, y0 = cx - r, cy - bh // 2
        cv2.rectangle(m, (x0, y0), (x0 + bw, y0 + bh), 1, -1)
        cv2.rectangle(m, (x0 + bw // 4, y0 - bh // 2), (x0 + 3 * bw // 4, y0), 1, -1)
        wr = max(2, bh // 3)
        cv2.circle(m, (x0 + bw // 4, y0 + bh), wr, 1, -1)
        cv2.circle(m, (x0 + 3 * bw // 4, y0 + bh), wr, 1, -1)
        layer = np.zeros_like(img)
        layer[:] = np.clip(np.array([230, 200, 40]) + jitter, 0, 255)
        layer[max(0, y0 + bh - wr):, :] = (25, 25, 25)
        layer[max(0, y0 - bh // 2): max(0, y0), :] = (150, 200, 230)
    elif name == "Flower":
        col = np.clip(np.array([220, 80, 200]) + jitter, 0, 255)
        layer = np.zeros_like(img)
        layer[:] = col
        for k in range(6):
            ang = 2 * np.pi * k / 6
            px, py = int(cx + 0.55 * r * np.cos(ang)), int(cy + 0.55 * r * np.sin(ang))
            cv2.ellipse(m, (px, py), (max(2, r // 2), max(2, r // 3)), np.degrees(ang), 0, 360, 1, -1)
        cv2.circle(layer, (cx, cy), max(2, r // 3), (250, 220, 30), -1)
        cv2.circle(m, (cx, cy), max(2, r // 3), 1, -1)
    else:  # Kite
        pts = np.array([[cx, cy - r], [cx + int(0.7 * r), cy], [cx, cy + r], [cx - int(0.7 * r), cy]], np.int32)
        cv2.fillPoly(m, [pts], 1)
        layer = np.zeros_like(img)
        layer[:] = np.clip(np.array([40, 190, 60]) + jitter, 0, 255)
        layer[:, :cx] = np.clip(np.array([240, 120, 20]) + jitter, 0, 255)
        cv2.line(layer, (cx, cy - r), (cx, cy + r), (20, 20, 20), max(1, r // 12))
    sel = m.astype(bool)
    img[sel] = layer[sel]
    return m


def make_scene(rng: np.random.Generator, h: int = 240, w: int = 320, n_objects: int | None = None,
               allow_border: bool = True) -> tuple[np.ndarray, list[SceneObject]]:
    """An RGB image and its objects (masks exact, non-overlapping)."""
    img = _background(rng, h, w)
    n = int(n_objects if n_objects is not None else rng.integers(2, 5))
    occupied = np.zeros((h, w), np.uint8)
    objects: list[SceneObject] = []
    for _ in range(n * 6):
        if len(objects) >= n:
            break
        r = int(rng.integers(min(h, w) // 9, min(h, w) // 4))
        margin = r + 4
        lo_x, lo_y = (r // 2, r // 2) if allow_border and rng.random() < 0.1 else (margin, margin)
        if w - margin <= lo_x or h - margin <= lo_y:
            continue
        cx, cy = int(rng.integers(lo_x, w - margin)), int(rng.integers(lo_y, h - margin))
        probe = np.zeros((h, w), np.uint8)
        cv2.circle(probe, (cx, cy), int(r * 1.5), 1, -1)
        if (probe & occupied).any():
            continue
        cls = int(rng.integers(0, len(CLASSES)))
        m = _draw(cls, rng, img, cx, cy, r)
        occupied |= probe
        ys, xs = np.nonzero(m)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        objects.append(SceneObject(cls=cls, mask=m, bbox=bbox))
    img = cv2.GaussianBlur(img, (3, 3), 0)
    return img, objects
