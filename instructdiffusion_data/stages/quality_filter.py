"""``quality_filter``: scores every generated pair and drops the bad ones (paper section 3.2).

For each row in scope (``tasks``; default every task) it computes, into ``meta["scores"]``:

* ``aesthetic_src``, ``aesthetic_tgt``, ``aesthetic_diff`` (= ``|src - tgt|``): the LAION aesthetic
  predictor on CLIP embeddings (``profile: clip``), or the weight-free classical score
  (``profile: weightfree``, :mod:`models.classical_quality`, 0-10);
* ``giqa_src``, ``giqa_tgt``, ``giqa_diff``: KNN GIQA against ``giqa_reference`` (skipped when none);
* ``edit_change`` and ``background_change`` (edit tasks with a mask): mean ``|tgt - src|`` (0-255)
  inside the mask, and outside the mask dilated by ``background_margin`` px;
* ``replace_gain`` (``edit_replace``): ``cos(tgt region, reference) - cos(src region, reference)``
  with CLIP (or the gradient-only ``classical_quality.region_features`` in the weight-free profile,
  since Poisson blending keeps a reference's gradients and shifts its colours); regions are the mask's box with
  the pixels outside the mask neutral grey; the reference patch is read from ``meta["reference"]``
  (see :func:`reference_image`; an RGBA patch's alpha is its mask), skipped when absent.

then applies the rules of :data:`models.quality.RULES` (thresholds in this config; a failed rule is
named in ``drop_reason``, e.g. ``aesthetic_tgt<4.5``) and records everything in ``meta["filter"]``:
``profile``, ``thresholds`` (the numbers used), ``failed``, ``prior_drop`` (the row's drop reason
before this stage: ``idd filter`` re-applies thresholds from these alone), ``scorers``, ``skipped``.
It sees dropped rows too (``process_dropped``) so that auditors have their scores, but never keeps a
row that an earlier stage dropped.
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from ..errors import ConfigError, RecordError, UserError
from ..imageio import decode, decode_gray, read_bytes, resize_mask
from ..models import classical_quality as cq
from ..models import quality as qrules
from ..schema import Row, drop
from ..stage import Stage, StageConfig

log = logging.getLogger(__name__)

_REF_PCT = re.compile(r"^ref:p\d+(\.\d+)?$")
_GIQA_CACHE: dict[tuple, Any] = {}
SOURCE = "source"  # giqa_reference: the folder of each row's source image (meta.file), built on first use
NEUTRAL = (128, 128, 128)  # fill outside a region's mask when regions are compared


@dataclass
class QualityFilterConfig(StageConfig):
    profile: Literal["weightfree", "clip"] = "weightfree"
    tasks: list[str] | None = None  # tasks scored and filtered; None: every task
    # -- thresholds: a number, null (rule off); GIQA ones also "ref:pN" (percentile N of the reference)
    aesthetic_tgt_min: float | None = 4.5  # t1
    giqa_tgt_min: float | str | None = "ref:p5"  # t2
    aesthetic_diff_max: float | None = 2.0  # t3, aesthetic
    giqa_diff_max: float | str | None = None  # t3, GIQA
    edit_change_min: float | None = 4.0
    background_change_max: float | None = 4.0
    replace_gain_min: float | None = 0.0
    # -- edit checks
    edit_tasks: list[str] = field(default_factory=lambda: ["edit_remove", "edit_add", "edit_replace"])
    replace_tasks: list[str] = field(default_factory=lambda: ["edit_replace"])
    background_margin: int = 4  # px the mask is dilated before the background check
    # -- weight-free scorer
    work_side: int = 512
    # -- clip profile: open_clip + LAION head
    clip_model: str = "ViT-L-14"
    clip_pretrained: str | None = "openai"  # tag or local checkpoint file
    clip_model_config: str | None = None  # open_clip architecture JSON for a custom model
    clip_device: str | None = None
    clip_batch_size: int = 32
    aesthetic_head: Literal["mlp", "linear"] = "mlp"
    aesthetic_weights: str | None = None  # state_dict file of the LAION head (required by profile clip)
    store_embeddings: bool = False  # write CLIP vectors into meta["clip"] for later stages/tools
    # -- GIQA
    # a built reference folder, images / a shard output to build one at setup, or "source": the folder of
    # each row's source image (meta.file), built on first use (the weight-free demo's setting)
    giqa_reference: str | None = None
    giqa_features: Literal["auto", "classical", "clip"] = "auto"  # auto: classical (weightfree) or clip
    giqa_k: int = 5
    giqa_metric: Literal["l2", "cosine"] = "l2"
    giqa_exclude_below: float = 1e-6  # reference features this close to a query are the query itself: skipped
    giqa_own_radius: float = 0.0  # > 0: reference images this close to either image of a pair are skipped
    giqa_build_limit: int = 2000  # images used when the reference is built at setup
    giqa_form: Literal["knn", "gmm"] = "knn"  # for a reference built at setup (a saved one says its form)
    giqa_components: int = 16  # GMM components (form gmm)


def _decode_with_alpha(data: bytes, where: str | None = None) -> np.ndarray:
    """RGB, with a PNG's alpha applied: pixels with alpha < 128 (outside the patch's mask) turn
    :data:`NEUTRAL` grey, as the source and target regions are compared (see ``_masked``)."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data[:4] == b"\x89PNG" else None
    if arr is not None and arr.ndim == 3 and arr.shape[2] == 4:
        rgb = cv2.cvtColor(arr[..., :3], cv2.COLOR_BGR2RGB)
        rgb[arr[..., 3] < 128] = NEUTRAL
        return rgb
    return decode(data, file=where)


