"""Trainer config: one YAML file (``configs/trainer/*.yaml``) mapped onto dataclasses, ``--set`` overrides.

Unknown keys and wrong types stop the run before anything loads (the engine's own config checker).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from instructdiffusion_data.config import apply_overrides, build, load_yaml, rng
from instructdiffusion_data.errors import ConfigError

from .data import DataConfig


@dataclass
class ModelConfig:
    pretrained: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # hub id or local SD-1.5-layout folder
    revision: str | None = None
    unet: str | None = None  # optional separate UNet (hub id/folder), e.g. the stage-1 EMA UNet
    local_files_only: bool = False  # never touch the network (also honoured via HF_HUB_OFFLINE=1)
    create_tiny_if_missing: bool = False  # pretrained is a folder that does not exist: write a tiny random model
    tiny_sample_size: int = field(default=64, metadata=rng(8))  # image size the tiny model is built for
    gradient_checkpointing: bool = False
    use_ema: bool = True
    ema_decay: float = field(default=0.9999, metadata=rng(0, 1))  # paper: 0.9999; 0.99 for the alignment fine-tune
    prediction_type: Literal["epsilon", "v_prediction"] | None = None  # None: the scheduler's own
    # xformers attention (needs the xformers package); off: PyTorch SDPA, diffusers' default
    enable_xformers_memory_efficient_attention: bool = False


@dataclass
class OptimConfig:
    learning_rate: float = field(default=1e-4, metadata=rng(0))
    scale_lr: bool = False  # multiply by batch size * accumulation * processes
    adam_beta1: float = field(default=0.9, metadata=rng(0, 1))
    adam_beta2: float = field(default=0.999, metadata=rng(0, 1))
    adam_weight_decay: float = field(default=1e-2, metadata=rng(0))
    adam_epsilon: float = field(default=1e-8, metadata=rng(0))
    lr_scheduler: str = "constant_with_warmup"  # any diffusers.optimization.get_scheduler name
    lr_warmup_steps: int = field(default=500, metadata=rng(0))
    max_grad_norm: float = field(default=1.0, metadata=rng(0))  # 0: no clipping
    # min-SNR loss weighting (Hang et al. 2023, as diffusers' --snr_gamma; 5.0 is the usual value). None: plain MSE
    snr_gamma: float | None = field(default=None, metadata=rng(0))
    use_8bit_adam: bool = False  # bitsandbytes' AdamW8bit (needs the bitsandbytes package)


@dataclass
class DropoutConfig:
    """Conditioning dropout for classifier-free guidance (InstructPix2Pix): per sample, drop the text
    only, the source image only, or both, with these probabilities."""

    text_only: float = field(default=0.05, metadata=rng(0, 1))  # probabilities
    image_only: float = field(default=0.05, metadata=rng(0, 1))
    both: float = field(default=0.05, metadata=rng(0, 1))


@dataclass
class ValidationConfig:
    every_steps: int = field(default=1000, metadata=rng(0))  # 0: never (but see at_end)
    at_end: bool = True
    num_samples: int = field(default=4, metadata=rng(0))  # fixed (source, instruction) pairs from the shards
    num_inference_steps: int = field(default=20, metadata=rng(1))
    guidance_scale: float = field(default=7.5, metadata=rng(0))  # text guidance
    image_guidance_scale: float = field(default=1.5, metadata=rng(0))
    seed: int = 0


@dataclass
class TrainConfig:
    output_dir: str
    max_train_steps: int = field(metadata=rng(1))
    name: str = "instructdiffusion"
    # edit: InstructPix2Pix training on (source, instruction, target), conv_in widened to 8 channels.
    # adapt: text-to-image fine-tune of the 4-channel UNet on the target image + caption of rows of
    # task ``adapt`` (paper 3.3, pretraining adaptation); its final/ is the model.pretrained of edit training
    mode: Literal["edit", "adapt"] = "edit"
    seed: int = 0
    train_batch_size: int = field(default=4, metadata=rng(1))  # per device
    gradient_accumulation_steps: int = field(default=1, metadata=rng(1))
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    allow_tf32: bool = True
    # torch intra-op threads (None: torch's default); 1 helps tiny CPU runs
    cpu_threads: int | None = field(default=None, metadata=rng(1))
    checkpointing_steps: int = field(default=500, metadata=rng(0))  # 0: no checkpoints
    checkpoints_total_limit: int = field(default=3, metadata=rng(0))  # keep the last K checkpoints (0: all)
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    log_every_steps: int = field(default=10, metadata=rng(1))
    # an accelerate tracker ("all": every one installed); one not installed is a one-line error
    report_to: Literal["tensorboard", "wandb", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab",
                       "trackio", "all", "none"] = "tensorboard"
    # write <output_dir>/final: a diffusers pipeline folder (EMA UNet when model.use_ema) in final_dtype
    save_final_model: bool = True
    final_dtype: Literal["fp32", "fp16", "bf16"] = "fp32"  # every component of final/ in this dtype
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


def check_options(cfg: TrainConfig) -> None:
    """Options that need a package which is not installed: one line before anything loads."""
    if cfg.report_to not in ("none", "all"):
        from accelerate.tracking import get_available_trackers

        have = {str(getattr(t, "value", t)) for t in get_available_trackers()}
        if cfg.report_to not in have:
            pkg = cfg.report_to.replace("_", "-")
            raise ConfigError(f"report_to: {cfg.report_to} is not installed (pip install {pkg}), "
                              f"or set report_to: none (or one of the installed: {', '.join(sorted(have)) or 'none'})")
    from .model import require_package

    if cfg.optim.use_8bit_adam:
        require_package("bitsandbytes", "bitsandbytes", "optim.use_8bit_adam")
    if cfg.model.enable_xformers_memory_efficient_attention:
        require_package("xformers", "xformers", "model.enable_xformers_memory_efficient_attention")
