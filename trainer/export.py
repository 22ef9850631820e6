"""Diffusers model folders from a run: ``final/`` and ``idd train export CHECKPOINT --out DIR``.

A model folder is what ``StableDiffusionInstructPix2PixPipeline.from_pretrained(DIR)`` (edit mode) or
``StableDiffusionPipeline.from_pretrained(DIR)`` (adapt mode) loads and runs with no ``torch_dtype``:
every component stored in one dtype (fp32 by default, or fp16/bf16 on request: half the bytes; loaded
without ``torch_dtype`` every component comes up in fp32, with ``torch_dtype`` in that one), the UNet's EMA weights when
the run kept an EMA (as diffusers' ``train_instruct_pix2pix.py`` saves them), the VAE, text encoder,
tokenizer and scheduler of ``model.pretrained`` (frozen during training, so reloaded at full precision
rather than taken from the half-precision copies a bf16/fp16 run computes with).

A checkpoint ``checkpoint-N/`` holds ``unet/`` (the trained weights) and, with EMA, ``unet_ema/``
(diffusers folders with ``config.json``), plus accelerate's optimiser/scheduler/RNG state and
``trainer_state_rank<r>.json`` whose ``config`` names the pretrained model and the mode. Checkpoints
written before ``unet/`` existed (``model.safetensors`` + a pickled EMA) are exported too.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from instructdiffusion_data.errors import ConfigError, UserError

from .data import state_file

if TYPE_CHECKING:
    from .config import TrainConfig

log = logging.getLogger(__name__)

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# keys EMAModel.save_pretrained adds to unet_ema/config.json: EMA state, not UNet architecture
EMA_CONFIG_KEYS = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup",
                   "inv_gamma", "power")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (rank-0 state written), oldest first."""
    d = Path(output_dir)
    found = []
    for p in d.glob("checkpoint-*") if d.is_dir() else []:
        m = CKPT_RE.match(p.name)
        if m and (p / state_file(0)).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def resolve_resume(cfg: TrainConfig, resume: str | None) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        ck = list_checkpoints(cfg.output_dir)
        if not ck:
            log.info("resume_from_checkpoint latest: no checkpoint in %s, starting from step 0", cfg.output_dir)
            return None
        return ck[-1]
    p = Path(resume)
    if not (p / state_file(0)).is_file():
        raise ConfigError(f"resume_from_checkpoint: not a complete checkpoint: {resume}")
    return p


def load_scheduler(pretrained: str, *, revision: str | None = None, local_files_only: bool = False,
                   prediction_type: str | None = None):
    """The pretrained model's own inference scheduler (its ``scheduler/`` class, e.g. PNDM for SD-1.5)."""
    import diffusers

    kw = {"revision": revision, "local_files_only": local_files_only}
    try:
        conf = diffusers.DDPMScheduler.load_config(pretrained, subfolder="scheduler", **kw)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.pretrained: cannot read the scheduler of {pretrained!r}: {e}") from None
    cls = getattr(diffusers, str(conf.get("_class_name", "")), None) or diffusers.DDPMScheduler
    sched = cls.from_config(conf)
    if prediction_type:
        sched.register_to_config(prediction_type=prediction_type)
    return sched


def unet_copy(unet, dtype: torch.dtype, ema=None):
    """A CPU copy of ``unet`` in ``dtype``: its own weights, or the EMA's shadow weights."""
    from diffusers import UNet2DConditionModel

    out = UNet2DConditionModel.from_config(unet.config)
    if ema is not None:
        ema.copy_to(out.parameters())
    else:
        out.load_state_dict({k: v.detach().cpu() for k, v in unet.state_dict().items()})
    return out.to(dtype)