def reference_image(meta: dict) -> np.ndarray | None:
    """The replacement's reference patch, read defensively from ``meta``: a dict under
    ``reference`` / ``ref`` / ``replacement.reference`` holding base64 image bytes
    (``patch_png_b64``, ``image_b64``, ``png_b64``, ``jpg_b64``, ``patch_b64``; an RGBA PNG's alpha is the
    patch's mask) or a ``file`` / ``path`` / ``image`` path with an optional ``bbox`` / ``box``
    ``[x, y, w, h]`` crop; or a plain path string."""
    cands = [meta.get("reference"), meta.get("ref")]
    rep = meta.get("replacement")
    if isinstance(rep, dict):
        cands.append(rep.get("reference"))
    for c in cands:
        if isinstance(c, str):
            c = {"file": c}
        if not isinstance(c, dict):
            continue
        for k in ("patch_png_b64", "image_b64", "png_b64", "jpg_b64", "patch_b64"):
            if isinstance(c.get(k), str):
                try:
                    return _decode_with_alpha(base64.b64decode(c[k]))
                except (ValueError, RecordError):
                    continue
        path = next((c[k] for k in ("file", "path", "image") if isinstance(c.get(k), str)), None)
        if path and Path(path).is_file():
            img = _decode_with_alpha(read_bytes(path), path)
            box = c.get("bbox") or c.get("box")
            if isinstance(box, (list, tuple)) and len(box) == 4:
                x, y, w, h = (round(float(v)) for v in box)
                x0, y0 = max(0, x), max(0, y)
                x1, y1 = min(img.shape[1], x + max(1, w)), min(img.shape[0], y + max(1, h))
                if x1 > x0 and y1 > y0:
                    img = img[y0:y1, x0:x1]
            return img
    return None


