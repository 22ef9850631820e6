"""Synthetic degradations for the enhancement demo sets: motion blur, signal-dependent noise and
watermarks. Shared by the demo generators; not a generator itself."""

from __future__ import annotations

import cv2
import numpy as np


def motion_kernel(rng: np.random.Generator, size: int | None = None) -> np.ndarray:
    """A random linear motion-blur kernel (length 7-17 px, any angle), normalised to sum 1."""
    size = size or int(rng.integers(7, 18)) | 1
    k = np.zeros((size, size), np.float32)
    k[size // 2, :] = 1.0
    angle = float(rng.uniform(0, 180))
    rot = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), angle, 1.0)
    k = cv2.warpAffine(k, rot, (size, size))
    return k / max(k.sum(), 1e-6)


def motion_blur(rgb: np.ndarray, kernel: np.ndarray, gamma: float | None = None) -> np.ndarray:
    """Blur like averaged video frames; with ``gamma`` the averaging happens in linear light
    (GoPro's ``blur_gamma``)."""
    x = rgb.astype(np.float32) / 255.0
    if gamma:
        x = x ** gamma
    y = cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REFLECT)
    if gamma:
        y = np.clip(y, 0, 1) ** (1.0 / gamma)
    return np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8)


def sensor_noise(rgb: np.ndarray, rng: np.random.Generator, shot: float, read: float) -> np.ndarray:
    """Heteroscedastic (Poisson-Gaussian) noise: variance = shot * x + read^2 with x in [0, 1]."""
    x = rgb.astype(np.float32) / 255.0
    sigma = np.sqrt(shot * x + read * read)
    y = x + rng.standard_normal(x.shape).astype(np.float32) * sigma
    return np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8)


def watermark(rgb: np.ndarray, rng: np.random.Generator, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Alpha-blend a coloured text + logo watermark; returns (watermarked image, mask 0/255)."""
    h, w = rgb.shape[:2]
    layer = np.zeros_like(rgb)
    mask = np.zeros((h, w), np.uint8)
    color = tuple(int(v) for v in rng.integers(0, 256, 3))
    scale = float(rng.uniform(0.6, 1.1)) * w / 320
    thick = max(1, int(round(2 * scale)))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x = int(rng.integers(0, max(1, w - tw - 30)))
    y = int(rng.integers(th + 5, max(th + 6, h - 5)))
    cv2.putText(layer, text, (x + 26, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)
    cv2.putText(mask, text, (x + 26, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
    r = max(6, th // 2 + 2)  # the logo: a ring with a dot left of the text
    cv2.circle(layer, (x + r, y - th // 2), r, color, 2, cv2.LINE_AA)
    cv2.circle(mask, (x + r, y - th // 2), r, 255, 2, cv2.LINE_AA)
    cv2.circle(layer, (x + r, y - th // 2), max(2, r // 3), color, -1, cv2.LINE_AA)
    cv2.circle(mask, (x + r, y - th // 2), max(2, r // 3), 255, -1, cv2.LINE_AA)
    alpha = float(rng.uniform(0.45, 0.75)) * (mask.astype(np.float32) / 255.0)[..., None]
    out = rgb.astype(np.float32) * (1 - alpha) + layer.astype(np.float32) * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), np.where(mask > 0, 255, 0).astype(np.uint8)
