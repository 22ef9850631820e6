"""The quality filter's scorers: each computes its scores for a batch of pairs into the pair's scores.

A scorer is a callable over a list of :class:`Item` (one per row in scope: the decoded source and
target, the scores so far, notes on what was skipped); it never decides anything. The ``quality_filter``
stage runs them in order, then hands the scores to the rules of :mod:`.quality`, which decide.

- :class:`ClipEmbeddings`: CLIP vectors of both images (``profile: clip``; shared by the next two).
- :class:`AestheticScorer`: ``aesthetic_src`` / ``aesthetic_tgt`` / ``aesthetic_diff`` (LAION head on
  CLIP, or the weight-free classical score 0-10 with its measurements in ``Item.classical``).
- :class:`GiqaScorer`: ``giqa_src`` / ``giqa_tgt`` / ``giqa_diff`` against each item's GIQA reference
  (:class:`GiqaReferences`: one fixed reference, or one per source folder).
- :class:`EditChecks`: ``edit_change`` (inside the mask) and ``background_change`` (outside the mask
  dilated by ``margin`` px), mean ``|tgt - src|`` 0-255.
- :class:`ReplaceGain`: ``replace_gain`` = ``cos(tgt region, reference) - cos(src region, reference)``.

Each ``*_diff`` is ``|src - tgt|`` of the two scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..contracts import NEUTRAL, ReferencePatch
from ..errors import ConfigError, RecordError, UserError
from ..imageio import decode_gray, resize_mask
from . import classical_quality as cq
from . import quality as rules

log = logging.getLogger(__name__)

SOURCE = "source"  # giqa_reference: the folder of each row's source image (meta.file), built on first use
MIN_REFERENCE_IMAGES = 2  # a GIQA reference needs leave-one-out scores: at least two images


@dataclass
class GiqaContext:
    """A GIQA reference with what it resolves: the thresholds (``ref:pN`` -> numbers) and its info."""

    reference: Any  # giqa.GiqaReference | giqa.GiqaGMM | None (no GIQA)
    info: dict
    thresholds: dict[str, float | None]
    specs: dict[str, str]
    note: str | None = None  # why a row has no GIQA (source mode)


@dataclass
class Item:
    """One pair being scored."""

    row: dict
    src: np.ndarray | None
    tgt: np.ndarray | None
    scores: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    classical: dict = field(default_factory=dict)
    clip: dict[str, np.ndarray | None] = field(default_factory=dict)  # role -> CLIP vector
    giqa: GiqaContext | None = None
    _edit: tuple | None = None  # (src, tgt at the source size, mask) once EditChecks looked

    def image(self, role: str) -> np.ndarray | None:
        return self.src if role == "src" else self.tgt


def add_diff(items: list[Item], name: str) -> None:
    for it in items:
        sc = it.scores
        if f"{name}_src" in sc and f"{name}_tgt" in sc:
            sc[f"{name}_diff"] = abs(sc[f"{name}_src"] - sc[f"{name}_tgt"])


class ClipEmbeddings:
    """CLIP vectors of both images of each item (read from meta when stored, else computed)."""

    def __init__(self, embedder, store: bool = False):
        self.embedder = embedder
        self.store = store

    def __call__(self, items: list[Item]) -> None:
        rows = [it.row for it in items]
        for role in ("src", "tgt"):
            for it, v in zip(items, self.embedder.embed_rows(rows, role, store=self.store)):
                it.clip[role] = v


class AestheticScorer:
    """``aesthetic_{src,tgt,diff}``: the LAION predictor on CLIP vectors when ``predictor`` is given,
    else the classical score (0-10) measured at ``work_side``."""

    def __init__(self, predictor=None, work_side: int = 512):
        self.predictor = predictor
        self.work_side = work_side

    @property
    def model_id(self) -> str:
        return self.predictor.model_id if self.predictor else f"{cq.FEATURE_ID}-score"

    def __call__(self, items: list[Item]) -> None:
        for role in ("src", "tgt"):
            if self.predictor is not None:
                have = [it for it in items if it.clip.get(role) is not None]
                if have:
                    pred = self.predictor.predict(np.stack([it.clip[role] for it in have]))
                    for it, p in zip(have, pred):
                        it.scores[f"aesthetic_{role}"] = float(p)
            else:
                for it in items:
                    img = it.image(role)
                    if img is not None:
                        m = cq.measure(img, self.work_side)
                        it.scores[f"aesthetic_{role}"] = m.score()
                        it.classical[role] = {**m.as_dict(), **m.subscores()}
        add_diff(items, "aesthetic")


class GiqaReferences:
    """The GIQA reference of each row, loaded or built once per worker and path: one fixed ``where``,
    or (``where == "source"``) the folder of each row's source image, built on first use."""

    _CACHE: dict[tuple, Any] = {}  # per process: Ray reuses workers across tasks

    def __init__(self, where: str | None, extractor, thresholds: dict[str, Any], *, k: int, metric: str,
                 build_limit: int, form: str, components: int, seed: int):
        self.where = where
        self.extractor = extractor
        self.values = thresholds
        self.k, self.metric, self.build_limit = k, metric, build_limit
        self.form, self.components, self.seed = form, components, seed
        self.source_mode = where == SOURCE
        self._contexts: dict[str, GiqaContext] = {}
        self.none = self.context(None)
        self.fixed = self.context(where) if where and not self.source_mode else None

    def _load(self, where: str):
        from . import giqa, giqa_images

        ck = (str(Path(where).resolve()), self.extractor.feature_id, self.metric, self.build_limit, self.form,
              self.components)
        ref = self._CACHE.get(ck)
        if ref is None:
            if giqa_images.is_reference(where):
                ref = giqa.load_reference(where)
            else:
                log.info("building the GIQA reference from %s", where)
                ref = giqa.build_reference(where, self.extractor, metric=self.metric, limit=self.build_limit,
                                           form=self.form, components=self.components, seed=self.seed)
            self._CACHE[ck] = ref
        return ref

    def context(self, where: str | None) -> GiqaContext:
        key = str(where)
        if key in self._contexts:
            return self._contexts[key]
        ref, info, note = None, {}, None
        if where is not None:
            try:
                ref = self._load(where)
            except UserError as e:  # no readable image in a source folder
                if not self.source_mode:
                    raise ConfigError(f"quality_filter.giqa_reference: {e}") from None
                ref, note = None, "giqa: the source folder has no readable images"
            if ref is not None and ref.feature_id != self.extractor.feature_id:
                raise ConfigError(f"quality_filter.giqa_reference: {where} holds '{ref.feature_id}' "
                                  f"features, this filter computes '{self.extractor.feature_id}'")
            if ref is not None and ref.count < MIN_REFERENCE_IMAGES:
                if not self.source_mode:
                    raise ConfigError(f"quality_filter.giqa_reference: {where} holds {ref.count} readable "
                                      f"image(s); a GIQA reference needs at least {MIN_REFERENCE_IMAGES}")
                ref, note = None, f"giqa: the source folder holds fewer than {MIN_REFERENCE_IMAGES} images"
        if ref is not None:
            pct = ref.info.get("percentiles") or {}
            if getattr(ref, "form", "knn") == "knn" and ref.info.get("percentiles_k") != self.k:
                pct = ref.self_percentiles(self.k)
            info = {"reference": str(where), "form": getattr(ref, "form", "knn"), "feature": ref.feature_id,
                    "metric": ref.metric, "count": ref.count, "k": self.k, "percentiles": pct}
        try:
            thresholds, specs = rules.resolve_thresholds(self.values, info.get("percentiles"), giqa=ref is not None)
        except UserError as e:  # a bad threshold spec
            raise ConfigError(f"quality_filter.{e}") from None
        self._contexts[key] = GiqaContext(ref, info, thresholds, specs, note)
        return self._contexts[key]

    def for_row(self, row: dict) -> GiqaContext:
        if not self.source_mode:
            return self.fixed or self.none
        f = (row.get("meta") or {}).get("file")
        folder = Path(f).parent if isinstance(f, str) and f else None
        if folder is None or not folder.is_dir():
            return self.none
        return self.context(str(folder))


