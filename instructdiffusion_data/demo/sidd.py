"""Demo SIDD (Medium, sRGB): ``sidd/SIDD_Medium_Srgb/Data/<scene>/<n>_{NOISY,GT}_SRGB_01{0,1}.PNG`` with
signal-dependent (Poisson-Gaussian) noise whose strength follows the ISO in the scene name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _degrade as deg
from . import _figures as fig

PHONES = ["GP", "IP", "S6", "N6", "G4"]
H, W = 288, 384


def generate(out: Path, n: int, seed: int) -> dict:
    root = Path(out) / "sidd" / "SIDD_Medium_Srgb" / "Data"
    rng = np.random.default_rng([seed, 203])
    scenes = max(2, n // 8)
    for s in range(scenes):
        iso = int(rng.choice([100, 400, 800, 1600, 3200]))
        light = str(rng.choice(["L", "N", "H"]))
        name = f"{s + 1:04d}_{s % 10 + 1:03d}_{PHONES[s % len(PHONES)]}_{iso:05d}_{int(rng.integers(10, 4000)):05d}_{int(rng.choice([3200, 4400, 5500])):04d}_{light}"
        gt = fig.textured(rng, H, W)
        shot = 0.0004 * iso / 100
        for cap in ("010", "011"):
            noisy = deg.sensor_noise(gt, rng, shot, read=0.01 + 0.002 * iso / 100)
            fig.write_png(root / name / f"{s + 1:04d}_NOISY_SRGB_{cap}.PNG", noisy)
            fig.write_png(root / name / f"{s + 1:04d}_GT_SRGB_{cap}.PNG", gt)
    return {"scenes": scenes, "pairs": 2 * scenes}
