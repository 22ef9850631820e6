"""Model side of the trainer: SD-1.5 components from a hub id or a local folder, the InstructPix2Pix
conv_in surgery, EMA, and tiny random models in the same layout for tests and CPU runs.

The SD-1.5 layout is one folder (or hub repo) with ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/`` and ``model_index.json``; every component loads with
``from_pretrained(path, subfolder=...)``, so a hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5``)
and a local copy take the same code path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from instructdiffusion_data.errors import ConfigError

log = logging.getLogger(__name__)

LATENT_CHANNELS = 4  # SD latents; the InstructPix2Pix UNet sees noisy latents + source latents = 8 channels


@dataclass
class Components:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any


def _is_local(path: str) -> bool:
    return Path(path).exists()


def load_components(pretrained: str, *, revision: str | None = None, local_files_only: bool = False,
                    unet_path: str | None = None, load_unet: bool = True) -> Components:
    """Load UNet, VAE, text encoder, tokenizer and DDPM scheduler (SD-1.5 layout) from ``pretrained``.

    ``unet_path`` (optional) loads the UNet from another folder/hub id (e.g. a previous stage's EMA
    UNet, already 8 channels) with the rest from ``pretrained``. ``load_unet=False``: the frozen parts
    only (``unet`` is None).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if local_files_only and not _is_local(pretrained) and "/" not in pretrained:
        raise ConfigError(f"model.pretrained: local folder not found: {pretrained}")
    kw = {"revision": revision, "local_files_only": local_files_only}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", **kw)
        text_encoder = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", **kw)
        vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae", **kw)
        noise_scheduler = DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler", **kw)
        if not load_unet:
            unet = None
        elif unet_path:
            unet = UNet2DConditionModel.from_pretrained(unet_path, local_files_only=local_files_only)
        else:
            unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", **kw)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"model.pretrained: cannot load SD-1.5 components from {pretrained!r}: {first}") from None
    return Components(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, noise_scheduler=noise_scheduler)


def widen_conv_in(unet, in_channels: int = 2 * LATENT_CHANNELS):
    """InstructPix2Pix surgery: give ``conv_in`` ``in_channels`` inputs (noisy latents + source latents).

    The first ``old`` input channels keep their trained weights; the new ones start at zero, so with
    zero source latents the widened UNet computes exactly what the original did. A UNet that already
    has ``in_channels`` (an InstructPix2Pix checkpoint, a resumed run) is returned unchanged.
    """
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        raise ConfigError(f"model: UNet conv_in has {old.in_channels} input channels, more than {in_channels}")
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                          dtype=old.weight.dtype, device=old.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)  # trained filters for the noisy latents
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    log.info("conv_in widened %d -> %d input channels (new weights zero)", old.in_channels, in_channels)
    return unet


def check_unet_for_mode(unet, mode: str) -> None:
    """Adaptation (text-to-image) trains the 4-channel UNet as it is; an 8-channel (InstructPix2Pix)
    UNet has no text-to-image form."""
    if mode == "adapt" and unet.config.in_channels != LATENT_CHANNELS:
        raise ConfigError(f"mode adapt: the UNet has {unet.config.in_channels} input channels; adaptation "
                          f"fine-tunes a {LATENT_CHANNELS}-channel text-to-image UNet (SD-1.5 as released)")


def require_package(module: str, pip_name: str, key: str) -> None:
    """One line, before anything loads, when an option needs a package that is not installed."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{key}: needs {pip_name}, which is not installed (pip install {pip_name}), "
                          f"or turn {key} off")


def enable_xformers(unet) -> None:
    require_package("xformers", "xformers", "model.enable_xformers_memory_efficient_attention")
    unet.enable_xformers_memory_efficient_attention()
    log.info("xformers memory-efficient attention on (instead of PyTorch SDPA)")


def make_optimizer(params, *, lr: float, betas: tuple[float, float], weight_decay: float, eps: float,
                   use_8bit_adam: bool = False):
    """AdamW, or bitsandbytes' AdamW8bit (``optim.use_8bit_adam``), as diffusers' examples choose."""
    if use_8bit_adam:
        require_package("bitsandbytes", "bitsandbytes", "optim.use_8bit_adam")
        import bitsandbytes as bnb

        cls = bnb.optim.AdamW8bit
    else:
        cls = torch.optim.AdamW
    return cls(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)


def weights_digest(module) -> str:
    """sha256 of a module's state (names and raw bytes, in order): equal on every rank of a
    data-parallel run, written into each rank's checkpoint state."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def freeze(*modules) -> None:
    for m in modules:
        m.requires_grad_(False)
        m.eval()


def make_ema(unet, decay: float):
    """EMA of the UNet weights (diffusers' EMAModel: ``state_dict``/``load_state_dict`` for checkpoints,
    ``store``/``copy_to``/``restore`` to evaluate with the EMA weights)."""
    from diffusers import UNet2DConditionModel
    from diffusers.training_utils import EMAModel

    return EMAModel(unet.parameters(), decay=decay, model_cls=UNet2DConditionModel, model_config=unet.config)


# --- tiny models for tests and CPU runs ---------------------------------------------------------

def _byte_vocab() -> list[str]:
    """GPT-2/CLIP byte-to-unicode alphabet: 256 printable characters standing for the 256 bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def make_tiny_tokenizer(out: Path):
    """A real CLIP BPE tokenizer with a byte-level vocabulary (no merges): every text tokenises,
    one token per character; written as vocab.json + merges.txt like SD-1.5's."""
    from transformers import CLIPTokenizer

    chars = _byte_vocab()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    tok.save_pretrained(str(out))
    return tok


def make_tiny_model(out: str | Path, *, seed: int = 0, sample_size: int = 64) -> Path:
    """Write a tiny random SD-1.5-layout model to ``out`` (4-channel UNet, as SD-1.5 ships; the
    trainer widens it). ~1 MB, built in about a second. ``sample_size`` = image size in pixels."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tok = make_tiny_tokenizer(out / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, projection_dim=32))
    text_encoder.save_pretrained(out / "text_encoder")
    # factor-8 VAE like SD's (4 blocks), tiny widths
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4,
                        sample_size=sample_size)
    vae.save_pretrained(out / "vae")
    unet = UNet2DConditionModel(
        sample_size=sample_size // 8, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
        attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    unet.save_pretrained(out / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  clip_sample=False, steps_offset=1).save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None], "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=1))
    log.info("tiny SD-1.5-layout model written to %s", out)
    return out
