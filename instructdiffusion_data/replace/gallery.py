"""The patch gallery of the replacement pipeline: region crops, their embeddings and a FAISS index.

Built once over every selected region of the configured sources by ``idd gallery build`` (a global
pass: nearest neighbours need all regions), read by the ``retrieve_reference`` and ``paint_replace``
stages (:mod:`.gallery_read`). The files on disk: :mod:`.gallery_layout`. This module holds the
build's config and its orchestration, in bounded memory (no process holds every row or every vector):

1. plan: the sources' shards (``records_per_shard`` items of a file-group source; a record source
   is split first, as ``idd run`` does), numbered across the sources in order;
2. per shard, on a worker (a Ray task, or a CLIP actor pool; in the driver with ``--no-ray``):
   read, crop, write the patch tars, embed, write ``parts/SSSSSS.{rows.parquet, rejected.parquet,
   emb.npy}`` and last the marker ``parts/SSSSSS.done.json`` (its counts) (:mod:`.gallery_shards`).
   The driver collects counts;
3. assemble in shard order (gallery id = prefix sums of the shards' patch counts, so the order is a
   single process's): the tables streamed with a ``ParquetWriter``, ``embeddings.npy`` filled part by
   part through a memory map, the index trained on a seeded sample of at most ``index.train_sample``
   vectors and filled in batches (:mod:`.gallery_assemble`); then ``gallery.json``, and the parts are
   removed.

A build that stops keeps its finished shards (marker present, inputs unchanged): the rerun builds
only the others. Patches and their embedder: :mod:`.gallery_patches`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import faults
from ..config import RayConfig, rng
from ..errors import ConfigError, UserError
from ..models.faiss_index import IndexConfig
from .gallery_assemble import assemble_parts
from .gallery_layout import BUILD, EMBEDDINGS, FORMAT, INDEX, MANIFEST, PARTS, REJECTED, TABLE, write_json
from .gallery_patches import EmbedderConfig, PatchConfig
from .gallery_shards import GalleryShard, execute_local, execute_ray, read_marker

log = logging.getLogger(__name__)


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
        write_json(root / BUILD, {"format": FORMAT, "parts": parts_id})


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
        m = read_marker(root, job)
        if m is None:
            todo.append(job)
        else:
            tally.add(m)
    log.info("gallery: %d shards, %d done before, %d to build (%s)", len(jobs), len(jobs) - len(todo), len(todo),
             "Ray" if use_ray else "in this process")
    failed: dict[int, str] = {}
    run = execute_ray if use_ray else execute_local
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
    rej_n, info = assemble_parts(root, [j.shard for j in jobs], tally.patches, sum(tally.rejected.values()),
                                 tally.tars, dim, cfg.index)

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
    write_json(root / MANIFEST, manifest)
    faults.point("gallery.manifest")
    shutil.rmtree(root / PARTS, ignore_errors=True)
    shutil.rmtree(root / ".plan", ignore_errors=True)
    (root / BUILD).unlink(missing_ok=True)
    return manifest
