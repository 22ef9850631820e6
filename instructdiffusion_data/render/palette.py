"""Named colours for keypoint circles and segmentation masks (names appear in instructions)."""

from __future__ import annotations

import numpy as np

# Saturated, mutually distinct colours whose names people use without hesitation.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "orange": (255, 128, 0),
    "purple": (128, 0, 255),
    "pink": (255, 105, 180),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "brown": (139, 69, 19),
}


def names(subset: list[str] | None = None) -> list[str]:
    if subset:
        unknown = [c for c in subset if c not in PALETTE]
        if unknown:
            from ..errors import ConfigError

            raise ConfigError(f"colors: unknown colour {unknown[0]!r} (known: {', '.join(PALETTE)})")
        return list(subset)
    return list(PALETTE)


def rgb(name: str) -> np.ndarray:
    return np.array(PALETTE[name], dtype=np.float32)
