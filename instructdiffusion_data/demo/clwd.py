"""Demo CLWD: ``clwd/{train,test}/{Watermarked_image,Watermark_free_image,Mask}/<id>.{jpg,png}`` with a
coloured text + logo watermark alpha-blended onto procedural pictures, and its mask. One watermarked
image has no watermark-free image (bad input)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _degrade as deg
from . import _figures as fig

WORDS = ["PHOTO", "Studio", "SAMPLE", "(c) demo", "stock", "PREVIEW", "snap", "Copyright"]
SIZE = 256  # CLWD images are 256x256


def generate(out: Path, n: int, seed: int) -> dict:
    root = Path(out) / "clwd"
    rng = np.random.default_rng([seed, 204])
    count = max(4, n // 4)
    n_test = max(1, count // 4)
    for i in range(count):
        split = "test" if i < n_test else "train"
        idx = i + 1 if split == "test" else i - n_test + 1
        clean = fig.textured(rng, SIZE, SIZE)
        marked, mask = deg.watermark(clean, rng, str(rng.choice(WORDS)))
        fig.write_jpg(root / split / "Watermarked_image" / f"{idx}.jpg", marked, 95)
        fig.write_jpg(root / split / "Watermark_free_image" / f"{idx}.jpg", clean, 95)
        fig.write_png(root / split / "Mask" / f"{idx}.png", mask)
    extra = fig.textured(rng, SIZE, SIZE)
    marked, mask = deg.watermark(extra, rng, "orphan")
    fig.write_jpg(root / "train" / "Watermarked_image" / f"{count - n_test + 1}.jpg", marked, 95)
    return {"pairs": count, "missing_free": 1}
