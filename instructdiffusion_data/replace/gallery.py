"""The patch gallery of the replacement pipeline: region crops, their embeddings and a FAISS index.

Built once over every selected region of the configured sources by ``idd gallery build`` (a global
pass: nearest neighbours need all regions), read by the ``retrieve_reference`` and ``paint_replace``
stages. On disk (``DIR`` = ``--out``)::

    DIR/gallery.json        manifest: config, embedder and index description, counts, code version
    DIR/gallery.parquet     one row per patch, row i = gallery id i: key, dataset, image_id, region_id,
                            label, label_id, file, bbox [x,y,w,h], area_frac, crop [x,y,w,h],
                            tar, offset, size (the PNG's bytes in the tar), patch_w, patch_h
    DIR/rejected.parquet    regions that did not enter the gallery: key, dataset, record_id, drop_class, drop_reason
    DIR/patches/NNNNNN.tar  <key>.png, RGBA: the region crop with ``context`` around it, alpha = mask
    DIR/embeddings.npy      float32 [N, D], L2-normalised, row i = gallery id i
    DIR/index.faiss         inner-product index over the embeddings (models/faiss_index.py)

The embedding of a patch sees the region only: for CLIP the pixels outside the mask are set to
mid-grey; the classical embedder weights its histograms by the mask.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, RecordError
from ..imageio import decode, read_bytes
from ..models.faiss_index import IndexConfig
from .regions import mask_bbox, region_mask

log = logging.getLogger(__name__)

MANIFEST = "gallery.json"
TABLE = "gallery.parquet"
REJECTED = "rejected.parquet"
EMBEDDINGS = "embeddings.npy"
INDEX = "index.faiss"
FORMAT = "instructdiffusion-data/gallery/1"


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


@dataclass
class GalleryConfig:
    """``idd gallery build CONFIG``: which regions, how they are cropped, embedded and indexed."""

    name: str = "ieiw_gallery"
    sources: list = field(default_factory=list)  # source specs, as in a pipeline's `source:`
    patch: PatchConfig = field(default_factory=PatchConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    patches_per_shard: int = 2000
    seed: int = 0


# -- embedders ---------------------------------------------------------------------------------

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


# -- writing -----------------------------------------------------------------------------------

class _TarShards:
    """Patch PNGs into ``patches/NNNNNN.tar`` with fixed mtime/owner (byte-reproducible)."""

    def __init__(self, root: Path, per_shard: int):
        self.dir = root / "patches"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.per_shard = max(1, per_shard)
        self.n = 0
        self.tf: tarfile.TarFile | None = None
        self.path: Path | None = None

    def add(self, name: str, data: bytes) -> tuple[str, int, int]:
        if self.n % self.per_shard == 0:
            self.close()
            self.path = self.dir / f"{self.n // self.per_shard:06d}.tar"
            self.tf = tarfile.open(self.path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed by close()
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
        header_at = self.tf.offset
        self.tf.addfile(info, io.BytesIO(data))
        self.n += 1
        # a USTAR header is one 512-byte block: the data starts right after it
        return f"patches/{self.path.name}", header_at + 512, len(data)

    def close(self) -> None:
        if self.tf is not None:
            self.tf.close()
            self.tf = None


def iter_regions(cfg: GalleryConfig) -> Iterator[dict]:
    """Every record of every source, in order: a file-group source (SA-1B, OpenImages) item by item
    through its plan, a record source through its stream; ``source.limit`` applies."""
    import itertools

    from ..readers._base import FileGroupSource
    from ..stage import make_source
    from ..storage import Location

    for i, spec in enumerate(cfg.sources):
        try:
            src = make_source(spec, cfg.seed)
        except ConfigError as e:
            raise ConfigError(f"sources[{i}]: {e}") from None
        if isinstance(src, FileGroupSource):
            for shard in src.plan(Location("."), 64):  # a file-group plan lists items only (no work folder)
                yield from src.read(shard)
        else:
            yield from itertools.islice(src.records(), src.config.limit)


def build_gallery(cfg: GalleryConfig, out: str | Path, *, progress: bool = True) -> dict:
    """Crop, embed and index every selected region of ``cfg.sources`` into ``out``."""
    from tqdm import tqdm

    from .. import writer as writer_mod
    from ..models.faiss_index import build_index, save_index

    if not cfg.sources:
        raise ConfigError("sources: at least one source is needed")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    embedder = make_embedder(cfg.embedder)
    shards = _TarShards(root, cfg.patches_per_shard)
    rows: list[dict] = []
    rejected: list[dict] = []
    vectors: list[np.ndarray] = []
    pending: list[tuple[dict, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        vecs = embedder.embed_patches([p for _, p in pending])
        vectors.append(vecs.astype(np.float32))
        pending.clear()

    cache: dict[str, np.ndarray] = {}
    for rec in tqdm(iter_regions(cfg), desc="gallery regions", unit="region", disable=not progress):
        meta = rec["meta"]
        base = {"key": rec["key"], "dataset": rec["dataset"], "record_id": str(meta.get("record_id"))}
        if not rec["keep"]:
            rejected.append({**base, "drop_class": rec.get("drop_class") or rec["drop_reason"],
                             "drop_reason": rec["drop_reason"]})
            continue
        try:
            f = meta["file"]
            if f not in cache:
                cache.clear()  # records arrive grouped by image
                cache[f] = decode(read_bytes(f, base["record_id"]), file=f, record=base["record_id"])
            patch, crop = region_patch(meta, cfg.patch, cache[f])
        except RecordError as e:
            rejected.append({**base, "drop_class": f"gallery: {e.reason}", "drop_reason": f"gallery: {e}"})
            continue
        reg = meta["region"]
        tar, offset, size = shards.add(f"{rec['key']}.png", encode_rgba(patch))
        rows.append({"gallery_id": len(rows), **base, "image_id": str(meta.get("image_id")),
                     "region_id": str(reg["id"]), "label": reg.get("label"), "label_id": reg.get("label_id"),
                     "file": meta["file"], "bbox": [int(v) for v in reg["bbox"]], "area_frac": float(reg["area_frac"]),
                     "crop": crop, "tar": tar, "offset": offset, "size": size,
                     "patch_w": int(patch.shape[1]), "patch_h": int(patch.shape[0])})
        pending.append((rows[-1], patch))
        if len(pending) >= cfg.embedder.batch_size:
            flush()
    flush()
    shards.close()
    if not rows:
        raise ConfigError("gallery: no region passed selection; nothing to index")
    emb = np.concatenate(vectors)
    np.save(root / EMBEDDINGS, emb)
    pq.write_table(pa.Table.from_pylist(rows), root / TABLE)
    rej_schema = pa.schema([("key", pa.string()), ("dataset", pa.string()), ("record_id", pa.string()),
                            ("drop_class", pa.string()), ("drop_reason", pa.string())])
    pq.write_table(pa.Table.from_pylist(rejected, schema=rej_schema), root / REJECTED)
    index, info = build_index(emb, cfg.index)
    save_index(index, root / INDEX)
    from collections import Counter

    from ..config import to_dict

    manifest = {
        "format": FORMAT, "name": cfg.name, "patches": len(rows), "rejected": len(rejected),
        "rejected_reasons": dict(Counter(r["drop_class"] for r in rejected)),
        "datasets": dict(Counter(r["dataset"] for r in rows)),
        "labels": dict(Counter(str(r["label"]) for r in rows)),
        "embedder": {**embedder.describe(), "config": asdict(cfg.embedder)},
        "index": info, "dim": int(emb.shape[1]), "config": to_dict(cfg),
        "code_version": writer_mod.code_version(), "seconds": round(time.perf_counter() - t0, 2),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
    return manifest


# -- reading -----------------------------------------------------------------------------------

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
