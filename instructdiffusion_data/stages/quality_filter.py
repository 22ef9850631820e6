"""``quality_filter``: scores every generated pair and drops the bad ones (paper section 3.2).

The work is split in two (docs/quality_filter.md):

* **scoring**: the scorers of :mod:`..models.quality_scorers` each compute their scores for the batch
  into ``meta["scores"]``: ``aesthetic_{src,tgt,diff}`` (LAION head on CLIP, or the weight-free classical
  score), ``giqa_{src,tgt,diff}`` (KNN GIQA against ``giqa_reference``; skipped when none),
  ``edit_change`` / ``background_change`` (edit tasks with a mask) and ``replace_gain``
  (``edit_replace``, against the reference patch of ``meta["reference"]``, :class:`..contracts.ReferencePatch`);
* **deciding**: the rules of :data:`..models.quality.RULES` compare the scores with this config's
  thresholds. A failed rule drops the row with its class (``aesthetic_tgt below minimum``) and the score
  and threshold as details; ``meta["filter"]`` (:class:`..contracts.FilterRecord`) records ``profile``,
  ``thresholds`` (the numbers used), ``failed``, ``prior_drop`` (the row's drop reason before this stage:
  ``idd filter`` re-applies thresholds from these alone), ``scorers``, ``skipped``.

It sees dropped rows too (``process_dropped``) so that auditors have their scores, but never keeps a
row that an earlier stage dropped.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..config import rng
from ..contracts import FilterRecord, Scores
from ..errors import ConfigError
from ..imageio import decode
from ..models import quality as qrules
from ..models.quality_scorers import (
    SOURCE,
    AestheticScorer,
    ClipEmbeddings,
    EditChecks,
    GiqaReferences,
    GiqaScorer,
    Item,
    ReplaceGain,
)
from ..schema import Row, drop
from ..stage import Stage, StageConfig

log = logging.getLogger(__name__)


@dataclass
class QualityFilterConfig(StageConfig):
    profile: Literal["weightfree", "clip"] = "weightfree"
    tasks: list[str] | None = None  # tasks scored and filtered; None: every task

    # -- thresholds (the rules of models.quality.RULES). A number; null turns the rule off; the GIQA ones
    # also take "ref:pN", the N-th percentile of the reference images' own leave-one-out GIQA scores.
    # Lowest aesthetic score (0-10) a target may have: below it the edited image is ugly (the paper's t1).
    aesthetic_tgt_min: float | None = field(default=4.5, metadata=rng(0, 10))
    # Lowest GIQA score a target may have: below it the edited image is unlike the good reference images
    # (the paper's t2); "ref:p5" = less typical than 95 % of the reference's own images.
    giqa_tgt_min: float | str | None = "ref:p5"
    # Largest |source - target| aesthetic score: above it the edit changed the image's quality (t3).
    aesthetic_diff_max: float | None = field(default=2.0, metadata=rng(0, 10))
    # Largest |source - target| GIQA score: above it the edit changed how typical the image looks (t3, GIQA).
    giqa_diff_max: float | str | None = field(default=None, metadata=rng(0))
    # Smallest mean |target - source| (0-255) inside the mask: below it the edit changed nothing.
    edit_change_min: float | None = field(default=4.0, metadata=rng(0, 255))
    # Largest mean |target - source| (0-255) outside the mask grown by background_margin: above it the
    # background moved.
    background_change_max: float | None = field(default=4.0, metadata=rng(0, 255))
    # Smallest cos(target region, reference) - cos(source region, reference) (-2..2): below it the region
    # did not become the reference object.
    replace_gain_min: float | None = field(default=0.0, metadata=rng(-2, 2))

    # -- edit checks
    edit_tasks: list[str] = field(default_factory=lambda: ["edit_remove", "edit_add", "edit_replace"])
    replace_tasks: list[str] = field(default_factory=lambda: ["edit_replace"])
    background_margin: int = field(default=4, metadata=rng(0))  # px the mask is dilated before the background check
    # -- weight-free scorer
    work_side: int = field(default=512, metadata=rng(16))  # longer side the classical score measures at
    # -- clip profile: open_clip + LAION head
    clip_model: str = "ViT-L-14"
    clip_pretrained: str | None = "openai"  # tag or local checkpoint file
    clip_model_config: str | None = None  # open_clip architecture JSON for a custom model
    clip_device: str | None = None
    clip_batch_size: int = field(default=32, metadata=rng(1))
    aesthetic_head: Literal["mlp", "linear"] = "mlp"
    aesthetic_weights: str | None = None  # state_dict file of the LAION head (required by profile clip)
    store_embeddings: bool = False  # write CLIP vectors into meta["clip"] for later stages/tools
    # -- GIQA
    # a built reference folder, images / a shard output to build one at setup, or "source": the folder of
    # each row's source image (meta.file), built on first use (the weight-free demo's setting)
    giqa_reference: str | None = None
    giqa_features: Literal["auto", "classical", "clip"] = "auto"  # auto: classical (weightfree) or clip
    giqa_k: int = field(default=5, metadata=rng(1))  # nearest reference images averaged
    giqa_metric: Literal["l2", "cosine"] = "l2"
    # reference features this close to a query are the query itself: skipped
    giqa_exclude_below: float = field(default=1e-6, metadata=rng(0))
    # > 0: reference images this close to either image of a pair are the pair's own photo: skipped
    giqa_own_radius: float = field(default=0.0, metadata=rng(0))
    giqa_build_limit: int = field(default=2000, metadata=rng(2))  # images used when the reference is built at setup
    giqa_form: Literal["knn", "gmm"] = "knn"  # for a reference built at setup (a saved one says its form)
    giqa_components: int = field(default=16, metadata=rng(1))  # GMM components (form gmm)


class QualityFilter(Stage):
    name = "quality_filter"
    Config = QualityFilterConfig
    process_dropped = True

    # -- driver-side checks (never change the config) -----------------------------------------
    def validate(self) -> None:
        c = self.config
        if c.profile == "clip":
            if not c.aesthetic_weights:
                raise ConfigError("quality_filter.aesthetic_weights: required with profile 'clip' "
                                  "(the LAION head's state_dict file)")
            if not Path(c.aesthetic_weights).is_file():
                raise ConfigError(f"quality_filter.aesthetic_weights: file not found: {c.aesthetic_weights}")
        if c.clip_model_config and not Path(c.clip_model_config).is_file():
            raise ConfigError(f"quality_filter.clip_model_config: file not found: {c.clip_model_config}")
        for f in ("giqa_tgt_min", "giqa_diff_max"):
            if not qrules.is_threshold_spec(getattr(c, f)):
                raise ConfigError(f"quality_filter.{f}: expected a number, null or 'ref:pN', got {getattr(c, f)!r}")
        if c.giqa_reference and c.giqa_reference != SOURCE:
            if not Path(c.giqa_reference).exists():
                raise ConfigError(f"quality_filter.giqa_reference: path not found: {c.giqa_reference}")
            from ..models.giqa_images import reference_size

            n = reference_size(c.giqa_reference, at_least=2)
            if n < 2:
                raise ConfigError(f"quality_filter.giqa_reference: {c.giqa_reference} holds {n} image(s); "
                                  "a GIQA reference needs at least 2")

    @property
    def resources(self) -> StageConfig:
        """The clip profile is a model stage: an actor pool loads CLIP once per actor, not once per task."""
        c = self.config
        if c.profile == "clip" and c.concurrency is None:
            return dataclasses.replace(c, concurrency=1)
        return c

    def finalize(self, root) -> None:
        """Every run of a pipeline with this stage leaves its filter report (histograms, drops per rule),
        streamed from the output's sidecars."""
        from ..models.quality import write_report

        write_report(root)

    # -- per worker ---------------------------------------------------------------------------
    def setup(self) -> None:
        from ..models import giqa

        c = self.config
        embedder = predictor = None
        if c.profile == "clip" or c.giqa_features == "clip":
            from ..models.clip import ClipEmbedder

            embedder = ClipEmbedder(c.clip_model, c.clip_pretrained, c.clip_device,
                                    model_config=c.clip_model_config, batch_size=c.clip_batch_size)
        if c.profile == "clip":
            from ..models.aesthetics import AestheticPredictor

            predictor = AestheticPredictor(c.aesthetic_weights, c.aesthetic_head, c.clip_device)
        feats = c.giqa_features if c.giqa_features != "auto" else ("clip" if c.profile == "clip" else "classical")
        extractor = giqa.clip_extractor(embedder) if feats == "clip" else giqa.classical_extractor()
        # a fixed reference is loaded (or built) now; "source" references on first use, per folder
        self.references = GiqaReferences(
            c.giqa_reference, extractor, {f: getattr(c, f) for f in qrules.RULES}, k=c.giqa_k,
            metric=c.giqa_metric, build_limit=c.giqa_build_limit, form=c.giqa_form,
            components=c.giqa_components, seed=self.seed)
        aesthetic = AestheticScorer(predictor, c.work_side)
        replace = ReplaceGain(c.replace_tasks, embedder if c.profile == "clip" else None)
        self.scorers = ([ClipEmbeddings(embedder, c.store_embeddings)] if embedder is not None else []) + [
            aesthetic,
            GiqaScorer(extractor, c.giqa_k, c.giqa_exclude_below, c.giqa_own_radius),
            EditChecks(c.edit_tasks, c.background_margin),
            replace,
        ]
        self.scorer_ids = {
            "aesthetic": aesthetic.model_id,
            "clip": embedder.model_id if embedder is not None else None,
            "giqa": extractor.feature_id if c.giqa_reference else None,
            "region": replace.model_id,
        }

    # -- the work -------------------------------------------------------------------------------
    def _in_scope(self, row: Row) -> bool:
        c = self.config
        return (c.tasks is None or row.get("task") in c.tasks) and bool(row.get("tgt") or row.get("src"))

    def process(self, rows: list[Row]) -> list[Row]:
        items = [Item(r, *(decode(r[role], record=r["key"]) if r.get(role) else None for role in ("src", "tgt")))
                 for r in rows if self._in_scope(r)]
        if not items:
            return rows
        for it in items:
            it.giqa = self.references.for_row(it.row)
            if it.giqa.reference is None and self.config.giqa_reference:
                it.skipped.append(it.giqa.note or "giqa: no reference for this row (source folder unknown)")
        for scorer in self.scorers:
            scorer(items)
        for it in items:
            self.decide(it)
        return rows

    def decide(self, it: Item) -> None:
        """Apply the rules to the item's scores: record everything in ``meta["filter"]`` and drop a
        row that was kept and fails a rule (one drop entry per failed rule)."""
        row, ctx = it.row, it.giqa
        meta = row.setdefault("meta", {})
        scores = Scores.from_meta(meta)
        scores.update(it.scores)
        meta["scores"] = scores.to_meta()
        failed = qrules.failures(scores.as_dict(), ctx.thresholds)
        record = FilterRecord(
            profile=self.config.profile, thresholds=dict(ctx.thresholds), failed=[f.cls for f in failed],
            prior_drop=None if row.get("keep") else (row.get("drop_reason") or "dropped"),
            scorers=dict(self.scorer_ids), stage=self.name, threshold_specs=dict(ctx.specs),
            giqa_reference=ctx.info, skipped=it.skipped, classical=it.classical)
        meta["filter"] = record.to_meta()
        if row.get("keep"):
            for f in failed:
                drop(row, f.cls, **f.detail())


STAGE = QualityFilter
