"""The patch gallery of the replacement pipeline: region crops, their embeddings and a FAISS index.

Built once over every selected region of the configured sources by ``idd gallery build`` (a global
pass: nearest neighbours need all regions), read by the ``retrieve_reference`` and ``paint_replace``
stages. On disk (``DIR`` = ``--out``)::

    DIR/gallery.json        manifest: config, embedder and index description, counts, code version
    DIR/gallery.parquet     one row per patch, row i = gallery id i: key, dataset, image_id, region_id,
                            label, label_id, file, bbox [x,y,w,h], area_frac, crop [x,y,w,h],
                            tar, offset, size (the PNG's bytes in the tar), patch_w, patch_h
    DIR/rejected.parquet    regions that did not enter the gallery: key, dataset, record_id, drop_class, drop_reason
    DIR/patches/SSSSSS[-KKK].tar  <key>.png, RGBA: the region crop with ``context`` around it, alpha = mask
                            (work shard SSSSSS; KKK counts its further tars of ``patches_per_shard``)
    DIR/embeddings.npy      float32 [N, D], L2-normalised, row i = gallery id i
    DIR/index.faiss         inner-product index over the embeddings (models/faiss_index.py)

How it is built, in bounded memory (no process holds every row or every vector):

1. plan: the sources' shards (``records_per_shard`` items of a file-group source; a record source
   is split first, as ``idd run`` does), numbered across the sources in order;
2. per shard, on a worker (a Ray task, or a CLIP actor pool; in the driver with ``--no-ray``):
   read, crop, write the patch tars, embed, write ``parts/SSSSSS.{rows.parquet, rejected.parquet,
   emb.npy}`` and last the marker ``parts/SSSSSS.done.json`` (its counts). The driver collects counts;
3. assemble in shard order (gallery id = prefix sums of the shards' patch counts, so the order is a
   single process's): the tables streamed with a ``ParquetWriter``, ``embeddings.npy`` filled part by
   part through a memory map, the index trained on a seeded sample of at most ``index.train_sample``
   vectors and filled in batches; then ``gallery.json``, and the parts are removed.

A build that stops keeps its finished shards (marker present, inputs unchanged): the rerun builds
only the others. The embedding of a patch sees the region only: for CLIP the pixels outside the
mask are set to mid-grey; the classical embedder weights its histograms by the mask.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import faults
from ..config import RayConfig, rng
from ..errors import ConfigError, RecordError, UserError
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
class WorkerConfig:
    """Resources of the shard workers (Ray)."""

    num_cpus: float = field(default=1.0, metadata=rng(0))
    # CLIP actors: GPUs each (None: 1 when the cluster has GPUs, else 0)
    num_gpus: float | None = field(default=None, metadata=rng(0))
    # CLIP: actors (None: one per GPU, or 1 without GPUs); classical: shard tasks in flight (None: 2 per CPU)
    concurrency: int | None = field(default=None, metadata=rng(1))


@dataclass
class GalleryConfig:
    """``idd gallery build CONFIG``: which regions, how they are cropped, embedded and indexed."""

    name: str = "ieiw_gallery"
    sources: list = field(default_factory=list)  # source specs, as in a pipeline's `source:`
    patch: PatchConfig = field(default_factory=PatchConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    # work shard: this many source units (items of a file-group source: an SA-1B image, an OpenImages
    # mask archive; records of a record source); a source entry may set its own `records_per_shard`
    records_per_shard: int = field(default=256, metadata=rng(1))
    patches_per_shard: int = field(default=2000, metadata=rng(1))  # patches per tar at most (a shard may write several)
    workers: WorkerConfig = field(default_factory=WorkerConfig)
    ray: RayConfig = field(default_factory=RayConfig)  # as in a pipeline config (embedded Ray or a cluster)
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

PARTS = "parts"  # per-shard pieces while a build runs; removed once the gallery is assembled
BUILD = "build.json"  # what the parts were made with (a build whose config differs starts over)
CHUNK = 65_536  # rows per batch when the parts are assembled (tables, embeddings, index)

# one gallery row (gallery.parquet adds gallery_id in front); typed, so every part has the same schema
ROW_SCHEMA = pa.schema([
    ("key", pa.string()), ("dataset", pa.string()), ("record_id", pa.string()), ("image_id", pa.string()),
    ("region_id", pa.string()), ("label", pa.string()), ("label_id", pa.string()), ("file", pa.string()),
    ("bbox", pa.list_(pa.int64())), ("area_frac", pa.float64()), ("crop", pa.list_(pa.int64())),
    ("tar", pa.string()), ("offset", pa.int64()), ("size", pa.int64()), ("patch_w", pa.int64()),
    ("patch_h", pa.int64())])
TABLE_SCHEMA = pa.schema([pa.field("gallery_id", pa.int64()), *ROW_SCHEMA])
REJECTED_SCHEMA = pa.schema([("key", pa.string()), ("dataset", pa.string()), ("record_id", pa.string()),
                             ("drop_class", pa.string()), ("drop_reason", pa.string())])


def _tmp(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


class _TarShards:
    """Patch PNGs into tars of at most ``per_shard`` members with fixed mtime/owner (byte-reproducible),
    each written under a temporary name and renamed into place when closed. Names: ``NNNNNN.tar`` by
    position, or, for work shard ``shard``, ``<shard>.tar`` then ``<shard>-001.tar``, ..."""

    def __init__(self, root: Path, per_shard: int, shard: int | None = None):
        self.dir = Path(root) / "patches"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.per_shard = max(1, per_shard)
        self.shard = shard
        self.n = 0
        self.tf: tarfile.TarFile | None = None
        self.path: Path | None = None
        self.names: list[str] = []

    def _name(self, k: int) -> str:
        if self.shard is None:
            return f"{k:06d}.tar"
        return f"{self.shard:06d}.tar" if k == 0 else f"{self.shard:06d}-{k:03d}.tar"

    def add(self, name: str, data: bytes) -> tuple[str, int, int]:
        if self.n % self.per_shard == 0:
            self.close()
            self.path = self.dir / self._name(self.n // self.per_shard)
            self.tf = tarfile.open(_tmp(self.path), "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed by close()
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
            _tmp(self.path).replace(self.path)
            self.names.append(self.path.name)
            faults.point("gallery.tar")

    def abort(self) -> None:
        if self.tf is not None:
            self.tf.close()
            self.tf = None
            _tmp(self.path).unlink(missing_ok=True)


class _ParquetPart:
    """Rows into one parquet file in chunks (memory: one chunk), renamed into place on close."""

    def __init__(self, path: Path, schema: pa.Schema, chunk: int = 4096):
        self.path, self.schema, self.chunk = path, schema, chunk
        self.writer = pq.ParquetWriter(_tmp(path), schema, compression="zstd")
        self.buf: list[dict] = []
        self.n = 0

    def add(self, row: dict) -> None:
        self.buf.append(row)
        self.n += 1
        if len(self.buf) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.writer.write_table(pa.Table.from_pylist(self.buf, schema=self.schema))
            self.buf.clear()

    def close(self) -> None:
        self.flush()
        self.writer.close()
        _tmp(self.path).replace(self.path)

    def abort(self) -> None:
        self.writer.close()
        _tmp(self.path).unlink(missing_ok=True)


class _NpyPart:
    """float32 rows of ``dim`` appended to a raw file, made a ``.npy`` of the final shape on close."""

    def __init__(self, path: Path, dim: int):
        self.path, self.dim, self.n = path, int(dim), 0
        self.raw = path.with_name(f"{path.name}.raw.tmp-{os.getpid()}")
        self.f = open(self.raw, "wb")  # noqa: SIM115 - closed by close()/abort()

    def add(self, vectors: np.ndarray) -> None:
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"embedder returned shape {v.shape}, expected [n, {self.dim}]")
        self.f.write(v.tobytes())
        self.n += len(v)

    def close(self) -> None:
        import shutil

        self.f.close()
        with open(_tmp(self.path), "wb") as out, open(self.raw, "rb") as src:
            np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                       "fortran_order": False, "shape": (self.n, self.dim)})
            shutil.copyfileobj(src, out, 1 << 22)
        self.raw.unlink()
        _tmp(self.path).replace(self.path)

    def abort(self) -> None:
        self.f.close()
        self.raw.unlink(missing_ok=True)


def _write_json(path: Path, obj: Any) -> None:
    _tmp(path).write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    _tmp(path).replace(path)


def iter_regions(cfg: GalleryConfig) -> Iterator[dict]:
    """Every record of every source, in gallery order, in this process (tools and tests; the build
    reads per shard on workers): a file-group source (SA-1B, OpenImages) item by item through its
    plan, a record source through its stream; ``source.limit`` applies."""
    import itertools

    from ..readers._base import FileGroupSource
    from ..storage import Location

    for src, _ in _make_sources(cfg):
        if isinstance(src, FileGroupSource):
            for shard in src.plan(Location("."), 64):  # a file-group plan lists items only (no work folder)
                yield from src.read(shard)
        else:
            yield from itertools.islice(src.records(), src.config.limit)


def _make_sources(cfg: GalleryConfig) -> list[tuple[Any, int]]:
    """``(source, records per shard)`` of each ``sources`` entry; an entry may set its own
    ``records_per_shard`` (e.g. 1 for OpenImages, whose item is a whole mask archive)."""
    from ..stage import make_source

    out = []
    for i, spec in enumerate(cfg.sources):
        if not isinstance(spec, dict):
            raise ConfigError(f"sources[{i}]: expected a mapping with a 'type'")
        body = dict(spec)
        per = body.pop("records_per_shard", cfg.records_per_shard)
        if isinstance(per, bool) or not isinstance(per, int) or per < 1:
            raise ConfigError(f"sources[{i}].records_per_shard: expected an integer >= 1, got {per!r}")
        try:
            src = make_source(body, cfg.seed)
        except ConfigError as e:
            raise ConfigError(f"sources[{i}]: {e}") from None
        out.append((src, per))
    return out


@dataclass
class GalleryShard:
    """One unit of gallery work: shard ``shard`` (numbered across all sources, in order) of
    ``sources[source]``, read through ``spec``."""

    shard: int
    source: int
    spec: Any  # readers._base.ShardSpec


_EMBEDDERS: dict[str, PatchEmbedder] = {}


def _cached_embedder(cfg: EmbedderConfig) -> PatchEmbedder:
    """The embedder of this worker process, loaded once (a Ray worker runs many shard tasks)."""
    key = json.dumps(asdict(cfg), sort_keys=True, default=str)
    if key not in _EMBEDDERS:
        _EMBEDDERS.clear()
        _EMBEDDERS[key] = make_embedder(cfg)
    return _EMBEDDERS[key]


def _part(root: Path, shard: int, what: str) -> Path:
    return Path(root) / PARTS / f"{shard:06d}.{what}"


def build_shard(cfg: GalleryConfig, source: Any, job: GalleryShard, root: str | Path,
                embedder: PatchEmbedder | None = None) -> dict:
    """Read one shard's records, crop their patches into ``patches/<shard>*.tar``, embed them and write
    ``parts/<shard>.{rows.parquet, rejected.parquet, emb.npy}``, then the marker ``<shard>.done.json``
    (its counts) last. Memory: one image, one embedding batch and one chunk of rows. Runs on a worker."""
    t0 = time.perf_counter()
    root = Path(root)
    (root / PARTS).mkdir(parents=True, exist_ok=True)
    embedder = embedder or _cached_embedder(cfg.embedder)
    name = f"{job.shard:06d}"
    _part(root, job.shard, "done.json").unlink(missing_ok=True)
    pdir = root / "patches"
    # an earlier attempt's tars, and what a killed attempt left under temporary names
    for p in [pdir / f"{name}.tar", *pdir.glob(f"{name}-*.tar"), *pdir.glob(f"{name}.tar.tmp-*"),
              *pdir.glob(f"{name}-*.tar.tmp-*"), *(root / PARTS).glob(f"{name}.*.tmp-*")]:
        p.unlink(missing_ok=True)
    tars = _TarShards(root, cfg.patches_per_shard, shard=job.shard)
    rows = _ParquetPart(_part(root, job.shard, "rows.parquet"), ROW_SCHEMA)
    rejected = _ParquetPart(_part(root, job.shard, "rejected.parquet"), REJECTED_SCHEMA)
    vectors = _NpyPart(_part(root, job.shard, "emb.npy"), embedder.dim)
    reasons: Counter = Counter()
    datasets: Counter = Counter()
    labels: Counter = Counter()
    stats_before = Counter(source.stats)
    pending: list[np.ndarray] = []
    records = 0

    def reject(base: dict, cls: str, reason: str) -> None:
        rejected.add({**base, "drop_class": cls, "drop_reason": reason})
        reasons[cls] += 1

    def flush() -> None:
        if pending:
            vectors.add(embedder.embed_patches(pending))
            pending.clear()

    try:
        image: tuple[str, np.ndarray] | None = None  # records arrive grouped by image
        for rec in source.read(job.spec):
            records += 1
            meta = rec["meta"]
            base = {"key": rec["key"], "dataset": rec["dataset"], "record_id": str(meta.get("record_id"))}
            if not rec["keep"]:
                reject(base, rec.get("drop_class") or rec["drop_reason"], rec["drop_reason"])
                continue
            try:
                f = meta["file"]
                if image is None or image[0] != f:
                    image = None
                    image = (f, decode(read_bytes(f, base["record_id"]), file=f, record=base["record_id"]))
                patch, crop = region_patch(meta, cfg.patch, image[1])
            except RecordError as e:
                reject(base, f"gallery: {e.reason}", f"gallery: {e}")
                continue
            reg = meta["region"]
            tar, offset, size = tars.add(f"{rec['key']}.png", encode_rgba(patch))
            label_id = reg.get("label_id")
            rows.add({**base, "image_id": str(meta.get("image_id")), "region_id": str(reg["id"]),
                      "label": reg.get("label"), "label_id": None if label_id is None else str(label_id),
                      "file": meta["file"], "bbox": [int(v) for v in reg["bbox"]],
                      "area_frac": float(reg["area_frac"]), "crop": crop, "tar": tar, "offset": offset,
                      "size": size, "patch_w": int(patch.shape[1]), "patch_h": int(patch.shape[0])})
            datasets[rec["dataset"]] += 1
            labels[str(reg.get("label"))] += 1
            pending.append(patch)
            if len(pending) >= cfg.embedder.batch_size:
                flush()
        flush()
        tars.close()
        rows.close()
        rejected.close()
        vectors.close()
    except BaseException:
        for w in (tars, rows, rejected, vectors):
            try:
                w.abort()
            except Exception:  # noqa: BLE001 - cleaning up after the real error
                pass
        raise
    if vectors.n != rows.n:
        raise RuntimeError(f"shard {name}: {rows.n} patches but {vectors.n} embeddings")
    faults.point("gallery.part")
    marker = {"format": FORMAT, "shard": job.shard, "source": job.source, "fingerprint": job.spec.fingerprint,
              "label": job.spec.label, "records": records, "patches": rows.n, "rejected": rejected.n,
              "rejected_reasons": dict(reasons), "datasets": dict(datasets), "labels": dict(labels),
              "reader": dict(Counter(source.stats) - stats_before), "tars": tars.names, "dim": embedder.dim,
              "embedder": embedder.describe(), "seconds": round(time.perf_counter() - t0, 3)}
    _write_json(_part(root, job.shard, "done.json"), marker)
    faults.point("gallery.shard")
    return marker


def _read_marker(root: Path, job: GalleryShard) -> dict | None:
    """The marker of a finished shard made from the plan's inputs (None: to build)."""
    f = _part(root, job.shard, "done.json")
    try:
        m = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    if m.get("fingerprint") != job.spec.fingerprint or m.get("format") != FORMAT:
        return None
    if not all(_part(root, job.shard, w).is_file() for w in ("rows.parquet", "rejected.parquet", "emb.npy")):
        return None
    if not all((root / "patches" / t).is_file() for t in m.get("tars", [])):
        return None
    return m


