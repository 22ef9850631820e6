"""Trainer config: one YAML file (``configs/trainer/*.yaml``) mapped onto dataclasses, ``--set`` overrides.

Unknown keys and wrong types stop the run before anything loads (the engine's own config checker).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from instructdiffusion_data.config import apply_overrides, build, load_yaml

from .data import DataConfig


@dataclass
class ModelConfig:
    pretrained: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # hub id or local SD-1.5-layout folder
    revision: str | None = None
    unet: str | None = None  # optional separate UNet (hub id/folder), e.g. the stage-1 EMA UNet
    local_files_only: bool = False  # never touch the network (also honoured via HF_HUB_OFFLINE=1)
    create_tiny_if_missing: bool = False  # pretrained is a folder that does not exist: write a tiny random model
    tiny_sample_size: int = 64  # image size the tiny model is built for
    gradient_checkpointing: bool = False
    use_ema: bool = True
    ema_decay: float = 0.9999  # paper: 0.9999; 0.99 for the alignment fine-tune
    prediction_type: Literal["epsilon", "v_prediction"] | None = None  # None: the scheduler's own


@dataclass
class OptimConfig:
    learning_rate: float = 1e-4
    scale_lr: bool = False  # multiply by batch size * accumulation * processes
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "constant_with_warmup"  # any diffusers.optimization.get_scheduler name
    lr_warmup_steps: int = 500
    max_grad_norm: float = 1.0  # 0: no clipping


@dataclass
class DropoutConfig:
    """Conditioning dropout for classifier-free guidance (InstructPix2Pix): per sample, drop the text
    only, the source image only, or both, with these probabilities."""

    text_only: float = 0.05
    image_only: float = 0.05
    both: float = 0.05


@dataclass
class ValidationConfig:
    every_steps: int = 1000  # 0: never (but see at_end)
    at_end: bool = True
    num_samples: int = 4  # fixed (source, instruction) pairs from the shards
    num_inference_steps: int = 20
    guidance_scale: float = 7.5  # text guidance
    image_guidance_scale: float = 1.5
    seed: int = 0


@dataclass
class TrainConfig:
    output_dir: str
    max_train_steps: int
    name: str = "instructdiffusion"
    seed: int = 0
    train_batch_size: int = 4  # per device
    gradient_accumulation_steps: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    allow_tf32: bool = True
    cpu_threads: int | None = None  # torch intra-op threads (None: torch's default); 1 helps tiny CPU runs
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 3  # keep the last K checkpoints
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    log_every_steps: int = 10
    report_to: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    save_final_model: bool = True  # write <output_dir>/final (EMA UNet in the SD layout + pipeline pieces)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    conditioning_dropout: DropoutConfig = field(default_factory=DropoutConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


def load_train_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    raw = apply_overrides(load_yaml(path), overrides or [])
    return build(TrainConfig, raw, where=Path(path).name)


def make_config(**kw) -> TrainConfig:
    """A TrainConfig from nested dicts (tests, scripts)."""
    return build(TrainConfig, kw, where="config")
