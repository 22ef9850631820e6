"""Image bytes in and out: the hot path of every CPU stage.

JPEG goes through simplejpeg (libjpeg-turbo, the fastest codec measured on these machines), PNG through
OpenCV. Images are RGB ``uint8`` arrays ``[H, W, 3]``; masks are ``uint8`` ``[H, W]`` (0 or 255 / ids).

Pixel limit: every decode here reads the image's width and height from its header first (JPEG through
libjpeg-turbo's header parser, PNG from IHDR, anything else through PIL, none of which decodes pixels) and
refuses an image of more than :func:`pixel_limit` pixels with :class:`ImageTooLarge`, a
:class:`~instructdiffusion_data.errors.RecordError` (the row goes to ``rejected/`` with the reason
``image too large``), so that a header claiming 30000 x 30000 costs microseconds, not 2.6 GB and seconds.
The limit is :data:`MAX_PIXELS` (64 Mpx), the environment variable ``IDD_MAX_PIXELS`` (a number such as
``100000000`` or ``1e8``, or ``WIDTHxHEIGHT``; 0 disables it) or the ``max_pixels`` argument of a call, in
increasing precedence. ``PIL.Image.MAX_IMAGE_PIXELS`` is set to the same limit.
"""

from __future__ import annotations

import os
import struct
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from .errors import ConfigError, RecordError

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
        raise RecordError("image file unreadable", file=str(p), record=record, error=str(e.strerror or e)) from None


MAX_PIXELS = 8000 * 8000  # default limit (64 Mpx, ~190 MB as RGB); $IDD_MAX_PIXELS or max_pixels= override it
MAX_PIXELS_ENV = "IDD_MAX_PIXELS"


class ImageTooLarge(RecordError):
    """An image whose header declares more pixels than the limit; raised before any pixel is decoded.

    ``reason`` (the drop class) is ``image too large``; ``width``, ``height`` and ``max_pixels`` are keyword
    details of the drop; the message reads ``image too large (WxH = N pixels > limit L pixels, ...)``."""

    def __init__(self, width: int | None, height: int | None, limit: int, *, file: str | None = None,
                 record: str | None = None):
        super().__init__("image too large", file=file, record=record, width=width, height=height, max_pixels=limit)
        self.width, self.height, self.limit = width, height, limit
        size = f"{width}x{height} = {width * height} pixels" if width and height else "more pixels"
        detail = [f"{size} > limit {limit} pixels, {MAX_PIXELS_ENV}"]
        detail += [f"{k}={v}" for k, v in (("file", file), ("record", record)) if v]
        self.args = (f"image too large ({', '.join(detail)})",)

    def __reduce__(self):  # pickles across Ray workers with its fields
        return _image_too_large, (self.width, self.height, self.limit, self.file, self.record)


def _image_too_large(width, height, limit, file, record) -> ImageTooLarge:
    return ImageTooLarge(width, height, limit, file=file, record=record)


def pixel_limit(override: int | None = None) -> int | None:
    """The pixel limit in force: ``override``, else ``$IDD_MAX_PIXELS``, else :data:`MAX_PIXELS`; None: no
    limit (a value of 0 or less disables it)."""
    if override is not None:
        return int(override) if override > 0 else None
    env = os.environ.get(MAX_PIXELS_ENV)
    if env is None or not env.strip():
        limit = MAX_PIXELS if MAX_PIXELS and MAX_PIXELS > 0 else None
    else:
        limit = _parse_limit(env)
    if Image.MAX_IMAGE_PIXELS != limit:  # the variable changed since import: PIL follows
        Image.MAX_IMAGE_PIXELS = limit
    return limit


def _parse_limit(text: str) -> int | None:
    t = text.strip().lower().replace("_", "")
    try:
        if "x" in t:
            w, h = t.split("x")
            value = int(w) * int(h)
        else:
            value = int(float(t))
    except ValueError:
        raise ConfigError(f"{MAX_PIXELS_ENV}={text!r}: expected a pixel count (64000000, 6.4e7) "
                          "or WIDTHxHEIGHT (8000x8000); 0 disables the limit") from None
    return value if value > 0 else None


def set_max_pixels(limit: int | None) -> None:
    """Change the module default (None or 0: no limit) and ``PIL.Image.MAX_IMAGE_PIXELS`` with it."""
    global MAX_PIXELS
    MAX_PIXELS = int(limit) if limit and limit > 0 else 0
    _sync_pil()


def _sync_pil() -> None:
    # PIL warns above MAX_IMAGE_PIXELS and refuses above twice it: readers that take sizes through PIL
    # (Image.open) follow the same limit as the decoders here.
    try:
        Image.MAX_IMAGE_PIXELS = pixel_limit()
    except ConfigError:
        pass  # the first decode reports it, naming the variable


