"""Models of bench/bench_gpu.py at their real size with random weights, from configs kept in the repository.

``configs/models/*.json`` hold the published hyper-parameters (``configs/models/tiny/*.json`` the same keys
with small numbers for ``--tiny``): SD-1.5 UNet with the InstructPix2Pix 8-channel conv_in, the
PaintByExample UNet (9 channels), the SD-1.5 VAE and text encoder, BLIP-2 OPT-2.7b (a ``Blip2Config``).
open_clip ships the ViT-L-14 architecture itself (``create_model("ViT-L-14", pretrained=None)``); the tiny
run registers ``configs/models/tiny/tiny-ViT-bench.json``. Nothing is downloaded.

Each :class:`Workload` is one model with what a timed batch does (``make(dtype, compiled) -> callable``),
what one item is, and its batch size. ``build_on_meta`` builds a model on torch's meta device, so the
parameter counts of the real sizes can be checked without allocating their memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger("bench_gpu")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "models"
CLIP_REAL = "ViT-L-14"
CLIP_TINY = "tiny-ViT-bench"  # configs/models/tiny/tiny-ViT-bench.json (open_clip names a config by its file stem)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def model_config(name: str, tiny: bool) -> dict:
    """``configs/models[/tiny]/NAME.json`` without its ``_``-keys (comments, class names)."""
    path = (CONFIGS / "tiny" if tiny else CONFIGS) / f"{name}.json"
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


# --- builders (random weights, fp32 on ``device``; the caller casts) ------------------------------

def build_unet(name: str, tiny: bool, **override):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config({**model_config(name, tiny), **override})


def build_vae(tiny: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config(model_config("sd15_vae", tiny))


def build_text_encoder(tiny: bool, **ids):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**{**model_config("sd15_text_encoder", tiny), **ids}))


def build_blip2(tiny: bool):
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    return Blip2ForConditionalGeneration(Blip2Config(**model_config("blip2_opt27b", tiny)))


def clip_name(tiny: bool) -> str:
    import open_clip

    if not tiny:
        return CLIP_REAL
    if CLIP_TINY not in open_clip.list_models():
        open_clip.add_model_config(CONFIGS / "tiny" / f"{CLIP_TINY}.json")
    return CLIP_TINY


def build_clip(tiny: bool, device: str):
    import open_clip

    return open_clip.create_model(clip_name(tiny), pretrained=None, device=device)


BUILDERS: dict[str, Callable[[bool], torch.nn.Module]] = {
    "sd15_unet_ip2p": lambda tiny: build_unet("sd15_unet_ip2p", tiny),
    "pbe_unet": lambda tiny: build_unet("pbe_unet", tiny),
    "sd15_vae": build_vae,
    "sd15_text_encoder": build_text_encoder,
    "blip2_opt27b": build_blip2,
}


def build_on_meta(name: str, tiny: bool = False) -> torch.nn.Module:
    """The model ``name`` (a BUILDERS key or ``clip_vit_l14``) on the meta device: shapes, no memory."""
    with torch.device("meta"):
        if name == "clip_vit_l14":
            return build_clip(tiny, "meta")
        return BUILDERS[name](tiny)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_device(build: Callable[[], torch.nn.Module], device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Build with its initialisers running on ``device`` (fast on a GPU), then cast to ``dtype``."""
    with torch.device(device):
        m = build()
    return m.to(device=device, dtype=dtype).eval().requires_grad_(False)


# --- workloads ------------------------------------------------------------------------------------

@dataclass
class Workload:
    name: str
    item: str  # what one item is (the unit of items/s)
    batch: int
    make: Callable[[torch.dtype, bool], tuple[Callable[[], object], int]]  # (dtype, compiled) -> (batch fn, params)
    published: dict | None = None  # {"items_per_s": x, "source": "..."} or a per-image figure
    compile_ok: bool = True
    note: str = ""
    extra: dict = field(default_factory=dict)


def _unet_workload(name: str, tiny: bool, device: str, batch: int, published: dict | None, note: str,
                   backend: str) -> Workload:
    cfg = model_config(name, tiny)
    side = cfg["sample_size"]

    def make(dtype: torch.dtype, compiled: bool):
        unet = on_device(lambda: build_unet(name, tiny), device, dtype)
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(batch, cfg["in_channels"], side, side, generator=g, device=device).to(dtype)
        t = torch.randint(0, 1000, (batch,), generator=g, device=device)
        ctx = torch.randn(batch, 77, cfg["cross_attention_dim"], generator=g, device=device).to(dtype)
        fwd = torch.compile(unet, backend=backend) if compiled else unet

        def step():
            with torch.inference_mode():
                return fwd(x, t, ctx, return_dict=False)[0]
        return step, n_params(unet)

    return Workload(name, f"UNet pass of one {side * 8} px latent", batch, make, published, note=note,
                    extra={"latent_side": side, "image_px": side * 8})


