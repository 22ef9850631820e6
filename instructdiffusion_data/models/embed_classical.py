"""A weight-free image embedder: colour and gradient histograms, L2-normalised.

Used by the CPU profile of the object-replacement pipeline so that FAISS retrieval is real without
CLIP weights. For an image (and an optional mask weighting its pixels) resized to
``size x size``:

* **colour** - a joint HSV histogram, ``h_bins x s_bins x v_bins`` (default 8x4x4 = 128 bins);
  the hue of unsaturated pixels (S < ``grey_saturation``) is undefined and is not binned by hue;
* **gradient** - a HOG-like histogram: unsigned Sobel orientations in ``orient_bins`` bins
  (default 9), magnitude-weighted, in a ``grid x grid`` layout of cells (default 4x4 = 144 bins).

Each block is normalised to sum 1 and square-rooted (Hellinger kernel, so an inner product of two
vectors is a Bhattacharyya similarity per block); the blocks are weighted (``colour_weight``,
``gradient_weight``) and the concatenation is L2-normalised: the inner product of two embeddings
is a cosine similarity in [0, 1]. Dimension: 128 + 144 = 272 with the defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from ..config import rng


@dataclass
class ClassicalEmbedderConfig:
    size: int = field(default=64, metadata=rng(8))  # side the patch is resized to
    h_bins: int = field(default=8, metadata=rng(1))
    s_bins: int = field(default=4, metadata=rng(1))
    v_bins: int = field(default=4, metadata=rng(1))
    orient_bins: int = field(default=9, metadata=rng(1))
    grid: int = field(default=4, metadata=rng(1))
    # pixels less saturated than this (0-255) all fall in hue bin 0
    grey_saturation: int = field(default=40, metadata=rng(0, 255))
    colour_weight: float = field(default=1.0, metadata=rng(0))
    gradient_weight: float = field(default=1.0, metadata=rng(0))


class ClassicalEmbedder:
    """``embed_images(images, masks=None) -> float32 [N, D]``, rows L2-normalised."""

    version = 1

    def __init__(self, config: ClassicalEmbedderConfig | None = None, **kwargs):
        self.config = config or ClassicalEmbedderConfig(**kwargs)
        c = self.config
        self.dim = c.h_bins * c.s_bins * c.v_bins + c.orient_bins * c.grid * c.grid

    def describe(self) -> dict:
        return {"type": "classical", "version": self.version, "dim": self.dim, **asdict(self.config)}

    def embed_images(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        out = np.zeros((len(images), self.dim), np.float32)
        for i, img in enumerate(images):
            out[i] = self.embed_one(img, None if masks is None else masks[i])
        return out

    def embed_one(self, rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        c = self.config
        s = c.size
        img = cv2.resize(rgb, (s, s), interpolation=cv2.INTER_AREA)
        if mask is None:
            w = np.ones((s, s), np.float32)
        else:
            w = cv2.resize((mask > 0).astype(np.float32), (s, s), interpolation=cv2.INTER_AREA)
        if w.sum() <= 0:
            w = np.ones((s, s), np.float32)

        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # H in [0, 180)
        hi = np.minimum(hsv[..., 0].astype(np.int32) * c.h_bins // 180, c.h_bins - 1)
        hi[hsv[..., 1] < c.grey_saturation] = 0  # hue is noise where there is no colour
        si = np.minimum(hsv[..., 1].astype(np.int32) * c.s_bins // 256, c.s_bins - 1)
        vi = np.minimum(hsv[..., 2].astype(np.int32) * c.v_bins // 256, c.v_bins - 1)
        idx = (hi * c.s_bins + si) * c.v_bins + vi
        colour = np.bincount(idx.ravel(), weights=w.ravel(), minlength=c.h_bins * c.s_bins * c.v_bins)

        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
        gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
        mag = np.sqrt(gx * gx + gy * gy) * w
        ang = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned orientation
        oi = np.minimum((ang / np.pi * c.orient_bins).astype(np.int32), c.orient_bins - 1)
        cell = np.arange(s) * c.grid // s
        ci = cell[:, None] * c.grid + cell[None, :]
        gidx = ci * c.orient_bins + oi
        grad = np.bincount(gidx.ravel(), weights=mag.ravel(), minlength=c.orient_bins * c.grid * c.grid)

        blocks = []
        for hist, weight in ((colour, c.colour_weight), (grad, c.gradient_weight)):
            total = hist.sum()
            blocks.append(np.sqrt(hist / total) * weight if total > 0 else hist)
        v = np.concatenate(blocks).astype(np.float32)
        n = np.linalg.norm(v)
        return v / n if n > 0 else v
