"""Demo REDS: ``reds/train/train_blur/<seq>/<frame>.png`` beside ``reds/train/train_sharp/<seq>/<frame>.png``.
One sharp frame has a different size from its blurred frame (bad input, dropped with its reason)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from . import _degrade as deg
from . import _figures as fig

H, W = 180, 320  # REDS frames are 1280x720


def generate(out: Path, n: int, seed: int) -> dict:
    root = Path(out) / "reds" / "train"
    rng = np.random.default_rng([seed, 202])
    pairs = max(4, n // 4)
    seqs = ["000", "001"]
    per_seq = max(2, pairs // len(seqs))
    for seq in seqs:
        base = fig.textured(rng, H + 40, W + 80)
        for f in range(per_seq):
            dx, dy = 4 * f, 2 * f  # a slow pan across the scene, frame to frame
            sharp = np.ascontiguousarray(base[dy:dy + H, dx:dx + W])
            name = f"{f:08d}.png"
            fig.write_png(root / "train_blur" / seq / name, deg.motion_blur(sharp, deg.motion_kernel(rng)))
            if seq == seqs[-1] and f == per_seq - 1:
                sharp = cv2.resize(sharp, (W // 2, H // 2), interpolation=cv2.INTER_AREA)
            fig.write_png(root / "train_sharp" / seq / name, sharp)
    return {"pairs": per_seq * len(seqs), "size_mismatch": 1}
