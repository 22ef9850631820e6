"""Demo GoPro: ``gopro/GOPRO_Large/{train,test}/<sequence>/{blur,blur_gamma,sharp}/NNNNNN.png``.
Sharp frames are procedural pictures; blurred frames apply a random motion-blur kernel (in linear
light for ``blur_gamma``). One blurred frame has no sharp frame (bad input, kept with its reason)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _degrade as deg
from . import _figures as fig

H, W = 180, 320  # GoPro frames are 1280x720: the same aspect ratio, smaller for the demo


def generate(out: Path, n: int, seed: int) -> dict:
    root = Path(out) / "gopro" / "GOPRO_Large"
    rng = np.random.default_rng([seed, 201])
    pairs = max(4, n // 4)
    seqs = {"train": ["GOPR0372_07_00", "GOPR0374_11_01"], "test": ["GOPR0384_11_00"]}
    count = 0
    per_seq = max(1, pairs // 3)
    for split, names in seqs.items():
        for seq in names:
            for f in range(per_seq):
                sharp = fig.textured(rng, H, W)
                k = deg.motion_kernel(rng)
                name = f"{f + 1:06d}.png"
                fig.write_png(root / split / seq / "blur" / name, deg.motion_blur(sharp, k))
                fig.write_png(root / split / seq / "blur_gamma" / name, deg.motion_blur(sharp, k, gamma=2.2))
                fig.write_png(root / split / seq / "sharp" / name, sharp)
                count += 1
    # a blurred frame whose sharp frame is missing
    seq = root / "train" / seqs["train"][0]
    extra = fig.textured(rng, H, W)
    fig.write_png(seq / "blur" / f"{per_seq + 1:06d}.png", deg.motion_blur(extra, deg.motion_kernel(rng)))
    return {"pairs": count, "missing_sharp": 1}