class _PilRefused(Exception):
    """PIL refused to open the header: more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` pixels."""


def _header_size(data: bytes) -> tuple[int, int] | None:
    if data[:2] == JPEG_MAGIC:
        try:
            h, w = simplejpeg.decode_jpeg_header(data)[:2]
            return int(w), int(h)
        except (ValueError, TypeError):
            pass  # PIL parses the markers itself
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    try:
        with Image.open(BytesIO(data)) as im:
            return int(im.width), int(im.height)
    except Image.DecompressionBombError:
        raise _PilRefused from None
    except Exception:  # noqa: BLE001 - PIL raises many types for bytes it cannot identify
        return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the header of JPEG/PNG/WebP/other bytes without decoding any pixel; None when
    the header cannot be read (or PIL refuses it as a decompression bomb)."""
    try:
        return _header_size(data)
    except _PilRefused:
        return None


def _check(data: bytes, limit: int | None, file: str | None, record: str | None) -> tuple[int, int] | None:
    if limit is None or not data:
        return None
    try:
        size = _header_size(data)
    except _PilRefused:
        pil = Image.MAX_IMAGE_PIXELS
        if pil is not None and 2 * pil <= limit:
            return None  # a larger limit than PIL's: the decoder decides, the result is checked
        raise ImageTooLarge(None, None, limit, file=file, record=record) from None
    if size is not None and size[0] * size[1] > limit:
        raise ImageTooLarge(size[0], size[1], limit, file=file, record=record)
    return size


def check_pixels(data: bytes, *, file: str | None = None, record: str | None = None,
                 max_pixels: int | None = None) -> tuple[int, int] | None:
    """Raise :class:`ImageTooLarge` when the header of ``data`` declares more pixels than the limit
    (:func:`pixel_limit`); returns ``(width, height)``, or None when the header is unreadable or there
    is no limit. Nothing is decoded."""
    return _check(data, pixel_limit(max_pixels), file, record)


def _check_decoded(arr: np.ndarray, limit: int | None, file: str | None, record: str | None) -> None:
    # a format whose header could not be read first: refuse the decoded result all the same
    if limit is not None and arr.shape[0] * arr.shape[1] > limit:
        raise ImageTooLarge(arr.shape[1], arr.shape[0], limit, file=file, record=record)


def decode(data: bytes, *, file: str | None = None, record: str | None = None,
           max_pixels: int | None = None) -> np.ndarray:
    """Decode JPEG/PNG/other bytes to RGB uint8; a corrupt image raises RecordError, one with more pixels
    than the limit :class:`ImageTooLarge` (before decoding)."""
    if not data:
        raise RecordError("image is empty", file=file, record=record)
    limit = pixel_limit(max_pixels)
    known = _check(data, limit, file, record)
    try:
        if data[:2] == JPEG_MAGIC:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except (ValueError, cv2.error):
        arr = None
    if arr is None:
        raise RecordError("image is corrupt or not an image", file=file, record=record)
    if known is None:
        _check_decoded(arr, limit, file, record)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def decode_unchanged(data: bytes, *, file: str | None = None, record: str | None = None,
                     max_pixels: int | None = None, what: str = "image") -> np.ndarray:
    """Decode with ``cv2.IMREAD_UNCHANGED`` (16-bit, alpha, palette indices kept) behind the same pixel
    limit; corrupt bytes raise RecordError ``<what> is corrupt``."""
    limit = pixel_limit(max_pixels)
    known = _check(data, limit, file, record)
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    except cv2.error:
        arr = None
    if arr is None:
        raise RecordError(f"{what} is corrupt", file=file, record=record)
    if known is None:
        _check_decoded(arr, limit, file, record)
    return arr


def decode_gray(data: bytes, *, file: str | None = None, record: str | None = None,
                max_pixels: int | None = None) -> np.ndarray:
    """Decode a PNG (label map, mask) without colour conversion; returns [H, W] uint8."""
    arr = decode_unchanged(data, file=file, record=record, max_pixels=max_pixels, what="mask image")
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr


_sync_pil()


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
    # down to half size, bilinear weights every source pixel (4x faster than area averaging at the usual
    # 640 -> 512); below half, area averaging avoids the aliasing bilinear would bring
    interp = cv2.INTER_LINEAR if scale >= 0.5 else cv2.INTER_AREA
    return cv2.resize(rgb, size, interpolation=interp)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    if mask.shape[:2] == (h, w):
        return mask
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