def _shard_task(cfg: GalleryConfig, source: Any, job: GalleryShard, root: str) -> dict:
    return build_shard(cfg, source, job, root)


class _ShardWorker:
    """A Ray actor holding one embedder (CLIP on its GPU) for the shards it is given."""

    def __init__(self, cfg: GalleryConfig):
        self.cfg = cfg
        self.embedder = make_embedder(cfg.embedder)

    def build(self, source: Any, job: GalleryShard, root: str) -> dict:
        return build_shard(self.cfg, source, job, root, self.embedder)


def _error_text(e: BaseException) -> str:
    cause = getattr(e, "cause", None) or e
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:500]


def _execute_local(cfg: GalleryConfig, sources: list, todo: list[GalleryShard], root: Path) -> Iterator[tuple]:
    embedder = make_embedder(cfg.embedder) if todo else None
    for job in todo:
        try:
            yield job, build_shard(cfg, sources[job.source][0], job, root, embedder), None
        except Exception as e:  # noqa: BLE001 - a failed shard is reported; the others go on
            log.exception("gallery shard %06d (%s) failed", job.shard, job.spec.label)
            yield job, None, _error_text(e)


def _execute_ray(cfg: GalleryConfig, sources: list, todo: list[GalleryShard], root: Path) -> Iterator[tuple]:
    """Shards as Ray tasks (classical embedder: loaded once per worker process) or on an actor pool
    (CLIP: one model per actor, ``workers.num_gpus`` GPUs each); a bounded number in flight."""
    from collections import deque

    import ray

    if not todo:
        return
    src_refs = [ray.put(s) for s, _ in sources]
    cfg_ref = ray.put(cfg)
    w = cfg.workers
    res = ray.cluster_resources()
    queue = deque(todo)
    inflight: dict[Any, tuple[GalleryShard, Any]] = {}
    idle: list[Any] = []
    if cfg.embedder.type == "clip":
        gpus = w.num_gpus if w.num_gpus is not None else (1.0 if res.get("GPU", 0) >= 1 else 0.0)
        n = w.concurrency or (max(1, int(res.get("GPU", 0) // gpus)) if gpus else 1)
        actor_cls = ray.remote(num_cpus=w.num_cpus, num_gpus=gpus)(_ShardWorker)
        idle = [actor_cls.remote(cfg_ref) for _ in range(min(n, len(todo)))]
        log.info("gallery: %d embedding actors (%s GPUs each)", len(idle), gpus)

        def submit() -> None:
            a, job = idle.pop(), queue.popleft()
            inflight[a.build.remote(src_refs[job.source], job, str(root))] = (job, a)

        def room() -> bool:
            return bool(idle)
    else:
        window = w.concurrency or max(1, 2 * int(res.get("CPU", 1)))
        task = ray.remote(num_cpus=w.num_cpus)(_shard_task)

        def submit() -> None:
            job = queue.popleft()
            inflight[task.remote(cfg_ref, src_refs[job.source], job, str(root))] = (job, None)

        def room() -> bool:
            return len(inflight) < window

    while queue or inflight:
        while queue and room():
            submit()
        ready, _ = ray.wait(list(inflight), num_returns=1)
        job, actor = inflight.pop(ready[0])
        try:
            yield job, ray.get(ready[0]), None
        except ray.exceptions.RayActorError as e:  # the actor died: a fresh one takes its place
            if actor is not None:
                actor = actor_cls.remote(cfg_ref)
            yield job, None, _error_text(e)
        except Exception as e:  # noqa: BLE001 - a failed shard is reported; the others go on
            yield job, None, _error_text(e)
        finally:
            if actor is not None:
                idle.append(actor)


def plan_shards(cfg: GalleryConfig, sources: list, root: Path, use_ray: bool) -> list[GalleryShard]:
    """The work shards of every source, numbered in order. A record source is split first (once, by a
    worker task, into ``root/.plan/``), as ``idd run`` does; a file-group plan lists items only."""
    from ..readers._base import RecordSource
    from ..runner import _split_task
    from ..storage import Location

    loc = Location(str(root))
    jobs: list[GalleryShard] = []
    for i, (src, per) in enumerate(sources):
        if isinstance(src, RecordSource) and src.split_index(loc, per) is None:
            log.info("gallery: splitting sources[%d] (%s) into record files", i, src.name)
            if use_ray:
                import ray

                st = ray.get(ray.remote(num_cpus=1, max_retries=2)(_split_task).remote(src, str(loc), per))
            else:
                st = _split_task(src, str(loc), per)
            log.info("gallery: sources[%d]: %d records into %d shards in %.1fs", i, st["records"], st["shards"],
                     st["seconds"])
        for spec in src.plan(loc, per):
            jobs.append(GalleryShard(shard=len(jobs), source=i, spec=spec))
    return jobs


def _identities(cfg: GalleryConfig) -> tuple[str, str]:
    """(what the shard parts depend on, what the whole gallery depends on): neither counts the Ray
    and worker settings; the parts do not depend on the index or the name either."""
    from ..config import to_dict
    from ..readers._base import fingerprint

    d = to_dict(cfg)
    for k in ("ray", "workers"):
        d.pop(k, None)
    full = fingerprint({"format": FORMAT, "config": d})
    for k in ("index", "name"):
        d.pop(k, None)
    return fingerprint({"format": FORMAT, "config": d}), full


_ENGINE_PATHS = (PARTS, "patches", ".plan", MANIFEST, TABLE, REJECTED, EMBEDDINGS, INDEX, BUILD)


def _prepare(root: Path, parts_id: str, resume: bool) -> None:
    """Keep the parts of an earlier, interrupted build of the same config (resume); otherwise remove
    what a build writes (only those names). Leftovers of killed attempts go either way."""
    import shutil

    have = None
    try:
        have = json.loads((root / BUILD).read_text()).get("parts")
    except (OSError, ValueError):
        try:
            have = json.loads((root / MANIFEST).read_text()).get("build", {}).get("parts")
        except (OSError, ValueError):
            pass
    if not resume or have != parts_id:
        for name in _ENGINE_PATHS:
            p = root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    for d in (root, root / PARTS, root / "patches"):
        if d.is_dir():
            for p in d.iterdir():
                if ".tmp-" in p.name and p.is_file():
                    p.unlink()
    if not (root / BUILD).is_file():
        _write_json(root / BUILD, {"format": FORMAT, "parts": parts_id})


class _Tally:
    """What the driver keeps: per-shard counts (for the gallery ids) and merged counters."""

    def __init__(self) -> None:
        self.patches: dict[int, int] = {}
        self.rejected: dict[int, int] = {}
        self.tars: set[str] = set()
        self.records = 0
        self.reasons: Counter = Counter()
        self.datasets: Counter = Counter()
        self.labels: Counter = Counter()
        self.reader: Counter = Counter()
        self.dim: int | None = None
        self.embedder: dict | None = None

    def add(self, m: dict) -> None:
        self.patches[m["shard"]] = int(m["patches"])
        self.rejected[m["shard"]] = int(m["rejected"])
        self.tars.update(m.get("tars", []))
        self.records += int(m.get("records", 0))
        for c, k in ((self.reasons, "rejected_reasons"), (self.datasets, "datasets"), (self.labels, "labels"),
                     (self.reader, "reader")):
            c.update(m.get(k) or {})
        self.dim = self.dim or int(m["dim"])
        self.embedder = self.embedder or m.get("embedder")


def no_region_error(reasons: dict) -> ConfigError:
    """The build found no patch: say how many regions each rule (drop class) rejected."""
    total = sum(reasons.values())
    if not total:
        return ConfigError("gallery: no region passed selection; nothing to index (the sources gave no records: "
                           "check their paths and patterns)")
    counts = "; ".join(f"{cls}: {n}" for cls, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    return ConfigError(f"gallery: no region passed selection; nothing to index ({total} regions rejected: {counts})")


def _concat_parts(dest: Path, files: list[Path], schema: pa.Schema, with_ids: bool) -> int:
    """Stream part tables into one parquet file (memory: about ``CHUNK`` rows); ``with_ids`` adds
    ``gallery_id`` = the row's position. Returns the row count."""
    n = 0
    buf: list[pa.RecordBatch] = []
    nbuf = 0
    with pq.ParquetWriter(_tmp(dest), schema) as w:
        def flush() -> None:
            nonlocal nbuf
            if buf:
                w.write_table(pa.Table.from_batches(buf, schema=schema), row_group_size=CHUNK)
                buf.clear()
                nbuf = 0

        for f in files:
            for b in pq.ParquetFile(f).iter_batches(batch_size=CHUNK):
                if with_ids:
                    b = pa.RecordBatch.from_arrays([pa.array(np.arange(n, n + b.num_rows, dtype=np.int64)),
                                                    *b.columns], schema=schema)
                else:
                    b = pa.RecordBatch.from_arrays(b.columns, schema=schema)
                n += b.num_rows
                buf.append(b)
                nbuf += b.num_rows
                if nbuf >= CHUNK:
                    flush()
        flush()
    _tmp(dest).replace(dest)
    return n


def build_gallery(cfg: GalleryConfig, out: str | Path, *, progress: bool = True, use_ray: bool = False,
                  address: str | None = None, resume: bool = True) -> dict:
    """Crop, embed and index every selected region of ``cfg.sources`` into ``out``.

    Per shard on workers (Ray tasks, or a CLIP actor pool; in this process with ``use_ray=False``):
    read, crop, write the patch tars, embed, write the shard's parts and its marker. The driver keeps
    only counts. Then the gallery is assembled from the parts in shard order, in bounded memory:
    tables streamed, ``embeddings.npy`` filled part by part through a memory map, the index trained on
    a seeded sample and filled in batches. A rerun over the same ``out`` with the same config skips the
    shards whose marker matches their inputs (``resume=False`` starts over)."""
    import shutil

    from tqdm import tqdm

    from .. import writer as writer_mod
    from ..config import to_dict
    from ..models.faiss_index import build_index_streamed, save_index, training_ids
    from ..readers._base import fingerprint

    if not cfg.sources:
        raise ConfigError("sources: at least one source is needed")
    t0 = time.perf_counter()
    sources = _make_sources(cfg)  # every config error before any work
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    parts_id, full_id = _identities(cfg)
    _prepare(root, parts_id, resume)
    if use_ray:
        from ..runner import init_ray

        init_ray(cfg.ray, address)
    jobs = plan_shards(cfg, sources, root, use_ray)
    plan_fp = fingerprint([j.spec.fingerprint for j in jobs])
    try:  # killed after its manifest, before the parts were removed: complete already
        done_m = json.loads((root / MANIFEST).read_text())
        if done_m.get("build") == {"parts": parts_id, "gallery": full_id, "plan": plan_fp}:
            shutil.rmtree(root / PARTS, ignore_errors=True)
            shutil.rmtree(root / ".plan", ignore_errors=True)
            (root / BUILD).unlink(missing_ok=True)
            return done_m
    except (OSError, ValueError):
        pass
    (root / MANIFEST).unlink(missing_ok=True)

    tally = _Tally()
    todo = []
    for job in jobs:
        m = _read_marker(root, job)
        if m is None:
            todo.append(job)
        else:
            tally.add(m)
    log.info("gallery: %d shards, %d done before, %d to build (%s)", len(jobs), len(jobs) - len(todo), len(todo),
             "Ray" if use_ray else "in this process")
    failed: dict[int, str] = {}
    run = _execute_ray if use_ray else _execute_local
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="gallery shards", unit="shard",
              disable=not progress) as bar:
        for job, marker, err in run(cfg, sources, todo, root):
            bar.update(1)
            if marker is None:
                failed[job.shard] = err or "unknown error"
                log.error("gallery shard %06d (%s) failed: %s", job.shard, job.spec.label, err)
            else:
                tally.add(marker)
    if failed:
        first = min(failed)
        raise UserError(f"gallery: {len(failed)} of {len(jobs)} shards failed (shard {first:06d}: {failed[first]}); "
                        "the others are kept: rerun the same command to build the failed ones")
    n = sum(tally.patches.values())
    if not n:
        raise no_region_error(dict(tally.reasons))

    # assemble, in shard order: gallery id = position (prefix sums of the shards' patch counts)
    ta = time.perf_counter()
    dim = int(tally.dim)
    rows_n = _concat_parts(root / TABLE, [_part(root, j.shard, "rows.parquet") for j in jobs], TABLE_SCHEMA, True)
    rej_n = _concat_parts(root / REJECTED, [_part(root, j.shard, "rejected.parquet") for j in jobs],
                          REJECTED_SCHEMA, False)
    if rows_n != n or rej_n != sum(tally.rejected.values()):
        raise RuntimeError(f"gallery: the parts hold {rows_n} patches / {rej_n} rejected, their markers "
                           f"{n} / {sum(tally.rejected.values())}")
    faults.point("gallery.tables")
    emb = np.lib.format.open_memmap(_tmp(root / EMBEDDINGS), mode="w+", dtype=np.float32, shape=(n, dim))
    at = 0
    for j in jobs:
        k = tally.patches[j.shard]
        if not k:
            continue
        part = np.load(_part(root, j.shard, "emb.npy"), mmap_mode="r")
        if part.shape != (k, dim):
            raise RuntimeError(f"gallery: {_part(root, j.shard, 'emb.npy')} has shape {part.shape}, expected {(k, dim)}")
        for i in range(0, k, CHUNK):
            emb[at + i: at + min(k, i + CHUNK)] = part[i: i + CHUNK]
        at += k
        del part
    emb.flush()
    del emb
    _tmp(root / EMBEDDINGS).replace(root / EMBEDDINGS)
    faults.point("gallery.embeddings")
    vecs = np.load(root / EMBEDDINGS, mmap_mode="r")

    def sample() -> np.ndarray:  # only an index that needs training asks: at most train_sample rows
        ids = training_ids(n, cfg.index)
        return np.asarray(vecs if ids is None else vecs[ids])

    index, info = build_index_streamed((vecs[i: i + CHUNK] for i in range(0, n, CHUNK)), n, dim, cfg.index, sample)
    save_index(index, root / INDEX)
    del index
    faults.point("gallery.index")
    for p in (root / "patches").iterdir():  # tars of shards the plan no longer has, leftovers of killed workers
        if p.name not in tally.tars:
            p.unlink()

    manifest = {
        "format": FORMAT, "name": cfg.name, "patches": n, "rejected": rej_n, "records": tally.records,
        # sorted: with Ray the shards finish in any order
        "rejected_reasons": dict(sorted(tally.reasons.items())), "datasets": dict(sorted(tally.datasets.items())),
        "labels": dict(sorted(tally.labels.items())),
        "reader_stats": dict(sorted(tally.reader.items())),
        "embedder": {**(tally.embedder or {}), "config": asdict(cfg.embedder)},
        "index": info, "dim": dim, "config": to_dict(cfg), "shards": len(jobs),
        "build": {"parts": parts_id, "gallery": full_id, "plan": plan_fp},
        "code_version": writer_mod.code_version(), "assemble_seconds": round(time.perf_counter() - ta, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    _write_json(root / MANIFEST, manifest)
    faults.point("gallery.manifest")
    shutil.rmtree(root / PARTS, ignore_errors=True)
    shutil.rmtree(root / ".plan", ignore_errors=True)
    (root / BUILD).unlink(missing_ok=True)
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
