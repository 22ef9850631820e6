"""CLIP-Sim and the aesthetic predictor's score (paper section 4.4, Table 5).

- **CLIP-Sim** = 100 x cosine(CLIP image embedding of the edited image, CLIP text embedding of the
  target caption), open_clip ``ViT-L-14`` with the ``openai`` weights by default (the paper's 29.6 ->
  29.9 are on this scale). Not clipped at 0.
- **AP**: the LAION *improved aesthetic predictor* (``sac+logos+ava1-l14-linearMSE.pth``, the ``mlp``
  head of :mod:`..models.aesthetics`) on the same image embedding; it needs 768-d ViT-L/14 embeddings.

The paper notes that an unchanged image can score well on both; each report therefore also gives the
same two numbers for the unedited source image (``source_clip_sim``, ``source_aesthetic``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..models.aesthetics import EMBED_DIM

log = logging.getLogger(__name__)

METRICS = ("clip_sim", "aesthetic", "source_clip_sim", "source_aesthetic")


def clip_sim(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """Row-wise 100 x cosine of two [N, D] arrays (normalised here, whatever their norm)."""
    a = np.asarray(image_emb, np.float64)
    b = np.asarray(text_emb, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"clip_sim: expected two [N, D] arrays of one shape, got {a.shape} and {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return 100.0 * (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)


@dataclass
class MetricConfig:
    clip_model: str = "ViT-L-14"
    clip_pretrained: str | None = "openai"  # an open_clip tag or a local checkpoint file
    clip_model_config: str | None = None  # open_clip architecture JSON for a custom (e.g. tiny) model
    aesthetic_weights: str | None = None  # sac+logos+ava1-l14-linearMSE.pth; None: no AP
    aesthetic_head: str = "mlp"
    device: str | None = None
    batch_size: int = 32


class EditScorer:
    """CLIP-Sim and AP of edited images against their target captions."""

    def __init__(self, cfg: MetricConfig):
        from ..models.aesthetics import AestheticPredictor
        from ..models.clip import ClipEmbedder

        self.cfg = cfg
        self.clip = ClipEmbedder(cfg.clip_model, cfg.clip_pretrained, cfg.device, model_config=cfg.clip_model_config,
                                 batch_size=cfg.batch_size)
        self.aesthetic = None
        if cfg.aesthetic_weights:
            if self.clip.dim != EMBED_DIM:
                raise ConfigError(f"aesthetic_weights: the LAION head needs {EMBED_DIM}-d ViT-L/14 image embeddings, "
                                  f"clip model {cfg.clip_model} gives {self.clip.dim}-d")
            self.aesthetic = AestheticPredictor(cfg.aesthetic_weights, cfg.aesthetic_head, self.clip.device)
        self._text_cache: dict[str, np.ndarray] = {}

    def describe(self) -> dict:
        return {"clip": self.clip.model_id, "clip_dim": self.clip.dim,
                "aesthetic": self.aesthetic.model_id if self.aesthetic else None}

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        todo = sorted({t for t in texts if t not in self._text_cache})
        if todo:
            for t, v in zip(todo, self.clip.embed_texts(todo)):
                self._text_cache[t] = v
        return np.stack([self._text_cache[t] for t in texts]) if texts else np.zeros((0, self.clip.dim), np.float32)

    def score(self, images: Sequence[np.ndarray], captions: Sequence[str]) -> dict[str, np.ndarray]:
        """RGB uint8 images and one caption each -> ``clip_sim`` [N] and ``aesthetic`` [N] (NaN without a head)."""
        if len(images) != len(captions):
            raise ValueError(f"score: {len(images)} images but {len(captions)} captions")
        img = self.clip.embed_images(list(images))
        out = {"clip_sim": clip_sim(img, self.text_embeddings(list(captions)))}
        out["aesthetic"] = (self.aesthetic.predict(img).astype(np.float64) if self.aesthetic is not None
                            else np.full(len(images), np.nan))
        return out


def _stats(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def summarise(records: Sequence[dict], categories: Sequence[str]) -> dict:
    """Per-sample records (``category`` and the :data:`METRICS`) -> ``{"overall": {...}, "per_category":
    {category: {...}}}``, each metric as mean, sample std and count (the overall mean is over samples,
    not over category means)."""
    def block(rs: Sequence[dict]) -> dict:
        b: dict = {"samples": len(rs)}
        for m in METRICS:
            b[m] = _stats([r.get(m) for r in rs])
        return b

    return {"overall": block(records),
            "per_category": {c: block([r for r in records if r["category"] == c]) for c in categories}}


def format_table(summary: dict, title: str = "") -> str:
    """The summary as a fixed-width text table (CLIP-Sim and AP, edited and unedited source)."""
    def f(s: dict) -> str:
        return "      -" if s["mean"] is None else f"{s['mean']:7.2f}"

    head = f"{'category':<10} {'n':>5}  {'CLIP-Sim':>8} {'AP':>7}  {'src CLIP-Sim':>12} {'src AP':>7}"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for name, b in [*summary["per_category"].items(), ("overall", summary["overall"])]:
        if name == "overall":
            lines.append("-" * len(head))
        lines.append(f"{name:<10} {b['samples']:>5}  {f(b['clip_sim']):>8} {f(b['aesthetic']):>7}  "
                     f"{f(b['source_clip_sim']):>12} {f(b['source_aesthetic']):>7}")
    return "\n".join(lines)
