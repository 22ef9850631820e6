"""Image bytes in and out: the hot path of every CPU stage.

JPEG goes through simplejpeg (libjpeg-turbo, the fastest codec measured on these machines), PNG through
OpenCV. Images are RGB ``uint8`` arrays ``[H, W, 3]``; masks are ``uint8`` ``[H, W]`` (0 or 255 / ids).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from .errors import RecordError

cv2.setNumThreads(1)  # Ray runs one task per core; OpenCV's own pool would oversubscribe them
try:  # a corrupt file is reported once, as the row's drop reason, not also by OpenCV on stderr
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
except AttributeError:
    pass

JPEG_MAGIC = b"\xff\xd8"
PNG_MAGIC = b"\x89PNG"


def sniff_ext(data: bytes) -> str:
    if data[:2] == JPEG_MAGIC:
        return "jpg"
    if data[:4] == PNG_MAGIC:
        return "png"
    if data[:4] in (b"RIFF",) and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def read_bytes(path: str | Path, record: str | None = None) -> bytes:
    from . import storage

    p = path if storage.is_uri(path) else Path(path)
    try:
        return storage.read_bytes(p)
    except FileNotFoundError:
        raise RecordError("image file missing", file=str(p), record=record) from None
    except OSError as e:
        raise RecordError(f"image file unreadable ({e.strerror or e})", file=str(p), record=record) from None


def decode(data: bytes, *, file: str | None = None, record: str | None = None) -> np.ndarray:
    """Decode JPEG/PNG/other bytes to RGB uint8; a corrupt image raises RecordError."""
    if not data:
        raise RecordError("image is empty", file=file, record=record)
    try:
        if data[:2] == JPEG_MAGIC:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except (ValueError, cv2.error):
        arr = None
    if arr is None:
        raise RecordError("image is corrupt or not an image", file=file, record=record)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def decode_gray(data: bytes, *, file: str | None = None, record: str | None = None) -> np.ndarray:
    """Decode a PNG (label map, mask) without colour conversion; returns [H, W] uint8."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if arr is None:
        raise RecordError("mask image is corrupt", file=file, record=record)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB", colorsubsampling="444")


def encode_png(arr: np.ndarray, compression: int = 3) -> bytes:
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def encode(rgb: np.ndarray, fmt: str, quality: int = 95) -> bytes:
    if fmt in ("jpg", "jpeg"):
        return encode_jpeg(rgb, quality)
    if fmt == "png":
        return encode_png(rgb)
    raise ValueError(f"unknown image format {fmt!r} (jpg or png)")


def fit_scale(h: int, w: int, max_side: int | None) -> float:
    """Scale factor that brings the longer side down to ``max_side`` (never up)."""
    if not max_side or max(h, w) <= max_side:
        return 1.0
    return max_side / max(h, w)


def resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    if mask.shape[:2] == (h, w):
        return mask
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