def write_pipeline(out: str | Path, unet, *, pretrained: str, mode: str = "edit", dtype: str = "fp32",
                   revision: str | None = None, local_files_only: bool = False,
                   prediction_type: str | None = None) -> Path:
    """Write a diffusers pipeline folder: ``unet`` (already a copy; cast here) + the frozen parts of
    ``pretrained`` reloaded in full precision, all in ``dtype``. Written to ``out.tmp`` then moved."""
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline

    from .model import LATENT_CHANNELS, load_components

    if dtype not in DTYPES:
        raise ConfigError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}")
    want = LATENT_CHANNELS if mode == "adapt" else 2 * LATENT_CHANNELS
    if unet.config.in_channels != want:
        raise ConfigError(f"the UNet has {unet.config.in_channels} input channels; a {mode}-mode model needs {want}")
    td = DTYPES[dtype]
    c = load_components(pretrained, revision=revision, local_files_only=local_files_only, load_unet=False)
    parts: dict[str, Any] = dict(vae=c.vae.to(td), text_encoder=c.text_encoder.to(td), tokenizer=c.tokenizer,
                                 unet=unet.to(td), safety_checker=None, feature_extractor=None,
                                 requires_safety_checker=False,
                                 scheduler=load_scheduler(pretrained, revision=revision,
                                                          local_files_only=local_files_only,
                                                          prediction_type=prediction_type))
    cls = StableDiffusionPipeline if mode == "adapt" else StableDiffusionInstructPix2PixPipeline
    pipe = cls(**parts)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp))
    if td != torch.float32:
        # diffusers loads its models (UNet, VAE) in fp32 unless given torch_dtype, transformers loads the text
        # encoder in the dtype its config names: name fp32 there too, so that a plain from_pretrained gets
        # one dtype (fp32) and from_pretrained(torch_dtype=...) another, never a mix
        conf_path = tmp / "text_encoder" / "config.json"
        conf = json.loads(conf_path.read_text())
        for k in ("dtype", "torch_dtype"):
            if k in conf:
                conf[k] = "float32"
        conf_path.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    log.info("%s model (%s) written to %s", cls.__name__, dtype, out)
    return out


def _checkpoint_config(ckpt: Path) -> dict:
    state = ckpt / "trainer_state_rank0.json"
    if not state.is_file():
        raise UserError(f"export: {ckpt} is not a complete checkpoint (no trainer_state_rank0.json)")
    cfg = json.loads(state.read_text()).get("config") or {}
    if "model" not in cfg:
        raise UserError(f"export: {state} holds no run config")
    return cfg


def load_unet_folder(path: str | Path) -> tuple[Any, dict]:
    """A UNet from a diffusers folder, and the EMA state ``EMAModel.save_pretrained`` put in its
    config (empty for a plain ``unet/``), without the unknown-key warnings of ``from_pretrained``."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    path = Path(path)
    conf = dict(UNet2DConditionModel.load_config(str(path)))
    ema_state = {k: conf.pop(k) for k in EMA_CONFIG_KEYS if k in conf}
    files = sorted(path.glob("diffusion_pytorch_model*.safetensors"))
    if not files:
        raise UserError(f"{path} has no diffusion_pytorch_model.safetensors")
    unet = UNet2DConditionModel.from_config(conf)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    unet.load_state_dict(state)
    return unet, ema_state


def _legacy_unet(ckpt: Path, cfg: dict, use_ema: bool):
    """Checkpoints from before ``unet/``: accelerate's ``model.safetensors`` and the pickled EMA
    (``custom_checkpoint_1.pkl``, registered after the LR scheduler)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from .model import widen_conv_in

    m = cfg["model"]
    src = m.get("unet") or m["pretrained"]
    kw = {} if m.get("unet") else {"subfolder": "unet", "revision": m.get("revision")}
    unet = UNet2DConditionModel.from_pretrained(src, local_files_only=bool(m.get("local_files_only")), **kw)
    if cfg.get("mode", "edit") != "adapt":
        widen_conv_in(unet)
    unet.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    ema_file = ckpt / "custom_checkpoint_1.pkl"
    if use_ema and ema_file.is_file():
        shadow = torch.load(ema_file, weights_only=False, map_location="cpu")["shadow_params"]
        with torch.no_grad():
            for p, s in zip(unet.parameters(), shadow):
                p.copy_(s)
        log.info("export: EMA weights from %s", ema_file.name)
    return unet


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, dtype: str = "fp32", use_ema: bool = True,
                      pretrained: str | None = None) -> Path:
    """``checkpoint-N/`` -> a diffusers pipeline folder at ``out`` (EMA UNet when the checkpoint has one
    and ``use_ema``). ``pretrained`` overrides the run's ``model.pretrained`` (the frozen parts moved)."""
    ckpt = Path(checkpoint)
    cfg = _checkpoint_config(ckpt)
    m = cfg["model"]
    if (ckpt / "unet").is_dir():
        which = "unet_ema" if use_ema and (ckpt / "unet_ema").is_dir() else "unet"
        unet, _ = load_unet_folder(ckpt / which)
        log.info("export: UNet from %s", ckpt / which)
    elif (ckpt / "model.safetensors").is_file():
        unet = _legacy_unet(ckpt, cfg, use_ema)
    else:
        raise UserError(f"export: {ckpt} holds no UNet (neither unet/ nor model.safetensors)")
    return write_pipeline(out, unet, pretrained=pretrained or m["pretrained"], mode=cfg.get("mode", "edit"),
                          dtype=dtype, revision=m.get("revision"), local_files_only=bool(m.get("local_files_only")),
                          prediction_type=m.get("prediction_type"))