def _vae_workload(tiny: bool, device: str, batch: int, backend: str) -> Workload:
    cfg = model_config("sd15_vae", tiny)
    side = cfg["sample_size"] // 8

    def make(dtype: torch.dtype, compiled: bool):
        vae = on_device(lambda: build_vae(tiny), device, dtype)
        z = torch.randn(batch, cfg["latent_channels"], side, side, device=device).to(dtype)
        dec = torch.compile(vae.decode, backend=backend) if compiled else vae.decode

        def step():
            with torch.inference_mode():
                return dec(z, return_dict=False)[0]
        return step, n_params(vae)

    return Workload("sd15_vae_decode", f"{cfg['sample_size']} px image decoded", batch, make, None,
                    note="the last step of every 50-step sample (SD-1.5 and PaintByExample)")


def _clip_workload(tiny: bool, device: str, batch: int, published: dict, backend: str) -> Workload:
    def make(dtype: torch.dtype, compiled: bool):
        model = on_device(lambda: build_clip(tiny, device), device, dtype)
        side = model.visual.image_size
        side = side[0] if isinstance(side, (tuple, list)) else side
        x = torch.randn(batch, 3, side, side, device=device).to(dtype)
        enc = torch.compile(model.visual, backend=backend) if compiled else model.visual

        def step():
            with torch.inference_mode():
                return torch.nn.functional.normalize(enc(x), dim=-1)
        return step, n_params(model)

    import open_clip

    px = open_clip.get_model_config(clip_name(tiny))["vision_cfg"]["image_size"]
    return Workload("clip_vit_l14", f"image embedded ({px} px, image tower)", batch, make, published,
                    note=f"open_clip {clip_name(tiny)}, pretrained=None")


def _blip2_workload(tiny: bool, device: str, batch: int, new_tokens: int, published: dict) -> Workload:
    cfg = model_config("blip2_opt27b", tiny)
    side = cfg["vision_config"]["image_size"]

    def make(dtype: torch.dtype, compiled: bool):
        model = on_device(lambda: build_blip2(tiny), device, dtype)
        px = torch.randn(batch, 3, side, side, device=device).to(dtype)

        def step():
            with torch.inference_mode():
                return model.generate(pixel_values=px, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      do_sample=False, num_beams=1)
        return step, n_params(model)

    return Workload("blip2_opt27b", f"caption ({new_tokens} new tokens, greedy)", batch, make, published,
                    compile_ok=False, note="generate() loop: eager only")


def _lama_workload(path: str | None, device: str, batch: int, side: int) -> Workload:
    def make(dtype: torch.dtype, compiled: bool):
        model = torch.jit.load(path, map_location=device).eval()
        img = torch.rand(batch, 3, side, side, device=device)
        mask = (torch.rand(batch, 1, side, side, device=device) > 0.7).float()

        def step():
            with torch.inference_mode(), torch.autocast(device_type=device.split(":")[0], dtype=dtype,
                                                        enabled=dtype != torch.float32):
                return model(img, mask)
        return step, sum(p.numel() for p in model.parameters())

    note = ("big-lama TorchScript from --lama / LAMA_MODEL (autocast)" if path else
            "the LaMa generator ships only as TorchScript (big-lama.pt, simple-lama-inpainting); "
            "no installed package holds its architecture, and nothing is downloaded. Give --lama PATH (or "
            "LAMA_MODEL) on a host that has the file")
    return Workload("lama", f"{side} px image inpainted", batch, make, None, compile_ok=False, note=note,
                    extra={"available": bool(path)})


def workloads(tiny: bool, device: str, *, lama: str | None, image_batch: int, published: dict,
              compile_backend: str = "inductor") -> list[Workload]:
    """Everything the bench times, in order (the trainer is separate: bench_gpu.train_bench)."""
    b, be = image_batch, compile_backend
    return [
        _unet_workload("sd15_unet_ip2p", tiny, device, 2 * b, published.get("sd15"),
                       f"batch = {b} images x 2 (classifier-free guidance: conditional + unconditional)", be),
        _vae_workload(tiny, device, max(1, b // 2), be),
        _unet_workload("pbe_unet", tiny, device, 2 * b, None,
                       f"batch = {b} images x 2 (guidance scale 5: conditional + unconditional)", be),
        _clip_workload(tiny, device, 4 if tiny else 256, published.get("clip"), be),
        _blip2_workload(tiny, device, 2 if tiny else 32, 4 if tiny else 20, published.get("blip2")),
        _lama_workload(lama, device, 2 if tiny else 8, 64 if tiny else 512),
    ]
