"""A built gallery, read-only: the :class:`Gallery` a stage worker opens (its table, embeddings,
index and patches) and :func:`read_patch`, one patch PNG's bytes out of its tar."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, RecordError
from .gallery_layout import EMBEDDINGS, INDEX, MANIFEST, TABLE
from .gallery_patches import EmbedderConfig, PatchConfig, decode_rgba


class Gallery:
    """A built gallery, opened read-only (one per stage worker)."""

    def __init__(self, root: str | Path, *, nprobe: int | None = None, load_index: bool = True):
        from ..models.faiss_index import load_index as _load

        self.root = Path(root).resolve()
        mf = self.root / MANIFEST
        if not mf.is_file():
            raise ConfigError(f"gallery: {self.root} has no {MANIFEST} (build it with `idd gallery build`)")
        self.manifest = json.loads(mf.read_text())
        self.table = _Rows(pq.read_table(self.root / TABLE))
        self.embeddings = np.load(self.root / EMBEDDINGS, mmap_mode="r")
        self.index = _load(self.root / INDEX, nprobe=nprobe) if load_index else None
        c = self.table.cols
        self.by_region = {k: i for i, k in enumerate(zip(c["dataset"], c["image_id"], c["region_id"]))}
        self._files: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.table)

    def embedder_config(self) -> EmbedderConfig:
        from ..config import build

        return build(EmbedderConfig, self.manifest["embedder"]["config"], where="gallery.embedder")

    def patch_config(self) -> PatchConfig:
        from ..config import build

        return build(PatchConfig, self.manifest["config"]["patch"], where="gallery.patch")

    def lookup(self, dataset: str, image_id: str, region_id: str) -> int | None:
        return self.by_region.get((dataset, str(image_id), str(region_id)))

    def patch_bytes(self, gid: int) -> bytes:
        r = self.table[gid]
        return read_patch(self.root, r["tar"], r["offset"], r["size"], self._files, self._lock)

    def patch(self, gid: int) -> np.ndarray:
        return decode_rgba(self.patch_bytes(gid))


class _Rows:
    """gallery.parquet as column lists; ``rows[i]`` builds row i's dict (a dict per row for millions
    of patches would cost gigabytes)."""

    def __init__(self, table: pa.Table):
        self.names = table.column_names
        self.cols = {n: table.column(n).to_pylist() for n in self.names}
        self.n = table.num_rows

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return {n: self.cols[n][i] for n in self.names}

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(self.n))


def read_patch(root: Path, tar: str, offset: int, size: int, handles: dict | None = None,
               lock: threading.Lock | None = None) -> bytes:
    """``size`` bytes at ``offset`` of ``root/tar`` (a patch PNG), with optional open-file reuse."""
    path = str(Path(root) / tar)
    if handles is None:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    else:
        with lock or threading.Lock():
            f = handles.get(path)
            if f is None:
                try:
                    f = handles[path] = open(path, "rb")  # noqa: SIM115 - kept open across calls
                except FileNotFoundError:
                    raise RecordError("gallery patch shard missing", file=path) from None
            f.seek(offset)
            data = f.read(size)
    if len(data) != size:
        raise RecordError("gallery patch truncated", file=path)
    return data
