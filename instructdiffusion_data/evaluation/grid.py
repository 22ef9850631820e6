"""Contact sheets: one row per sample, its images side by side, the instruction and scores under them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TILE = 256
TEXT_H = 28
PAD = 4


@dataclass
class GridRow:
    images: list[np.ndarray]  # RGB uint8, any sizes (fitted into TILE x TILE)
    caption: str  # drawn under the row


def _fit(rgb: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    s = side / max(h, w)
    im = Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
    canvas = np.full((side, side, 3), 255, np.uint8)
    a = np.asarray(im)
    y, x = (side - a.shape[0]) // 2, (side - a.shape[1]) // 2
    canvas[y:y + a.shape[0], x:x + a.shape[1]] = a
    return canvas


def _printable(text: str) -> str:
    """What Pillow's built-in bitmap font can draw (Latin-1; anything else becomes '?')."""
    return " ".join(text.split()).encode("latin-1", "replace").decode("latin-1")


def make_grid(rows: Sequence[GridRow], header: str = "", tile: int = TILE) -> np.ndarray:
    """RGB uint8 sheet: ``header`` on top, then each row's images (fitted to ``tile``) and caption."""
    from PIL import Image, ImageDraw

    cols = max((len(r.images) for r in rows), default=1)
    width = PAD + cols * (tile + PAD)
    height = (TEXT_H if header else 0) + PAD + len(rows) * (tile + TEXT_H + PAD)
    sheet = Image.new("RGB", (width, max(height, TEXT_H)), "white")
    draw = ImageDraw.Draw(sheet)
    y = PAD
    if header:
        draw.text((PAD, PAD), _printable(header)[:200], fill=(0, 0, 0))
        y += TEXT_H
    max_chars = max(16, width // 6)
    for r in rows:
        for i, im in enumerate(r.images):
            sheet.paste(Image.fromarray(_fit(im, tile)), (PAD + i * (tile + PAD), y))
        text = _printable(r.caption)
        text = text if len(text) <= 2 * max_chars else text[:2 * max_chars - 3] + "..."
        draw.text((PAD, y + tile + 2), text[:max_chars], fill=(0, 0, 0))
        if len(text) > max_chars:
            draw.text((PAD, y + tile + 2 + TEXT_H // 2), text[max_chars:], fill=(0, 0, 0))
        y += tile + TEXT_H + PAD
    return np.asarray(sheet)
