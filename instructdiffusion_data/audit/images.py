"""Image members read straight out of the tars by the sidecar offsets, thumbnails and their disk cache.

Nothing is extracted: ``tar_bytes[offset:offset + size]`` is the member (writer.py). A thumbnail is keyed by
the tar's path, the member's offset and size, the tar's mtime (a rewritten shard never serves a stale
thumbnail), the kind and the size, and stored as a small file under the cache folder.

An image that cannot be shown (corrupt, or more pixels than the decoders' limit, :mod:`..imageio`) is an
error tile, and that verdict is cached like a thumbnail (a ``.err`` file beside them, and in memory), so a
repeated request for it decodes nothing; so is the check of a full-size member.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
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


def tile_word(message: str) -> str:
    """The word an error tile shows for a member error."""
    m = message.lower()
    for word in ("too large", "truncated", "no such member", "not an image", "unreadable", "empty"):
        if word in m:
            return word
    return "corrupt"


@lru_cache(maxsize=16)
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
        self._verdicts: OrderedDict[str, str | None] = OrderedDict()  # cache id -> error message (None: fine)
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

    def _id(self, tar: Path, offset: int, size: int, kind: str) -> str:
        try:
            mtime = tar.stat().st_mtime_ns
        except OSError:
            mtime = 0
        return hashlib.sha1(f"{tar}\0{offset}\0{size}\0{mtime}\0{kind}\0{self.max_side}".encode()).hexdigest()

    def _path(self, tar: Path, offset: int, size: int, kind: str) -> Path:
        h = self._id(tar, offset, size, kind)
        return self.folder / h[:2] / f"{h}.{'jpg' if kind == 'image' else 'png'}"

    # -- verdicts: members known to be unshowable (thumbnails) or checked (full size) -----------------
    MAX_VERDICTS = 20_000

    def _verdict(self, ident: str) -> tuple[bool, str | None]:
        """(known, error message or None) from memory, then from an ``.err`` file in the cache folder."""
        with self._lock:
            if ident in self._verdicts:
                self._verdicts.move_to_end(ident)
                return True, self._verdicts[ident]
        if self.folder is not None:
            try:
                msg = (self.folder / ident[:2] / f"{ident}.err").read_text(errors="replace")
            except OSError:
                return False, None
            self._remember(ident, msg, disk=False)
            return True, msg
        return False, None

    def _remember(self, ident: str, error: str | None, disk: bool = True) -> None:
        with self._lock:
            self._verdicts[ident] = error
            self._verdicts.move_to_end(ident)
            while len(self._verdicts) > self.MAX_VERDICTS:
                self._verdicts.popitem(last=False)
        if error is not None and disk and self.folder is not None:
            path = self.folder / ident[:2] / f"{ident}.err"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_text(error[:500])
                os.replace(tmp, path)
            except OSError as e:  # a read-only cache folder still has the memory verdict
                log.debug("cannot cache the error of %s: %s", ident, e)

    def check_full(self, tar: Path, offset: int | None, size: int | None, kind: str, data: bytes) -> None:
        """:func:`validate_image` once per member (the verdict is remembered, keyed like a thumbnail)."""
        ident = self._id(tar, offset or 0, size or 0, f"full-{kind}")
        known, err = self._verdict(ident)
        if not known:
            try:
                validate_image(data, kind)
                err = None
            except MemberError as e:
                err = str(e)
            self._remember(ident, err, disk=False)
        if err is not None:
            raise MemberError(err)

    def cached(self, tar: Path, offset: int | None, size: int | None, kind: str) -> tuple[bytes, str] | None:
        """The cached thumbnail, or None (no decoding here); a member known to be unshowable raises
        MemberError (the error tile is the answer)."""
        if kind not in THUMB_KINDS:
            return None
        ident = self._id(tar, offset or 0, size or 0, kind)
        known, err = self._verdict(ident)
        if known and err is not None:
            self.hits += 1
            raise MemberError(err)
        if self.folder is None:
            return None
        path = self.folder / ident[:2] / f"{ident}.{'jpg' if kind == 'image' else 'png'}"
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
        hit = self.cached(tar, offset, size, kind)  # raises MemberError for a member known to be unshowable
        if hit is not None:
            return hit
        path = self._path(tar, offset or 0, size or 0, kind) if self.folder else None
        self.misses += 1
        member = read_member(tar, offset, size)
        try:
            data, media = make_thumbnail(member, kind, self.max_side)
        except MemberError as e:  # corrupt or too large: remembered, never decoded again
            self._remember(self._id(tar, offset or 0, size or 0, kind), str(e))
            raise
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            self._account(len(data))
        return data, media
