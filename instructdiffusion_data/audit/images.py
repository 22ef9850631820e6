"""Image members read straight out of the tars by the sidecar offsets, thumbnails and their disk cache.

Nothing is extracted: ``tar_bytes[offset:offset + size]`` is the member (writer.py). A thumbnail is keyed by
the tar's path, the member's offset and size, the tar's mtime (a rewritten shard never serves a stale
thumbnail), the kind and the size, and stored as a small file under the cache folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ..errors import RecordError
from ..imageio import decode, decode_gray, encode_jpeg, encode_png, sniff_ext

log = logging.getLogger(__name__)

MEDIA = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
THUMB_KINDS = ("image", "mask", "overlay")


class MemberError(Exception):
    """A member cannot be read or decoded (truncated tar, corrupt bytes)."""


def read_member(tar: Path, offset: int | None, size: int | None) -> bytes:
    if offset is None or size is None or size <= 0 or offset < 0:
        raise MemberError("no such member")
    try:
        with open(tar, "rb") as fh:
            fh.seek(int(offset))
            data = fh.read(int(size))
    except OSError as e:
        raise MemberError(f"tar unreadable ({e.strerror})") from None
    if len(data) != size:
        raise MemberError(f"member truncated ({len(data)} of {size} bytes)")
    return data


def check_image(data: bytes) -> str:
    """The media type of complete image bytes; corrupt or unknown bytes raise MemberError."""
    ext = sniff_ext(data)
    if ext not in MEDIA:
        raise MemberError("member is not an image")
    if ext == "jpg" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise MemberError("JPEG member is truncated")
    return MEDIA[ext]


def validate_image(data: bytes, kind: str) -> None:
    """Decode once so that a corrupt member becomes an error tile rather than a broken image."""
    try:
        (decode_gray if kind == "mask" else decode)(data)
    except RecordError as e:
        raise MemberError(str(e)) from None


def _fit(arr: np.ndarray, max_side: int, interp: int) -> np.ndarray:
    h, w = arr.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return arr
    return cv2.resize(arr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp)


def make_thumbnail(data: bytes, kind: str, max_side: int) -> tuple[bytes, str]:
    try:
        if kind == "image":
            rgb = decode(data)
            return encode_jpeg(_fit(rgb, max_side, cv2.INTER_AREA), quality=85), "image/jpeg"
        mask = decode_gray(data)
        mask = _fit(mask, max_side, cv2.INTER_NEAREST)
        if kind == "mask":
            return encode_png(mask), "image/png"
        rgba = np.zeros(mask.shape + (4,), np.uint8)  # red, half transparent where the mask is set
        rgba[..., 0] = 255
        rgba[..., 3] = np.where(mask > 0, 140, 0).astype(np.uint8)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
        if not ok:
            raise MemberError("PNG encoding failed")
        return buf.tobytes(), "image/png"
    except RecordError as e:
        raise MemberError(str(e)) from None


@lru_cache(maxsize=8)
def error_tile(message: str = "corrupt", side: int = 160) -> bytes:
    """A grey tile with a red cross and a word: what the page shows for an unreadable member."""
    tile = np.full((side, side, 3), 60, np.uint8)
    cv2.line(tile, (12, 12), (side - 12, side - 12), (200, 40, 40), 3)
    cv2.line(tile, (side - 12, 12), (12, side - 12), (200, 40, 40), 3)
    word = "".join(c for c in message[:14] if 32 <= ord(c) < 127)
    cv2.putText(tile, word, (8, side // 2 + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return encode_png(tile)


class ThumbCache:
    """Thumbnails on disk under ``folder`` (None: no cache, every thumbnail is decoded again).

    The folder is kept under ``max_bytes``: past it, the least recently used thumbnails (a hit touches
    its file) are deleted down to 80% of the limit."""

    def __init__(self, folder: str | os.PathLike | None, max_side: int = 256, max_bytes: int = 2 << 30):
        self.folder = Path(folder) if folder else None
        self.max_side = max_side
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._bytes: int | None = None  # counted on the first write
        self._lock = threading.Lock()
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def _files(self) -> list[tuple[float, int, Path]]:
        out = []
        for sub in os.scandir(self.folder):
            if sub.is_dir():
                for f in os.scandir(sub.path):
                    if f.is_file() and not f.name.endswith(".tmp"):
                        st = f.stat()
                        out.append((st.st_mtime, st.st_size, Path(f.path)))
        return out

    def _account(self, added: int) -> None:
        with self._lock:
            if self._bytes is None:
                self._bytes = sum(size for _, size, _ in self._files())
            else:
                self._bytes += added
            if self._bytes <= self.max_bytes:
                return
            files = sorted(self._files())
            total = sum(size for _, size, _ in files)
            for _, size, path in files:
                if total <= 0.8 * self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size
            self._bytes = total
            log.info("thumbnail cache pruned to %.1f MiB", total / 2**20)

    def _path(self, tar: Path, offset: int, size: int, kind: str) -> Path:
        try:
            mtime = tar.stat().st_mtime_ns
        except OSError:
            mtime = 0
        h = hashlib.sha1(f"{tar}\0{offset}\0{size}\0{mtime}\0{kind}\0{self.max_side}".encode()).hexdigest()
        return self.folder / h[:2] / f"{h}.{'jpg' if kind == 'image' else 'png'}"

    def cached(self, tar: Path, offset: int | None, size: int | None, kind: str) -> tuple[bytes, str] | None:
        """The cached thumbnail, or None (no decoding here)."""
        if self.folder is None or kind not in THUMB_KINDS:
            return None
        path = self._path(tar, offset or 0, size or 0, kind)
        try:
            data = path.read_bytes()
            os.utime(path)  # recently used: pruned last
        except OSError:
            return None
        self.hits += 1
        return data, "image/jpeg" if kind == "image" else "image/png"

    def get(self, tar: Path, offset: int | None, size: int | None, kind: str) -> tuple[bytes, str]:
        """Thumbnail bytes and media type; raises MemberError for an unreadable member."""
        if kind not in THUMB_KINDS:
            raise ValueError(kind)
        media = "image/jpeg" if kind == "image" else "image/png"
        path = self._path(tar, offset or 0, size or 0, kind) if self.folder else None
        if path is not None:
            hit = self.cached(tar, offset, size, kind)
            if hit is not None:
                return hit
        self.misses += 1
        data, media = make_thumbnail(read_member(tar, offset, size), kind, self.max_side)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            self._account(len(data))
        return data, media