class GiqaScorer:
    """``giqa_{src,tgt,diff}`` against each item's reference (``Item.giqa``); pairs skip their own
    photo in the reference (``own_radius``)."""

    def __init__(self, extractor, k: int, exclude_below: float, own_radius: float):
        self.extractor = extractor
        self.k, self.exclude_below, self.own_radius = k, exclude_below, own_radius

    def _features(self, items: list[Item], role: str) -> dict[int, np.ndarray]:
        have = [i for i, it in enumerate(items) if it.image(role) is not None]
        if not have:
            return {}
        if self.extractor.feature_id.startswith("clip:") and all(items[i].clip.get(role) is not None for i in have):
            f = np.stack([items[i].clip[role] for i in have])
        else:
            f = self.extractor([items[i].image(role) for i in have])
        return dict(zip(have, f))

    def __call__(self, items: list[Item]) -> None:
        groups: dict[int, list[Item]] = {}
        for it in items:
            if it.giqa is not None and it.giqa.reference is not None:
                groups.setdefault(id(it.giqa.reference), []).append(it)
        for group in groups.values():
            ref = group[0].giqa.reference
            feats = {role: self._features(group, role) for role in ("src", "tgt")}
            pairs = [i for i in range(len(group)) if i in feats["src"] and i in feats["tgt"]]
            if pairs:
                s_src, s_tgt = ref.score_pairs(np.stack([feats["src"][i] for i in pairs]),
                                               np.stack([feats["tgt"][i] for i in pairs]),
                                               self.k, self.exclude_below, self.own_radius)
                for i, a, b in zip(pairs, s_src, s_tgt):
                    group[i].scores["giqa_src"], group[i].scores["giqa_tgt"] = float(a), float(b)
            for role in ("src", "tgt"):
                single = [i for i in feats[role] if i not in pairs]
                if single:
                    v = ref.score(np.stack([feats[role][i] for i in single]), self.k, self.exclude_below)
                    for i, x in zip(single, v):
                        group[i].scores[f"giqa_{role}"] = float(x)
        add_diff(items, "giqa")


