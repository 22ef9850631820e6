"""GIQA (Gu et al., "GIQA: Generated Image Quality Assessment", ECCV 2020), KNN form.

The features of a reference set of good images sit in a FAISS index. The quality of an image is
the mean, over its ``k`` nearest reference features, of ``1 / distance``: an image close to many good
images scores high, noise scores low. ``distance`` is ``l2`` (Euclidean) or ``cosine``
(``1 - cosine similarity``); reference features identical to the query (distance below
``exclude_below``, i.e. the query image itself when it is part of the reference) are skipped, so
the score stays finite and an image is not rewarded for being in its own reference. For pairs,
:meth:`GiqaReference.score_pairs` also skips the reference images within ``own_radius`` of either
image of the pair (its unedited photo, when the reference is built from the pipeline's own source
images, as in the weight-free demo).

Features are named by a ``feature_id`` that the reference records and queries must match:
``classical/1`` (weight-free, :func:`classical_quality.features`) or ``clip:<model_id>`` (open_clip,
:class:`clip.ClipEmbedder`, the paper's setting with a big reference such as LAION).

A saved reference is a folder: ``index.faiss`` (exact ``Flat`` by default; for millions of vectors
any FAISS factory string, e.g. ``IVF4096,Flat`` with ``nprobe``, see bench/bench_quality.py) and ``giqa.json`` (feature id, metric,
count, dim, where the images came from, and the leave-one-out score percentiles of the reference
itself, which make thresholds such as ``giqa_tgt_min: ref:p5`` possible).

The GMM form (``form: gmm``): a diagonal-covariance Gaussian mixture fitted by EM (seeded, numpy) to
the reference features; the score of an image is its log-likelihood under the mixture (higher is
better; percentiles are those of the reference's own scores). Saved as ``gmm.npz`` + ``giqa.json``.
:func:`load_reference` opens either form.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import ConfigError, RecordError, UserError
from ..imageio import decode
from . import classical_quality
from .giqa_images import iter_images

log = logging.getLogger(__name__)

FORMAT = "instructdiffusion-data/giqa-reference/1"
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


class FeatureExtractor:
    """``feature_id`` + ``__call__(list of RGB uint8 arrays) -> float32 [N, D]`` (L2-normalised)."""

    def __init__(self, feature_id: str, fn: Callable[[Sequence[np.ndarray]], np.ndarray]):
        self.feature_id = feature_id
        self._fn = fn

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros((0, 0), np.float32)
        return np.asarray(self._fn(images), np.float32)


def classical_extractor() -> FeatureExtractor:
    return FeatureExtractor(classical_quality.FEATURE_ID,
                            lambda ims: np.stack([classical_quality.features(im) for im in ims]))


def clip_extractor(embedder) -> FeatureExtractor:  # embedder: clip.ClipEmbedder
    return FeatureExtractor(f"clip:{embedder.model_id}", embedder.embed_images)


def _faiss():
    import faiss

    return faiss


class GiqaReference:
    """A reference feature set in a FAISS index, and the KNN GIQA score against it."""

    def __init__(self, features: np.ndarray, feature_id: str, metric: Literal["l2", "cosine"] = "l2",
                 info: dict | None = None, *, index=None, factory: str = "Flat", nprobe: int = 16):
        if metric not in ("l2", "cosine"):
            raise ConfigError(f"giqa metric: expected 'l2' or 'cosine', got {metric!r}")
        self.feature_id = feature_id
        self.metric = metric
        self.info = dict(info or {})
        faiss = _faiss()
        if index is None:
            x = np.ascontiguousarray(features, np.float32)
            if x.ndim != 2 or x.shape[0] == 0:
                raise UserError("giqa: the reference set is empty")
            if metric == "cosine":
                x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            mt = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
            try:
                index = faiss.index_factory(x.shape[1], factory, mt)
            except RuntimeError as e:
                raise ConfigError(f"giqa index: bad FAISS factory string {factory!r} ({e})") from None
            if not index.is_trained:
                index.train(x)
            index.add(x)
            self.info.update(index=factory, nprobe=nprobe)
        self.index = index
        ivf = self._ivf()
        if ivf is not None:
            ivf.nprobe = int(self.info.get("nprobe", nprobe))
        self.count = int(index.ntotal)
        self.dim = int(index.d)
        if "percentiles" not in self.info:
            self.info["percentiles"] = self.self_percentiles(5)
            self.info["percentiles_k"] = 5

    def _ivf(self):
        try:
            return _faiss().extract_index_ivf(self.index)
        except RuntimeError:
            return None

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Distances (``metric``) to the ``n`` nearest reference features, ascending, and their ids."""
        q = np.ascontiguousarray(queries, np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"giqa: queries of dim {q.shape[-1]} against a {self.dim}-d reference")
        n = min(n, self.count)
        if self.metric == "cosine":
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
            sims, ids = self.index.search(q, n)
            return np.maximum(1.0 - sims, 0.0), ids
        d2, ids = self.index.search(q, n)
        return np.sqrt(np.maximum(d2, 0.0)), ids

    def distances(self, queries: np.ndarray, n: int) -> np.ndarray:
        return self.search(queries, n)[0]

    def score(self, queries: np.ndarray, k: int = 5, exclude_below: float = 1e-6,
              exclude_ids: Sequence[set] | None = None, extra: int = 4) -> np.ndarray:
        """KNN GIQA: mean over the ``k`` nearest of ``1 / distance``. Neighbours closer than
        ``exclude_below`` (the query itself) and, per query, the ids in ``exclude_ids[i]`` are skipped."""
        if len(queries) == 0:
            return np.zeros(0, np.float32)
        d, ids = self.search(queries, k + extra)
        out = np.empty(len(d), np.float64)
        for i in range(len(d)):
            ok = d[i] >= exclude_below
            if exclude_ids is not None and exclude_ids[i]:
                ok &= ~np.isin(ids[i], list(exclude_ids[i]))
            near = d[i][ok & (ids[i] >= 0)][:k]
            out[i] = float(np.mean(1.0 / near)) if near.size else 0.0
        return out.astype(np.float32)

    def score_pairs(self, src: np.ndarray, tgt: np.ndarray, k: int = 5, exclude_below: float = 1e-6,
                    own_radius: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """GIQA of the source and the target of each pair; with ``own_radius`` > 0, reference images
        closer than that to either image of a pair are the pair's own (its unedited photo sits in the
        reference) and are skipped for both, so a target is not rewarded for resembling its source."""
        own: list[set] | None = None
        if own_radius > 0 and len(src):
            ds, is_ = self.search(src, 4)
            dt, it = self.search(tgt, 4)
            own = [set(is_[i][ds[i] < own_radius].tolist()) | set(it[i][dt[i] < own_radius].tolist())
                   for i in range(len(src))]
        extra = 4 + (max((len(o) for o in own), default=0) if own else 0)
        return (self.score(src, k, exclude_below, own, extra), self.score(tgt, k, exclude_below, own, extra))

    def self_percentiles(self, k: int = 5, sample: int = 2000) -> dict[str, float]:
        """Leave-one-out scores of (a sample of) the reference itself: where good images land."""
        if self.count < 2:
            return {}
        n = min(sample, self.count)
        idx = np.linspace(0, self.count - 1, n).astype(np.int64)
        ivf = self._ivf()
        if ivf is not None:
            ivf.make_direct_map()
        x = np.stack([self.index.reconstruct(int(i)) for i in idx])
        s = self.score(x, k)
        return {f"p{p}": float(np.percentile(s, p)) for p in PERCENTILES}

    # -- persistence --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        d = Path(folder)
        d.mkdir(parents=True, exist_ok=True)
        faiss = _faiss()
        faiss.write_index(self.index, str(d / "index.faiss.tmp"))
        (d / "index.faiss.tmp").replace(d / "index.faiss")
        doc = {"format": FORMAT, "form": "knn", "feature": self.feature_id, "metric": self.metric,
               "count": self.count,
               "dim": self.dim, **{k: v for k, v in self.info.items() if k not in ("format",)}}
        (d / "giqa.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
        return d

    @classmethod
    def load(cls, folder: str | Path) -> GiqaReference:
        d = Path(folder)
        doc_path, idx_path = d / "giqa.json", d / "index.faiss"
        if not doc_path.is_file() or not idx_path.is_file():
            raise ConfigError(f"{d}: not a GIQA reference (needs giqa.json and index.faiss; "
                              "build one with `idd giqa build-reference`)")
        doc = json.loads(doc_path.read_text())
        if doc.get("format") != FORMAT:
            raise ConfigError(f"{doc_path}: unknown format {doc.get('format')!r}")
        index = _faiss().read_index(str(idx_path))
        info = {k: v for k, v in doc.items() if k not in ("format", "form", "feature", "metric", "count", "dim")}
        return cls(np.zeros((0, 0)), doc["feature"], doc["metric"], info, index=index)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


class GiqaGMM:
    """GMM-GIQA: log-likelihood of an image's features under a diagonal Gaussian mixture of the
    reference features. Same scoring interface as :class:`GiqaReference` (``k`` and the exclusions
    do not apply to a density)."""

    form = "gmm"
    metric = "loglik"

    def __init__(self, means: np.ndarray, variances: np.ndarray, weights: np.ndarray, feature_id: str,
                 info: dict | None = None):
        self.means = np.asarray(means, np.float64)
        self.variances = np.asarray(variances, np.float64)
        self.weights = np.asarray(weights, np.float64)
        self.feature_id = feature_id
        self.info = dict(info or {})
        self.dim = int(self.means.shape[1])
        self.count = int(self.info.get("count", 0))

    def _log_prob(self, x: np.ndarray) -> np.ndarray:
        """[N, K] log of w_k N(x | mu_k, diag var_k)."""
        inv = 1.0 / self.variances
        maha = (x * x) @ inv.T - 2.0 * x @ (self.means * inv).T + (self.means ** 2 * inv).sum(1)
        logdet = np.log(self.variances).sum(1)
        return np.log(self.weights) - 0.5 * (maha + logdet + self.dim * np.log(2 * np.pi))

    @classmethod
    def fit(cls, x: np.ndarray, feature_id: str, components: int = 16, iters: int = 100, seed: int = 0,
            reg: float = 1e-4, info: dict | None = None) -> GiqaGMM:
        x = np.asarray(x, np.float64)
        n = len(x)
        if n < 2:
            raise UserError("giqa gmm: needs at least 2 reference images")
        k = max(1, min(components, n // 2))
        rng = np.random.default_rng(seed)
        means = x[rng.choice(n, k, replace=False)]
        var = np.tile(x.var(0) + reg, (k, 1))
        model = cls(means, var, np.full(k, 1.0 / k), feature_id, info)
        prev = -np.inf
        for _ in range(iters):
            lp = model._log_prob(x)
            ll = _logsumexp(lp, 1)
            resp = np.exp(lp - ll[:, None])
            nk = resp.sum(0) + 1e-10
            model.means = (resp.T @ x) / nk[:, None]
            model.variances = np.maximum((resp.T @ (x * x)) / nk[:, None] - model.means ** 2, 0.0) + reg
            model.weights = nk / nk.sum()
            cur = float(ll.mean())
            if abs(cur - prev) < 1e-6 * max(1.0, abs(cur)):
                break
            prev = cur
        model.count = n
        model.info.update(count=n, components=k)
        s = model.score(x)
        model.info["percentiles"] = {f"p{p}": float(np.percentile(s, p)) for p in PERCENTILES}
        model.info["percentiles_k"] = None
        return model

    def score(self, queries: np.ndarray, k: int = 5, exclude_below: float = 0.0,
              exclude_ids: Sequence[set] | None = None, extra: int = 0) -> np.ndarray:
        q = np.asarray(queries, np.float64)
        if len(q) == 0:
            return np.zeros(0, np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"giqa: queries of dim {q.shape[-1]} against a {self.dim}-d reference")
        return _logsumexp(self._log_prob(q), 1).astype(np.float32)

    def score_pairs(self, src: np.ndarray, tgt: np.ndarray, k: int = 5, exclude_below: float = 0.0,
                    own_radius: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        return self.score(src), self.score(tgt)

    def self_percentiles(self, k: int = 5, sample: int = 2000) -> dict[str, float]:
        return dict(self.info.get("percentiles") or {})

    def save(self, folder: str | Path) -> Path:
        d = Path(folder)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "gmm.npz.tmp", "wb") as fh:
            np.savez(fh, means=self.means, variances=self.variances, weights=self.weights)
        (d / "gmm.npz.tmp").replace(d / "gmm.npz")
        doc = {"format": FORMAT, "form": "gmm", "feature": self.feature_id, "metric": self.metric,
               "dim": self.dim, **{k: v for k, v in self.info.items() if k != "format"}}
        (d / "giqa.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
        return d

    @classmethod
    def load(cls, folder: str | Path) -> GiqaGMM:
        d = Path(folder)
        doc = json.loads((d / "giqa.json").read_text())
        if not (d / "gmm.npz").is_file():
            raise ConfigError(f"{d}: GMM reference without gmm.npz")
        z = np.load(d / "gmm.npz")
        info = {k: v for k, v in doc.items() if k not in ("format", "form", "feature", "metric", "dim")}
        return cls(z["means"], z["variances"], z["weights"], doc["feature"], info)


def load_reference(folder: str | Path) -> GiqaReference | GiqaGMM:
    """Either form of a saved reference (``giqa.json`` says which)."""
    d = Path(folder)
    doc_path = d / "giqa.json"
    if not doc_path.is_file():
        raise ConfigError(f"{d}: not a GIQA reference (no giqa.json; build one with `idd giqa build-reference`)")
    doc = json.loads(doc_path.read_text())
    if doc.get("format") != FORMAT:
        raise ConfigError(f"{doc_path}: unknown format {doc.get('format')!r}")
    return GiqaGMM.load(d) if doc.get("form") == "gmm" else GiqaReference.load(d)


def build_reference(path: str | Path, extractor: FeatureExtractor, *, metric: Literal["l2", "cosine"] = "l2",
                    member: Literal["src", "tgt", "both"] = "src", limit: int | None = None,
                    batch: int = 64, progress: bool = False, form: Literal["knn", "gmm"] = "knn",
                    components: int = 16, seed: int = 0, index: str = "Flat",
                    nprobe: int = 16) -> GiqaReference | GiqaGMM:
    """Features of every readable image under ``path`` in a new reference (unreadable ones are
    counted in ``info["skipped"]``, never silently lost)."""
    feats: list[np.ndarray] = []
    skipped: list[str] = []
    names: list[str] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            feats.append(extractor(pending))
            pending.clear()

    it = iter_images(path, member, limit)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="giqa reference", unit="img")
    for name, data in it:
        try:
            pending.append(decode(data, file=name))
            names.append(name)
        except RecordError as e:
            skipped.append(str(e))
            continue
        if len(pending) >= batch:
            flush()
    flush()
    if not feats:
        raise UserError(f"{path}: no readable images for a GIQA reference")
    x = np.concatenate(feats)
    info = {"source": str(Path(path).resolve()), "member": member, "skipped": skipped[:100],
            "skipped_count": len(skipped)}
    log.info("GIQA reference: %d images (%s), %d skipped", len(x), extractor.feature_id, len(skipped))
    if form == "gmm":
        return GiqaGMM.fit(x, extractor.feature_id, components=components, seed=seed, info=info)
    if form != "knn":
        raise ConfigError(f"giqa form: expected 'knn' or 'gmm', got {form!r}")
    return GiqaReference(x, extractor.feature_id, metric, info, factory=index, nprobe=nprobe)
