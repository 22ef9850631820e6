"""What a gallery patch is: the RGBA crop of a region (alpha = its mask) with context around it,
its PNG encoding, and the embedder that maps patches to vectors (classical or CLIP). Used by the
gallery build's shard workers, the read-only :class:`~.gallery_read.Gallery` and the
``retrieve_reference`` stage. The embedding of a patch sees the region only: for CLIP the pixels
outside the mask are set to mid-grey; the classical embedder weights its histograms by the mask."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from ..errors import RecordError
from ..imageio import decode, read_bytes
from .regions import mask_bbox, region_mask


@dataclass
class EmbedderConfig:
    type: Literal["classical", "clip"] = "classical"
    # clip (open_clip): an architecture name with a pretrained tag ("ViT-L-14" + "openai") or a local
    # checkpoint file; model_config registers a custom architecture JSON first
    model_name: str = "ViT-L-14"
    pretrained: str | None = "openai"
    model_config: str | None = None
    device: str | None = None  # None: cuda when available
    batch_size: int = 64
    background: int = 127  # grey value outside the mask for CLIP inputs


@dataclass
class PatchConfig:
    context: float = 0.1  # fraction of the region's bbox added on each side of the crop
    max_side: int = 224  # stored patches are downscaled to at most this longer side
    min_side: int = 12  # regions whose bbox is smaller than this (pixels) are rejected


class PatchEmbedder:
    """Embeds RGBA patches (alpha = region mask) with the configured model."""

    def __init__(self, cfg: EmbedderConfig):
        self.cfg = cfg
        if cfg.type == "classical":
            from ..models.embed_classical import ClassicalEmbedder

            self.model = ClassicalEmbedder()
        else:
            from ..models.clip import ClipEmbedder

            self.model = ClipEmbedder(cfg.model_name, cfg.pretrained, cfg.device, model_config=cfg.model_config,
                                      batch_size=cfg.batch_size)
        self.dim = int(self.model.dim)

    def describe(self) -> dict:
        if self.cfg.type == "classical":
            return self.model.describe()
        return {"type": "clip", "model_id": self.model.model_id, "dim": self.dim, "background": self.cfg.background}

    def embed_patches(self, patches: Sequence[np.ndarray]) -> np.ndarray:
        if len(patches) == 0:
            return np.zeros((0, self.dim), np.float32)
        rgbs = [p[..., :3] for p in patches]
        alphas = [p[..., 3] if p.shape[-1] == 4 else np.full(p.shape[:2], 255, np.uint8) for p in patches]
        if self.cfg.type == "classical":
            return self.model.embed_images(rgbs, alphas)
        grey = [np.where(a[..., None] > 127, rgb, np.uint8(self.cfg.background)) for rgb, a in zip(rgbs, alphas)]
        return self.model.embed_images(grey)


def make_embedder(cfg: EmbedderConfig | dict) -> PatchEmbedder:
    from ..config import build

    return PatchEmbedder(build(EmbedderConfig, cfg, where="embedder") if isinstance(cfg, dict) else cfg)


# -- patches -----------------------------------------------------------------------------------

def extract_patch(rgb: np.ndarray, mask: np.ndarray, cfg: PatchConfig) -> tuple[np.ndarray, list[int]]:
    """RGBA crop of the region with ``context`` around its bbox, downscaled to ``max_side``;
    returns the patch and the crop box [x, y, w, h] in image pixels."""
    x, y, w, h = mask_bbox(mask)
    if w < cfg.min_side or h < cfg.min_side:
        raise RecordError(f"region smaller than patch.min_side={cfg.min_side}")
    H, W = mask.shape
    cx, cy = round(w * cfg.context), round(h * cfg.context)
    x0, y0, x1, y1 = max(0, x - cx), max(0, y - cy), min(W, x + w + cx), min(H, y + h + cy)
    rgba = np.dstack([rgb[y0:y1, x0:x1], (mask[y0:y1, x0:x1] > 0).astype(np.uint8) * 255])
    scale = min(1.0, cfg.max_side / max(rgba.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(rgba.shape[1] * scale)), max(1, round(rgba.shape[0] * scale)))
        rgba = cv2.resize(rgba, size, interpolation=cv2.INTER_AREA)
        rgba[..., 3] = np.where(rgba[..., 3] >= 128, 255, 0).astype(np.uint8)
    return np.ascontiguousarray(rgba), [x0, y0, x1 - x0, y1 - y0]


def encode_rgba(rgba: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_rgba(data: bytes) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise RecordError("reference patch PNG is corrupt")
    if arr.ndim == 2:
        arr = cv2.cvtColor(arr, cv2.COLOR_GRAY2BGRA)
    elif arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2BGRA)
    return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)


def region_patch(row_meta: dict, cfg: PatchConfig, image: np.ndarray | None = None) -> tuple[np.ndarray, list[int]]:
    """The patch of a region record (its image decoded from ``meta["file"]`` unless given)."""
    if image is None:
        image = decode(read_bytes(row_meta["file"], row_meta.get("record_id")), file=row_meta["file"])
    m = region_mask(row_meta["region"], image.shape[0], image.shape[1])
    return extract_patch(image, m, cfg)

