"""LAION aesthetic predictors on L2-normalised CLIP ViT-L/14 image embeddings (768-d).

Two heads, both loaded strictly from a ``state_dict`` file, as published:

* ``mlp``: the *improved aesthetic predictor* (christophschuhmann/improved-aesthetic-predictor,
  ``sac+logos+ava1-l14-linearMSE.pth``). Its ``MLP.layers`` is
  ``Linear(768,1024), Dropout(0.2), Linear(1024,128), Dropout(0.2), Linear(128,64), Dropout(0.1),
  Linear(64,16), Linear(16,1)``: no activations, so the state_dict keys are ``layers.0``,
  ``layers.2``, ``layers.4``, ``layers.6`` and ``layers.7`` (``.weight``/``.bias``).
* ``linear``: the older LAION-Aesthetics V1 predictor (``sa_0_4_vit_l_14_linear.pth``): one
  ``nn.Linear(768, 1)`` with keys ``weight`` and ``bias``.

Either checkpoint may be a raw state_dict, or wrapped as ``{"state_dict": ...}`` by a training
script (the key prefix ``model.`` or ``module.`` is stripped); anything else fails with a one-line
error naming the file and the missing/unexpected keys.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

log = logging.getLogger(__name__)

EMBED_DIM = 768


class AestheticMLP(nn.Module):
    """The improved aesthetic predictor's head, layer for layer (keys ``layers.{0,2,4,6,7}``)."""

    def __init__(self, input_size: int = EMBED_DIM):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build_head(kind: Literal["mlp", "linear"], input_size: int = EMBED_DIM) -> nn.Module:
    if kind == "mlp":
        return AestheticMLP(input_size)
    if kind == "linear":
        return nn.Linear(input_size, 1)
    raise ConfigError(f"aesthetic head: unknown kind {kind!r} (mlp or linear)")


def _unwrap(sd: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ConfigError(f"{path}: not a state_dict (got {type(sd).__name__})")
    for prefix in ("model.", "module."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


class AestheticPredictor:
    """``predict(embeddings [N, 768]) -> [N]`` scores (the LAION scale, roughly 1 to 10).

    Embeddings are L2-normalised here again (the heads were trained on normalised CLIP features).
    """

    def __init__(self, weights: str | Path, kind: Literal["mlp", "linear"] = "mlp", device: str | None = None):
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"aesthetic_weights: file not found: {path}")
        self.kind = kind
        self.path = path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        head = build_head(kind)
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - a corrupt file is a config error, one line
            raise ConfigError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
        sd = _unwrap(sd, path)
        try:
            head.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()
            raise ConfigError(f"{path}: does not match the '{kind}' aesthetic head: "
                              f"{' '.join(s.strip() for s in first[:3])}") from None
        self.head = head.eval().to(self.device)
        self.model_id = f"laion-aesthetic-{kind}:{path.name}"
        log.info("loaded aesthetic head %s from %s", kind, path)

    @torch.inference_mode()
    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(embeddings, np.float32), device=self.device)
        if x.ndim != 2 or x.shape[1] != EMBED_DIM:
            raise ValueError(f"aesthetic head expects [N, {EMBED_DIM}] embeddings, got {tuple(x.shape)}")
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self.head(x).squeeze(-1).float().cpu().numpy()