class QualityFilter(Stage):
    name = "quality_filter"
    Config = QualityFilterConfig
    process_dropped = True

    # -- driver-side checks ----------------------------------------------------------------
    def validate(self) -> None:
        c = self.config
        if c.profile == "clip":
            if not c.aesthetic_weights:
                raise ConfigError("quality_filter.aesthetic_weights: required with profile 'clip' "
                                  "(the LAION head's state_dict file)")
            c_path = Path(c.aesthetic_weights)
            if not c_path.is_file():
                raise ConfigError(f"quality_filter.aesthetic_weights: file not found: {c.aesthetic_weights}")
            if c.concurrency is None:
                c.concurrency = 1  # a model stage: an actor pool loads CLIP once per actor, not once per task
        if c.clip_model_config and not Path(c.clip_model_config).is_file():
            raise ConfigError(f"quality_filter.clip_model_config: file not found: {c.clip_model_config}")
        if c.giqa_reference and c.giqa_reference != SOURCE and not Path(c.giqa_reference).exists():
            raise ConfigError(f"quality_filter.giqa_reference: path not found: {c.giqa_reference}")
        for f in ("giqa_tgt_min", "giqa_diff_max"):
            v = getattr(c, f)
            if isinstance(v, str) and not _REF_PCT.match(v.strip()) and v.strip().lower() not in ("none", "null"):
                raise ConfigError(f"quality_filter.{f}: expected a number, null or 'ref:pN', got {v!r}")
        if c.giqa_k < 1:
            raise ConfigError(f"quality_filter.giqa_k: must be >= 1, got {c.giqa_k}")
        if c.background_margin < 0:
            raise ConfigError(f"quality_filter.background_margin: must be >= 0, got {c.background_margin}")

    # -- per worker ---------------------------------------------------------------------------
    def finalize(self, root) -> None:
        """Every run of a pipeline with this stage leaves its filter report (histograms, drops per rule)."""
        from ..models.quality import write_report

        write_report(root)

    def setup(self) -> None:
        from ..models import giqa

        c = self.config
        self.embedder = None
        self.predictor = None
        if c.profile == "clip" or c.giqa_features == "clip":
            from ..models.clip import ClipEmbedder

            self.embedder = ClipEmbedder(c.clip_model, c.clip_pretrained, c.clip_device,
                                         model_config=c.clip_model_config, batch_size=c.clip_batch_size)
        if c.profile == "clip":
            from ..models.aesthetics import AestheticPredictor

            self.predictor = AestheticPredictor(c.aesthetic_weights, c.aesthetic_head, c.clip_device)
        feats = c.giqa_features if c.giqa_features != "auto" else ("clip" if c.profile == "clip" else "classical")
        self.giqa_extractor = giqa.clip_extractor(self.embedder) if feats == "clip" else giqa.classical_extractor()
        self._contexts: dict[str, tuple[Any, dict, dict, dict]] = {}
        self.source_mode = c.giqa_reference == SOURCE
        # a fixed reference is loaded (or built) now; "source" references on first use, per folder
        self.fixed = self._context(c.giqa_reference) if c.giqa_reference and not self.source_mode else None
        if not c.giqa_reference:
            self.fixed = self._context(None)
        self.scorers = {
            "aesthetic": self.predictor.model_id if self.predictor else f"{cq.FEATURE_ID}-score",
            "clip": self.embedder.model_id if self.embedder else None,
            "giqa": self.giqa_extractor.feature_id if c.giqa_reference else None,
            "region": (self.embedder.model_id if c.profile == "clip" else cq.REGION_FEATURE_ID),
        }

    def _context(self, where: str | None) -> tuple[Any, dict, dict, dict]:
        """``(reference, giqa_info, thresholds, threshold_specs)`` for a GIQA reference path (None: no
        GIQA). GIQA thresholds such as ``ref:p5`` resolve against that reference's percentiles."""
        from ..models import giqa

        key = str(where)
        if key in self._contexts:
            return self._contexts[key]
        c = self.config
        ref, info = None, {}
        if where is not None:
            ck = (str(Path(where).resolve()), self.giqa_extractor.feature_id, c.giqa_metric, c.giqa_build_limit,
                  c.giqa_form, c.giqa_components)
            ref = _GIQA_CACHE.get(ck)
            if ref is None:
                if giqa.is_reference(where):
                    ref = giqa.load_reference(where)
                else:
                    log.info("building the GIQA reference from %s", where)
                    ref = giqa.build_reference(where, self.giqa_extractor, metric=c.giqa_metric,
                                               limit=c.giqa_build_limit, form=c.giqa_form,
                                               components=c.giqa_components, seed=self.seed)
                _GIQA_CACHE[ck] = ref
            if ref.feature_id != self.giqa_extractor.feature_id:
                raise ConfigError(f"quality_filter.giqa_reference: {where} holds '{ref.feature_id}' "
                                  f"features, this filter computes '{self.giqa_extractor.feature_id}'")
            pct = ref.info.get("percentiles") or {}
            if getattr(ref, "form", "knn") == "knn" and ref.info.get("percentiles_k") != c.giqa_k:
                pct = ref.self_percentiles(c.giqa_k)
            info = {"reference": str(where), "form": getattr(ref, "form", "knn"), "feature": ref.feature_id,
                    "metric": ref.metric, "count": ref.count, "k": c.giqa_k, "percentiles": pct}
        thresholds: dict[str, float | None] = {}
        specs: dict[str, str] = {}
        for f in qrules.RULES:
            v = getattr(c, f)
            if f.startswith("giqa") and ref is None:
                thresholds[f] = None
                continue
            try:
                thresholds[f] = qrules.resolve_threshold(f, v, info.get("percentiles"))
            except UserError as e:  # a bad threshold spec
                raise ConfigError(f"quality_filter.{e}") from None
            if isinstance(v, str):
                specs[f] = v
        self._contexts[key] = (ref, info, thresholds, specs)
        return self._contexts[key]

    def _row_context(self, row: Row) -> tuple[Any, dict, dict, dict]:
        if not self.source_mode:
            return self.fixed
        f = (row.get("meta") or {}).get("file")
        folder = Path(f).parent if isinstance(f, str) and f else None
        if folder is None or not folder.is_dir():
            return self._context(None)
        return self._context(str(folder))

    # -- the work -------------------------------------------------------------------------------
    def _in_scope(self, row: Row) -> bool:
        return (self.config.tasks is None or row.get("task") in self.config.tasks) and bool(row.get("tgt") or row.get("src"))

    def process(self, rows: list[Row]) -> list[Row]:
        c = self.config
        scope = [r for r in rows if self._in_scope(r)]
        if not scope:
            return rows
        images = {id(r): {role: decode(r[role], record=r["key"]) if r.get(role) else None for role in ("src", "tgt")}
                  for r in scope}
        scores: dict[int, dict[str, float]] = {id(r): {} for r in scope}
        extra: dict[int, dict[str, Any]] = {id(r): {"skipped": []} for r in scope}

        # aesthetics (and CLIP embeddings, shared with GIQA when it uses CLIP)
        emb: dict[str, list] = {}
        if self.embedder is not None:
            for role in ("src", "tgt"):
                emb[role] = self.embedder.embed_rows(scope, role, store=c.store_embeddings)
        for role in ("src", "tgt"):
            if self.predictor is not None:
                idx = [i for i, v in enumerate(emb[role]) if v is not None]
                if idx:
                    pred = self.predictor.predict(np.stack([emb[role][i] for i in idx]))
                    for i, p in zip(idx, pred):
                        scores[id(scope[i])][f"aesthetic_{role}"] = float(p)
            else:
                for r in scope:
                    img = images[id(r)][role]
                    if img is not None:
                        m = cq.measure(img, c.work_side)
                        scores[id(r)][f"aesthetic_{role}"] = m.score()
                        extra[id(r)].setdefault("classical", {})[role] = {**m.as_dict(), **m.subscores()}

        # GIQA, against each row's reference (one, or one per source folder with giqa_reference: source)
        ctx = {id(r): self._row_context(r) for r in scope}
        for r in scope:
            if ctx[id(r)][0] is None and c.giqa_reference:
                extra[id(r)]["skipped"].append("giqa: no reference for this row (source folder unknown)")
        ridx = {id(r): i for i, r in enumerate(scope)}
        groups: dict[int, list[Row]] = {}
        for r in scope:
            if ctx[id(r)][0] is not None:
                groups.setdefault(id(ctx[id(r)][0]), []).append(r)
        for group in groups.values():
            ref = ctx[id(group[0])][0]
            feats: dict[str, dict[int, np.ndarray]] = {}
            for role in ("src", "tgt"):
                have = [r for r in group if images[id(r)][role] is not None]
                if not have:
                    feats[role] = {}
                    continue
                if self.giqa_extractor.feature_id.startswith("clip:") and emb:
                    f = np.stack([emb[role][ridx[id(r)]] for r in have])
                else:
                    f = self.giqa_extractor([images[id(r)][role] for r in have])
                feats[role] = {id(r): v for r, v in zip(have, f)}
            pairs = [r for r in group if id(r) in feats["src"] and id(r) in feats["tgt"]]
            if pairs:
                s_src, s_tgt = ref.score_pairs(
                    np.stack([feats["src"][id(r)] for r in pairs]), np.stack([feats["tgt"][id(r)] for r in pairs]),
                    c.giqa_k, c.giqa_exclude_below, c.giqa_own_radius)
                for r, a, b in zip(pairs, s_src, s_tgt):
                    scores[id(r)]["giqa_src"], scores[id(r)]["giqa_tgt"] = float(a), float(b)
            paired = {id(r) for r in pairs}
            for role in ("src", "tgt"):
                single = [r for r in group if id(r) in feats[role] and id(r) not in paired]
                if single:
                    v = ref.score(np.stack([feats[role][id(r)] for r in single]), c.giqa_k, c.giqa_exclude_below)
                    for r, x in zip(single, v):
                        scores[id(r)][f"giqa_{role}"] = float(x)

        for name in ("aesthetic", "giqa"):
            for r in scope:
                sc = scores[id(r)]
                if f"{name}_src" in sc and f"{name}_tgt" in sc:
                    sc[f"{name}_diff"] = abs(sc[f"{name}_src"] - sc[f"{name}_tgt"])

        # edit checks
        for r in scope:
            if r.get("task") in c.edit_tasks or r.get("task") in c.replace_tasks:
                self._edit_checks(r, images[id(r)], scores[id(r)], extra[id(r)])

        for r in scope:
            self._apply(r, scores[id(r)], extra[id(r)], ctx[id(r)])
        return rows

    def _edit_checks(self, row: Row, imgs: dict, sc: dict, extra: dict) -> None:
        c = self.config
        src, tgt = imgs["src"], imgs["tgt"]
        if src is None or tgt is None:
            extra["skipped"].append("edit checks: source or target missing")
            return
        if not row.get("mask"):
            extra["skipped"].append("edit checks: no mask")
            return
        mask = resize_mask(decode_gray(row["mask"], record=row["key"]), src.shape[:2]) > 0
        if tgt.shape[:2] != src.shape[:2]:
            tgt = cv2.resize(tgt, (src.shape[1], src.shape[0]), interpolation=cv2.INTER_AREA)
            extra["skipped"].append("edit checks: target resized to the source size")
        diff = np.abs(src.astype(np.int16) - tgt.astype(np.int16)).mean(axis=2)
        if row.get("task") in c.edit_tasks:
            if mask.any():
                sc["edit_change"] = float(diff[mask].mean())
            else:
                extra["skipped"].append("edit_change: empty mask")
            k = 2 * c.background_margin + 1
            grown = cv2.dilate(mask.astype(np.uint8), np.ones((k, k), np.uint8)) > 0 if c.background_margin else mask
            outside = ~grown
            if outside.any():
                sc["background_change"] = float(diff[outside].mean())
            else:
                extra["skipped"].append("background_change: the mask covers the image")
        if row.get("task") in c.replace_tasks:
            self._replace_check(row, src, tgt, mask, sc, extra)

    def _replace_check(self, row: Row, src: np.ndarray, tgt: np.ndarray, mask: np.ndarray, sc: dict,
                       extra: dict) -> None:
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            extra["skipped"].append("replace_gain: empty mask")
            return
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crops = []
        for im in (src, tgt):  # the region only: pixels outside the mask are neutral grey
            crop = im[y0:y1, x0:x1].copy()
            crop[~mask[y0:y1, x0:x1]] = NEUTRAL
            crops.append(crop)
        meta = row.get("meta") or {}
        ref_vec = None
        if self.embedder is not None and self.config.profile == "clip":
            from ..models.clip import get_meta_embedding

            ref_vec = get_meta_embedding(meta, self.embedder.model_id, "ref", None)
        ref_img = reference_image(meta) if ref_vec is None else None
        if ref_vec is None and ref_img is None:
            extra["skipped"].append("replace_gain: no reference patch in meta")
            return
        if self.config.profile == "clip":
            vecs = self.embedder.embed_images(crops + ([ref_img] if ref_vec is None else []))
            ref = ref_vec if ref_vec is not None else vecs[2]
        else:
            vecs = np.stack([cq.region_features(im) for im in crops + [ref_img]])
            ref = vecs[2]
        ref = ref / max(float(np.linalg.norm(ref)), 1e-12)
        sc["replace_gain"] = float(vecs[1] @ ref - vecs[0] @ ref)

    def _apply(self, row: Row, sc: dict, extra: dict, context: tuple) -> None:
        _, giqa_info, thresholds, specs = context
        meta = row.setdefault("meta", {})
        meta.setdefault("scores", {}).update(sc)
        failed = qrules.evaluate(meta["scores"], thresholds)
        prior = None if row.get("keep") else (row.get("drop_reason") or "dropped")
        info: dict[str, Any] = {
            "stage": self.name, "profile": self.config.profile, "thresholds": dict(thresholds),
            "failed": failed, "prior_drop": prior, "scorers": self.scorers,
        }
        if specs:
            info["threshold_specs"] = dict(specs)
        if giqa_info:
            info["giqa_reference"] = giqa_info
        if extra.get("skipped"):
            info["skipped"] = extra["skipped"]
        if extra.get("classical"):
            info["classical"] = extra["classical"]
        meta["filter"] = info
        if row.get("keep"):
            for f in failed:
                drop(row, f)


STAGE = QualityFilter
