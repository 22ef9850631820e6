"""Paths and object-store URIs behind one small interface (pyarrow.fs).

A *location* is a local path (``shards``, ``/data/out``) or a URI (``s3://bucket/prefix``,
``gs://bucket/prefix``, ``hdfs://...``, ``fsspec+<proto>://...``). The shard writer, the runner's
output bookkeeping and :func:`read_bytes` / :func:`read_text` go through :class:`Location`, so the
same pipeline writes to a laptop folder or to a bucket.

The difference that matters for correctness: local filesystems rename atomically, object stores have
no rename but make each object visible only once its upload is complete. :attr:`Location.atomic_rename`
tells the writer which commit protocol to use (temporary name then rename, or data objects first and
the completion markers last).

S3 settings come from the usual AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``) plus ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for S3-compatible
servers (MinIO, Ceph, moto); a URI may also carry pyarrow's query options, e.g.
``s3://bucket/out?endpoint_override=127.0.0.1:9000&scheme=http``.
"""

from __future__ import annotations

import os
import posixpath
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pyarrow.fs as pafs

from .errors import UserError

LOCAL_SCHEMES = ("", "file")


def is_uri(path: str | os.PathLike | None) -> bool:
    """True for ``scheme://...`` other than ``file://`` (a Windows drive letter is not a scheme)."""
    if path is None or isinstance(path, Path):
        return False
    scheme = urlsplit(str(path)).scheme
    return "://" in str(path) and len(scheme) > 1 and scheme not in LOCAL_SCHEMES


def _s3_from_env(query: dict) -> pafs.S3FileSystem:
    kwargs: dict = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if "endpoint_override" in query:
        kwargs["endpoint_override"] = query["endpoint_override"]
        if "scheme" in query:
            kwargs["scheme"] = query["scheme"]
    elif endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parts.netloc
        kwargs["scheme"] = parts.scheme or "https"
    region = query.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if kwargs.get("endpoint_override"):
        kwargs.setdefault("region", "us-east-1")  # S3-compatible servers ignore it; skip the region lookup
        kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


@lru_cache(maxsize=32)
def _filesystem(scheme: str, query_items: tuple) -> pafs.FileSystem:
    query = dict(query_items)
    if scheme in ("s3", "s3a"):
        return _s3_from_env(query)
    raise AssertionError(scheme)  # other schemes go through pyarrow's from_uri


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URI. Raises UserError for an unusable URI."""
    if not is_uri(path):
        p = str(path)
        if p.startswith("file://"):
            p = urlsplit(p).path
        return pafs.LocalFileSystem(), str(Path(p).absolute())
    parts = urlsplit(str(path))
    if parts.scheme in ("s3", "s3a"):
        query = tuple(sorted(parse_qsl(parts.query)))
        return _filesystem(parts.scheme, query), (parts.netloc + parts.path).rstrip("/")
    try:
        return pafs.FileSystem.from_uri(str(path))
    except (ValueError, OSError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise UserError(f"{path}: cannot open this URI ({e})") from None


def join(base: str | os.PathLike, *parts: str) -> str | Path:
    """``base / part / ...`` for a path (a Path back) or a URI (a URI back, query options kept)."""
    if not is_uri(base):
        return Path(base).joinpath(*parts)
    head, sep, query = str(base).partition("?")
    return "/".join([head.rstrip("/"), *parts]) + (sep + query if sep else "")


class Location:
    """A file or folder on a local disk or an object store, with the few operations the engine needs."""

    def __init__(self, where: str | os.PathLike, _fs: pafs.FileSystem | None = None, _path: str | None = None):
        self.uri = str(where)
        if _fs is None:
            _fs, _path = resolve(where)
        self.fs = _fs
        self.path = _path
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def atomic_rename(self) -> bool:
        return self.local

    def __truediv__(self, name: str) -> "Location":
        return Location(str(join(self.uri, name)), self.fs, posixpath.join(self.path, name))

    def __str__(self) -> str:
        return self.uri.split("?", 1)[0]

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def names(self) -> list[str]:
        """File names directly in this folder (empty when it does not exist)."""
        sel = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as fh:
            return fh.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        with self.fs.open_output_stream(self.path) as fh:
            fh.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def open_write(self):
        """A binary output stream (an object becomes visible when the stream is closed)."""
        return self.fs.open_output_stream(self.path)

    def replace(self, target: "Location") -> None:
        """Rename onto ``target`` (local: ``os.replace``, atomic)."""
        if self.local:
            os.replace(self.path, target.path)
        else:
            self.fs.move(self.path, target.path)

    def delete_file(self) -> None:
        self.fs.delete_file(self.path)

    def dirs(self) -> list[str]:
        """Sub-folder names directly in this folder (empty when it does not exist)."""
        sel = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(sel)
                      if i.type == pafs.FileType.Directory)

    def digest(self) -> tuple[int, str]:
        """``(size, sha256 hex)`` of a file, read in 1 MiB chunks."""
        import hashlib

        sha, n = hashlib.sha256(), 0
        with self.fs.open_input_stream(self.path) as fh:
            while chunk := fh.read(1 << 20):
                sha.update(chunk)
                n += len(chunk)
        return n, sha.hexdigest()

    def facts(self) -> tuple[int, int] | None:
        """``(size, mtime_ns)`` of a file (None when missing): what a shard's input fingerprint uses."""
        info = self._info()
        if info.type != pafs.FileType.File:
            return None
        return int(info.size or 0), int(info.mtime_ns or 0)

    def rmtree(self) -> None:
        if self.is_dir():
            self.fs.delete_dir(self.path)


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a local file or an object; FileNotFoundError when missing."""
    if not is_uri(path):
        return Path(resolve(path)[1]).read_bytes()
    loc = Location(path)
    if not loc.is_file():
        raise FileNotFoundError(str(path))
    return loc.read_bytes()


def child_path(base: str | os.PathLike, name: str) -> str:
    """The file ``name`` under ``base`` as a record's ``meta.file``: an absolute local path, or a URI
    when ``base`` is one (readers: ``child_path(cfg.images, file_name)``)."""
    if is_uri(base):
        return str(join(base, name))
    return str((Path(base) / name).resolve())


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def exists(path: str | os.PathLike, kind: str = "any") -> bool:
    """Like ``Path.is_file()/is_dir()/exists()`` for paths and URIs (on an object store a 'folder' is
    any prefix holding objects)."""
    if not is_uri(path):
        p = Path(resolve(path)[1])
        return p.is_file() if kind == "file" else p.is_dir() if kind == "dir" else p.exists()
    loc = Location(path)
    info = loc._info()
    if kind == "file":
        return info.type == pafs.FileType.File
    if kind == "dir":
        return info.type == pafs.FileType.Directory
    return info.type != pafs.FileType.NotFound
