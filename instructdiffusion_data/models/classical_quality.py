"""Weight-free image quality: a documented no-reference score and features for GIQA.

This is the ``weightfree`` profile of the quality filter (docs/quality_filter.md, "Profiles and
models"): no network, no download, real measurements. Every measurement runs on the image brought
down to a working size (longer side at most ``work_side`` px, default 512; smaller images are not
upsampled, which would invent blur), so that big images cost the same.

Measurements (each mapped to a sub-score in [0, 1], 1 = good):

``sharpness``
    Variance of the Laplacian of the grey image (Pech-Pacheco et al. 2000), less the part white noise
    of the estimated ``sigma`` (below) contributes (``20 sigma^2`` for the 4-neighbour Laplacian), so
    that noise does not pass for detail. Sub-score ``clip((log10(1 + v) - 1) / 2, 0, 1)``: a variance
    of 10 or less scores 0, 1000 or more scores 1.
``exposure``
    Mean luminance ``m`` in [0, 1] and the fraction ``c`` of clipped pixels (<= 4 or >= 251).
    Sub-score ``(1 - |m - 0.5| / 0.5) * (1 - min(1, 2 c))``.
``colourfulness``
    Hasler and Suesstrunk (2003): ``M = sqrt(s_rg^2 + s_yb^2) + 0.3 sqrt(u_rg^2 + u_yb^2)`` with
    ``rg = R - G`` and ``yb = (R + G) / 2 - B``. Grey images give 0, "quite colourful" is ~45.
    Sub-score ``min(1, M / 45)``.
``noise``
    Immerkaer's fast noise estimate (1996): the image convolved with the 3x3 Laplacian-difference
    kernel ``[[1,-2,1],[-2,4,-2],[1,-2,1]]``; ``sigma = sqrt(pi/2) * mean(|conv|) / 6``, computed over the
    flattest half of the pixels (gradient magnitude of the Gaussian-smoothed image, sigma 2, below its
    median) so that texture and edges do not count as noise. Sub-score ``1 - min(1, sigma / 12)``.
``blockiness``
    JPEG 8x8 blocking: the mean absolute horizontal and vertical differences across block boundaries
    divided by those inside blocks (Wang, Bovik and Evans 2000, simplified). 1 means no blocking.
    Sub-score ``1 - clip(B - 1, 0, 1)``.

The combined score is ``10 * sum(w_i * s_i)`` with weights sharpness 0.35, noise 0.25,
exposure 0.15, blockiness 0.15, colourfulness 0.1: a 0-10 scale like LAION's aesthetic predictor's, but
it measures technical quality, not taste; its thresholds are its own.

:func:`features` gives the weight-free GIQA feature vector (``classical/1``): a joint HSV colour
histogram (8x4x4), a 2x2-grid gradient orientation histogram (8 bins per cell, magnitude weighted), a
gradient magnitude histogram (8 log bins) and the five sub-scores; each block square-rooted (Hellinger)
and the whole vector L2-normalised, 173 dimensions.

:func:`region_features` (``classical-hog/1``) describes an object region for the replacement check:
a HOG-like 4x4 grid of 8-bin gradient orientation histograms (magnitude weighted) of the region
brought to 64x64, square-rooted and L2-normalised (128-d). It is gradient-only on purpose: Poisson
blending (the weight-free replacement) keeps the reference's gradients but shifts its colours.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from ..errors import RecordError

FEATURE_ID = "classical/1"
FEATURE_DIM = 128 + 32 + 8 + 5  # colour + orientation + magnitude + sub-scores
WEIGHTS = {"sharpness": 0.35, "exposure": 0.15, "colourfulness": 0.1, "noise": 0.25, "blockiness": 0.15}

_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


@dataclass
class Measurements:
    laplacian_var: float
    mean_luma: float
    clipped: float
    colourfulness: float
    noise_sigma: float
    blockiness: float

    def subscores(self) -> dict[str, float]:
        v = max(0.0, self.laplacian_var - 20.0 * self.noise_sigma**2)
        sharp = float(np.clip((math.log10(1.0 + v) - 1.0) / 2.0, 0.0, 1.0))
        expo = (1.0 - abs(self.mean_luma - 0.5) / 0.5) * (1.0 - min(1.0, 2.0 * self.clipped))
        colour = min(1.0, self.colourfulness / 45.0)
        noise = 1.0 - min(1.0, self.noise_sigma / 12.0)
        block = 1.0 - float(np.clip(self.blockiness - 1.0, 0.0, 1.0))
        return {"sharpness": sharp, "exposure": float(expo), "colourfulness": float(colour),
                "noise": float(noise), "blockiness": block}

    def score(self) -> float:
        subs = self.subscores()
        return float(10.0 * sum(WEIGHTS[k] * subs[k] for k in WEIGHTS))

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def working_image(rgb: np.ndarray, work_side: int = 512) -> np.ndarray:
    """``rgb`` brought down (area interpolation) to ``work_side`` on its longer side; smaller images
    are measured as they are (upsampling would invent blur)."""
    h, w = rgb.shape[:2]
    s = work_side / max(h, w)
    if s >= 1.0:
        return rgb
    size = (max(8, round(w * s)), max(8, round(h * s)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _blockiness(gray: np.ndarray) -> float:
    """Ratio of mean |difference| across 8-px block boundaries to inside blocks (1 = no blocking)."""
    h, w = gray.shape
    if h < 16 or w < 16:
        return 1.0
    dh = cv2.absdiff(gray[:, 1:], gray[:, :-1])  # dh[:, j] = |g[:, j+1] - g[:, j]|
    dv = cv2.absdiff(gray[1:, :], gray[:-1, :])
    bh, bv = dh[:, 7::8], dv[7::8, :]
    b_sum = float(bh.sum()) + float(bv.sum())
    b_n = bh.size + bv.size
    across = b_sum / b_n
    inside = (float(dh.sum()) + float(dv.sum()) - b_sum) / (dh.size + dv.size - b_n)
    return float((across + 1e-3) / (inside + 1e-3))


def measure(rgb: np.ndarray, work_side: int = 512) -> Measurements:
    """All classical measurements of one RGB uint8 image (at least 3x3 pixels)."""
    if min(rgb.shape[:2]) < 3:
        raise RecordError("image too small to score", size=f"{rgb.shape[1]}x{rgb.shape[0]}", minimum="3x3")
    img = working_image(np.ascontiguousarray(rgb), work_side)
    gray8 = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    gray = gray8.astype(np.float32)
    lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=1)
    _, lap_sd = cv2.meanStdDev(lap)
    r, g, b = (c.astype(np.float32) for c in cv2.split(img))
    rg = r - g
    yb = 0.5 * (r + g) - b
    (m_rg,), (s_rg,) = (v.ravel() for v in cv2.meanStdDev(rg))
    (m_yb,), (s_yb,) = (v.ravel() for v in cv2.meanStdDev(yb))
    colourful = math.sqrt(s_rg ** 2 + s_yb ** 2) + 0.3 * math.sqrt(m_rg ** 2 + m_yb ** 2)
    # noise over the flattest half of the image
    conv = cv2.absdiff(cv2.filter2D(gray, cv2.CV_32F, _IMMERKAER, borderType=cv2.BORDER_REFLECT), 0)[1:-1, 1:-1]
    smooth = cv2.GaussianBlur(gray, (0, 0), 2.0)  # structure without the noise picks the flat half
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)[1:-1, 1:-1]
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)[1:-1, 1:-1]
    mag = cv2.magnitude(gx, gy)
    flat = (mag <= np.median(mag[::3, ::3])).astype(np.uint8)  # median of a 1/9 sample: the same cut, cheaper
    mean_abs = cv2.mean(conv, mask=flat)[0] if flat.any() else float(conv.mean())
    sigma = math.sqrt(math.pi / 2.0) * float(mean_abs) / 6.0
    hist = np.bincount(gray8.ravel(), minlength=256)
    clipped = float(hist[:5].sum() + hist[251:].sum()) / gray8.size
    return Measurements(
        laplacian_var=float(lap_sd[0, 0]) ** 2,
        mean_luma=float(cv2.mean(gray8)[0] / 255.0),
        clipped=clipped,
        colourfulness=float(colourful),
        noise_sigma=sigma,
        blockiness=_blockiness(gray),
    )


def quality_score(rgb: np.ndarray, work_side: int = 512) -> float:
    """The weight-free no-reference quality score of one image, 0 (bad) to 10 (good)."""
    return measure(rgb, work_side).score()


def features(rgb: np.ndarray, work_side: int = 256) -> np.ndarray:
    """Weight-free GIQA features (``classical/1``), float32 [FEATURE_DIM], L2-normalised."""
    img = working_image(np.ascontiguousarray(rgb), work_side)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    colour = cv2.calcHist([hsv], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    mag, ang = cv2.cartToPolar(gx, gy)
    obin = np.minimum((ang % np.pi) / np.pi * 8, 7).astype(np.int64)
    h, w = gray.shape
    orient = []
    for cy in range(2):
        for cx in range(2):
            sl = (slice(cy * h // 2, (cy + 1) * h // 2), slice(cx * w // 2, (cx + 1) * w // 2))
            orient.append(np.bincount(obin[sl].ravel(), weights=mag[sl].ravel(), minlength=8))
    orient_v = np.concatenate(orient)
    mbins = np.clip(np.log2(1.0 + mag.ravel()).astype(np.int64), 0, 7)
    magh = np.bincount(mbins, minlength=8)[:8].astype(np.float64)
    subs = measure(img, work_side).subscores()

    def block(v: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(v.astype(np.float64), 0) / max(float(v.sum()), 1e-12))

    vec = np.concatenate([
        block(colour),
        block(orient_v),
        block(magh),
        np.array([subs[k] for k in WEIGHTS], np.float64) * 0.5,
    ]).astype(np.float32)
    n = float(np.linalg.norm(vec))
    return vec / n if n > 0 else vec


REGION_FEATURE_ID = "classical-hog/1"


def region_features(rgb: np.ndarray, size: int = 64, cells: int = 4) -> np.ndarray:
    """Weight-free region descriptor (``classical-hog/1``), float32 [cells*cells*8], L2-normalised."""
    g = cv2.cvtColor(cv2.resize(np.ascontiguousarray(rgb), (size, size), interpolation=cv2.INTER_AREA),
                     cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    mag, ang = cv2.cartToPolar(gx, gy)
    obin = np.minimum((ang % np.pi) / np.pi * 8, 7).astype(np.int64)
    step = size // cells
    hist = []
    for cy in range(cells):
        for cx in range(cells):
            sl = (slice(cy * step, (cy + 1) * step), slice(cx * step, (cx + 1) * step))
            hist.append(np.bincount(obin[sl].ravel(), weights=mag[sl].ravel(), minlength=8))
    v = np.sqrt(np.concatenate(hist)).astype(np.float32)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v
