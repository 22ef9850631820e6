"""FAISS nearest-neighbour index over L2-normalised embeddings (inner product = cosine similarity).

* ``type: flat`` - exact search (``IndexFlatIP``);
* ``type: ivfpq`` - ``IVF<nlist>,PQ<m>x<bits>`` trained on a random sample of ``train_sample``
  vectors (seeded), searched with ``nprobe`` lists; optionally re-ranked exactly
  (``refine > 0``: ``IndexRefineFlat`` keeps the raw vectors and re-scores ``k * refine``
  candidates, trading memory for recall);
  Polysemous training (faiss' default for IVF-PQ, useful only for Hamming pre-filtering) is off;
* ``type: auto`` - flat up to ``auto_flat_max`` vectors, IVF-PQ above.

:func:`build_index` takes one matrix; :func:`build_index_streamed` takes the vectors in batches and
the training sample (:func:`training_ids`: the same seeded rows) separately, so a gallery of any size
is indexed without holding its vectors in memory; both give the same index.

With ``gpu: auto`` the index is built and searched on the GPU when the installed faiss is
faiss-gpu and sees a GPU (``faiss.get_num_gpus() > 0``); ``always`` insists, ``never`` stays on the
CPU. Indexes are always saved in CPU form (``faiss.write_index``) and can be moved to a GPU on load.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal

import numpy as np

from ..config import rng
from ..errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class IndexConfig:
    type: Literal["auto", "flat", "ivfpq"] = "auto"
    auto_flat_max: int = field(default=50_000, metadata=rng(0))  # auto: exact search up to this many vectors
    # IVF lists; 0 = 4 * sqrt(N); at most (training vectors) / 39, faiss' minimum per list
    nlist: int = field(default=0, metadata=rng(0))
    # PQ sub-quantisers; the largest divisor of the dimension <= pq_m is used
    pq_m: int = field(default=32, metadata=rng(1))
    pq_bits: int = field(default=8, metadata=rng(1, 16))
    train_sample: int = field(default=100_000, metadata=rng(1))  # vectors sampled (seeded) to train IVF-PQ
    nprobe: int = field(default=16, metadata=rng(1))  # IVF lists searched per query
    # > 0: exact re-ranking of k * refine IVF-PQ candidates (stores raw vectors)
    refine: int = field(default=0, metadata=rng(0))
    gpu: Literal["auto", "never", "always"] = "auto"
    seed: int = 0


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _use_gpu(cfg: IndexConfig) -> bool:
    if cfg.gpu == "never":
        return False
    ok = gpu_available()
    if cfg.gpu == "always" and not ok:
        raise ConfigError("index.gpu: 'always' but faiss has no GPU support or sees no GPU "
                          "(install faiss-gpu instead of faiss-cpu on a GPU host)")
    return ok


_gpu_res = None


def _to_gpu(index):
    import faiss

    global _gpu_res
    if _gpu_res is None:
        _gpu_res = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(_gpu_res, 0, index)


def pq_subquantisers(dim: int, want: int) -> int:
    return max(m for m in range(1, max(1, min(want, dim)) + 1) if dim % m == 0)


def resolve(cfg: IndexConfig, n: int, dim: int) -> dict:
    """The concrete index parameters for ``n`` vectors of ``dim`` dimensions."""
    kind = cfg.type
    if kind == "auto":
        kind = "flat" if n <= cfg.auto_flat_max else "ivfpq"
    if kind == "flat":
        return {"type": "flat", "factory": "Flat"}
    n_train = min(n, cfg.train_sample)
    nlist = cfg.nlist or int(4 * math.sqrt(n))
    nlist = max(1, min(nlist, n_train // 39 if n_train >= 39 else 1))
    m = pq_subquantisers(dim, cfg.pq_m)
    factory = f"IVF{nlist},PQ{m}x{cfg.pq_bits}"
    return {"type": "ivfpq", "factory": factory, "nlist": nlist, "pq_m": m, "pq_bits": cfg.pq_bits,
            "nprobe": cfg.nprobe, "refine": cfg.refine}


def training_ids(n: int, cfg: IndexConfig) -> np.ndarray | None:
    """Row ids (sorted) of the seeded training sample of ``n`` vectors; None: all of them (``n`` is at
    most ``train_sample``)."""
    if n <= cfg.train_sample:
        return None
    rng = np.random.default_rng(cfg.seed)
    return np.sort(rng.choice(n, cfg.train_sample, replace=False))


def build_index(vectors: np.ndarray, cfg: IndexConfig | None = None):
    """Build (train when needed) and fill an inner-product index from one matrix. Returns
    ``(index, info)``. Same index as :func:`build_index_streamed` over the matrix in batches."""
    cfg = cfg or IndexConfig()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = x.shape

    def sample() -> np.ndarray:
        ids = training_ids(n, cfg)
        return x if ids is None else x[ids]

    return build_index_streamed([x], n, dim, cfg, sample)


def build_index_streamed(batches: Iterable[np.ndarray], n: int, dim: int, cfg: IndexConfig | None = None,
                         sample: np.ndarray | Callable[[], np.ndarray] | None = None):
    """Build an inner-product index over ``n`` vectors of ``dim`` dimensions that arrive in
    ``batches`` (in gallery-id order), never holding them all: an index that needs training (IVF-PQ)
    is trained on ``sample`` first (an array, or a callable giving it only when training is needed:
    the rows :func:`training_ids` names), then filled batch by batch. Memory: one batch and the
    sample, besides the index itself (a flat index stores every vector; IVF-PQ its codes).
    Returns ``(index, info)``."""
    import faiss

    cfg = cfg or IndexConfig()
    info = resolve(cfg, n, dim)
    t0 = time.perf_counter()
    index = faiss.index_factory(dim, info["factory"], faiss.METRIC_INNER_PRODUCT)
    if info["type"] == "ivfpq":
        # faiss turns on polysemous training for IVF-PQ by default; it only serves Hamming-filtered
        # search (unused here) and multiplied the training time by ~35 on this machine.
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    if info["type"] == "ivfpq" and cfg.refine > 0:
        index = faiss.IndexRefineFlat(index)
        index.k_factor = float(cfg.refine)
    gpu = _use_gpu(cfg) and info["type"] == "ivfpq"
    if gpu:
        index = _to_gpu(index)
    if not index.is_trained:
        if sample is None:
            raise ValueError(f"{info['factory']} needs training: pass the training sample (training_ids rows)")
        x = np.ascontiguousarray(sample() if callable(sample) else sample, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != dim or len(x) == 0:
            raise ValueError(f"training sample of shape {x.shape}, expected [m, {dim}]")
        index.train(x)
        del x
    added = 0
    for b in batches:
        b = np.ascontiguousarray(b, dtype=np.float32)
        if b.ndim != 2 or b.shape[1] != dim:
            raise ValueError(f"batch of shape {b.shape}, expected [m, {dim}]")
        if len(b):
            index.add(b)
        added += len(b)
    if added != n:
        raise ValueError(f"{added} vectors came in the batches, {n} were announced")
    if gpu:
        index = faiss.index_gpu_to_cpu(index)
    set_nprobe(index, cfg.nprobe)
    info.update({"n": n, "dim": dim, "gpu_build": gpu, "build_s": round(time.perf_counter() - t0, 3),
                 "config": asdict(cfg)})
    log.info("faiss %s: %d x %d in %.2fs%s", info["factory"], n, dim, info["build_s"], " (GPU)" if gpu else "")
    return index, info


def set_nprobe(index, nprobe: int) -> None:
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return
    ivf.nprobe = int(nprobe)


def save_index(index, path: str | Path) -> None:
    import faiss

    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(p)


def load_index(path: str | Path, *, nprobe: int | None = None, gpu: Literal["auto", "never", "always"] = "never"):
    import faiss

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"faiss index not found: {p}")
    index = faiss.read_index(str(p))
    if nprobe is not None:
        set_nprobe(index, nprobe)
    if _use_gpu(IndexConfig(gpu=gpu)):
        index = _to_gpu(index)
    return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(similarities [Q, k], ids [Q, k])``; ids are -1 where fewer than k vectors exist."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None]
    k = max(1, min(int(k), index.ntotal))
    return index.search(q, k)