def edit_view(it: Item) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(src, tgt at the source's size, mask as bool)`` of an edit pair, or None (noted in
    ``Item.skipped``) when an image or the mask is missing. Computed once per item."""
    if it._edit is not None:
        return it._edit or None
    row = it.row
    if it.src is None or it.tgt is None:
        it.skipped.append("edit checks: source or target missing")
        it._edit = ()
        return None
    if not row.get("mask"):
        it.skipped.append("edit checks: no mask")
        it._edit = ()
        return None
    src, tgt = it.src, it.tgt
    mask = resize_mask(decode_gray(row["mask"], record=row["key"]), src.shape[:2]) > 0
    if tgt.shape[:2] != src.shape[:2]:
        tgt = cv2.resize(tgt, (src.shape[1], src.shape[0]), interpolation=cv2.INTER_AREA)
        it.skipped.append("edit checks: target resized to the source size")
    it._edit = (src, tgt, mask)
    return it._edit


def edit_views(items: list[Item], tasks: set[str]):
    """``(item, edit_view(item))`` for the items of ``tasks`` that have both images and a mask."""
    for it in items:
        if it.row.get("task") in tasks:
            view = edit_view(it)
            if view is not None:
                yield it, view


class EditChecks:
    """``edit_change`` and ``background_change`` of the rows of ``tasks``."""

    def __init__(self, tasks: list[str], margin: int):
        self.tasks = set(tasks)
        self.margin = margin

    def __call__(self, items: list[Item]) -> None:
        for it, (src, tgt, mask) in edit_views(items, self.tasks):
            diff = np.abs(src.astype(np.int16) - tgt.astype(np.int16)).mean(axis=2)
            if mask.any():
                it.scores["edit_change"] = float(diff[mask].mean())
            else:
                it.skipped.append("edit_change: empty mask")
            k = 2 * self.margin + 1
            grown = cv2.dilate(mask.astype(np.uint8), np.ones((k, k), np.uint8)) > 0 if self.margin else mask
            outside = ~grown
            if outside.any():
                it.scores["background_change"] = float(diff[outside].mean())
            else:
                it.skipped.append("background_change: the mask covers the image")


def region_crops(src: np.ndarray, tgt: np.ndarray, mask: np.ndarray) -> list[np.ndarray] | None:
    """The mask's box of both images, pixels outside the mask :data:`NEUTRAL` grey (None: empty mask)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crops = []
    for im in (src, tgt):
        crop = im[y0:y1, x0:x1].copy()
        crop[~mask[y0:y1, x0:x1]] = NEUTRAL
        crops.append(crop)
    return crops


class ReplaceGain:
    """``replace_gain`` of the rows of ``tasks``: did the region become the reference? CLIP vectors
    with ``embedder`` (the clip profile; a vector stored under ``meta["clip"][model]["ref"]`` is used
    as is), else the gradient-only region descriptor (Poisson blending keeps a reference's gradients and
    shifts its colours). The reference is :class:`~..contracts.ReferencePatch` (``meta["reference"]``)."""

    def __init__(self, tasks: list[str], embedder=None):
        self.tasks = set(tasks)
        self.embedder = embedder

    @property
    def model_id(self) -> str:
        return self.embedder.model_id if self.embedder is not None else cq.REGION_FEATURE_ID

    def _reference(self, it: Item) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(stored CLIP vector, pixels) of the item's reference; notes why neither exists."""
        meta = it.row.get("meta") or {}
        if self.embedder is not None:
            from .clip import get_meta_embedding

            vec = get_meta_embedding(meta, self.embedder.model_id, "ref", None)
            if vec is not None:
                return vec, None
        try:
            ref = ReferencePatch.from_meta(meta, record=it.row.get("key"))
            if ref is None or not ref.has_pixels:
                it.skipped.append("replace_gain: no reference patch in meta")
                return None, None
            return None, ref.rgb(NEUTRAL, record=it.row.get("key"))
        except RecordError as e:
            it.skipped.append(f"replace_gain: reference unreadable ({e.reason})")
            return None, None

    def __call__(self, items: list[Item]) -> None:
        for it, view in edit_views(items, self.tasks):
            crops = region_crops(*view)
            if crops is None:
                it.skipped.append("replace_gain: empty mask")
                continue
            ref_vec, ref_img = self._reference(it)
            if ref_vec is None and ref_img is None:
                continue
            if self.embedder is not None:
                vecs = self.embedder.embed_images(crops + ([ref_img] if ref_vec is None else []))
                ref = ref_vec if ref_vec is not None else vecs[2]
            else:
                vecs = np.stack([cq.region_features(im) for im in crops + [ref_img]])
                ref = vecs[2]
            ref = ref / max(float(np.linalg.norm(ref)), 1e-12)
            it.scores["replace_gain"] = float(vecs[1] @ ref - vecs[0] @ ref)
