"""The per-shard work of a gallery build, on workers (a Ray task, or a CLIP actor pool; in the
driver with ``--no-ray``): read one work shard's records, crop their patches into
``patches/SSSSSS*.tar``, embed them, write ``parts/SSSSSS.{rows.parquet, rejected.parquet, emb.npy}``
and last the marker ``parts/SSSSSS.done.json`` (its counts); and the dispatch of the shards to
workers, yielding each shard's marker or error to the driver (:func:`.gallery.build_gallery`)."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import faults
from ..errors import RecordError
from ..imageio import decode, read_bytes
from .gallery_layout import FORMAT, PARTS, REJECTED_SCHEMA, ROW_SCHEMA, part_path, tmp_name, write_json
from .gallery_patches import EmbedderConfig, PatchEmbedder, encode_rgba, make_embedder, region_patch

if TYPE_CHECKING:
    from .gallery import GalleryConfig

log = logging.getLogger(__name__)


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
            self.tf = tarfile.open(tmp_name(self.path), "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed by close()
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
            tmp_name(self.path).replace(self.path)
            self.names.append(self.path.name)
            faults.point("gallery.tar")

    def abort(self) -> None:
        if self.tf is not None:
            self.tf.close()
            self.tf = None
            tmp_name(self.path).unlink(missing_ok=True)


class _ParquetPart:
    """Rows into one parquet file in chunks (memory: one chunk), renamed into place on close."""

    def __init__(self, path: Path, schema: pa.Schema, chunk: int = 4096):
        self.path, self.schema, self.chunk = path, schema, chunk
        self.writer = pq.ParquetWriter(tmp_name(path), schema, compression="zstd")
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
        tmp_name(self.path).replace(self.path)

    def abort(self) -> None:
        self.writer.close()
        tmp_name(self.path).unlink(missing_ok=True)


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
        with open(tmp_name(self.path), "wb") as out, open(self.raw, "rb") as src:
            np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                       "fortran_order": False, "shape": (self.n, self.dim)})
            shutil.copyfileobj(src, out, 1 << 22)
        self.raw.unlink()
        tmp_name(self.path).replace(self.path)

    def abort(self) -> None:
        self.f.close()
        self.raw.unlink(missing_ok=True)


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
    part_path(root, job.shard, "done.json").unlink(missing_ok=True)
    pdir = root / "patches"
    # an earlier attempt's tars, and what a killed attempt left under temporary names
    for p in [pdir / f"{name}.tar", *pdir.glob(f"{name}-*.tar"), *pdir.glob(f"{name}.tar.tmp-*"),
              *pdir.glob(f"{name}-*.tar.tmp-*"), *(root / PARTS).glob(f"{name}.*.tmp-*")]:
        p.unlink(missing_ok=True)
    tars = _TarShards(root, cfg.patches_per_shard, shard=job.shard)
    rows = _ParquetPart(part_path(root, job.shard, "rows.parquet"), ROW_SCHEMA)
    rejected = _ParquetPart(part_path(root, job.shard, "rejected.parquet"), REJECTED_SCHEMA)
    vectors = _NpyPart(part_path(root, job.shard, "emb.npy"), embedder.dim)
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
    write_json(part_path(root, job.shard, "done.json"), marker)
    faults.point("gallery.shard")
    return marker


def read_marker(root: Path, job: GalleryShard) -> dict | None:
    """The marker of a finished shard made from the plan's inputs (None: to build)."""
    f = part_path(root, job.shard, "done.json")
    try:
        m = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    if m.get("fingerprint") != job.spec.fingerprint or m.get("format") != FORMAT:
        return None
    if not all(part_path(root, job.shard, w).is_file() for w in ("rows.parquet", "rejected.parquet", "emb.npy")):
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


def execute_local(cfg: GalleryConfig, sources: list, todo: list[GalleryShard], root: Path) -> Iterator[tuple]:
    embedder = make_embedder(cfg.embedder) if todo else None
    for job in todo:
        try:
            yield job, build_shard(cfg, sources[job.source][0], job, root, embedder), None
        except Exception as e:  # noqa: BLE001 - a failed shard is reported; the others go on
            log.exception("gallery shard %06d (%s) failed", job.shard, job.spec.label)
            yield job, None, _error_text(e)


def execute_ray(cfg: GalleryConfig, sources: list, todo: list[GalleryShard], root: Path) -> Iterator[tuple]:
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
