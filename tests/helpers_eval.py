"""Tiny models and a small benchmark output for the evaluation and alignment-candidate tests.

- :func:`make_ip2p_model`: the trainer's tiny SD-1.5-layout model with conv_in widened to 8 channels,
  saved as an InstructPix2Pix pipeline folder (what ``runs/<name>/final`` holds);
- :func:`make_tiny_clip`: an open_clip architecture JSON (768-d, so the LAION head fits) and a checkpoint;
- :func:`make_aesthetic_head`: a state_dict in the published improved-predictor layout;
- :func:`make_benchmark`: the demo editing benchmark built by ``idd benchmark build``.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_CLIP_NAME = "idd-test-eval-clip"
# 768-d like ViT-L/14 (the aesthetic head's input); the full BPE vocabulary so open_clip's tokenizer fits
TINY_CLIP = {"embed_dim": 768,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}

MLP_LAYOUT = {"layers.0.weight": (1024, 768), "layers.0.bias": (1024,), "layers.2.weight": (128, 1024),
              "layers.2.bias": (128,), "layers.4.weight": (64, 128), "layers.4.bias": (64,),
              "layers.6.weight": (16, 64), "layers.6.bias": (16,), "layers.7.weight": (1, 16),
              "layers.7.bias": (1,)}

def make_ip2p_model(root: Path, seed: int = 0) -> Path:
    """``root/ip2p``: a tiny InstructPix2Pix pipeline folder (8-channel UNet), loadable with
    ``StableDiffusionInstructPix2PixPipeline.from_pretrained``."""
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from trainer.model import load_components, make_tiny_model, widen_conv_in

    sd = make_tiny_model(root / "tiny-sd", seed=seed, sample_size=64)
    c = load_components(str(sd), local_files_only=True)
    unet = widen_conv_in(c.unet)
    with torch.no_grad():  # the source channels get small non-zero weights: the edit depends on the source
        g = torch.Generator().manual_seed(seed)
        unet.conv_in.weight[:, 4:] = torch.randn(unet.conv_in.weight[:, 4:].shape, generator=g) * 0.05
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=unet, scheduler=c.noise_scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    out = root / "ip2p"
    pipe.save_pretrained(str(out))
    return out


def make_tiny_clip(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """``(architecture JSON, checkpoint)`` of a tiny 768-d open_clip model, registered with open_clip."""
    import open_clip
    import torch

    root.mkdir(parents=True, exist_ok=True)
    cfg = root / f"{TINY_CLIP_NAME}.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    ckpt = root / "tiny-clip.pt"
    torch.save(model.state_dict(), ckpt)
    return cfg, ckpt


def make_aesthetic_head(path: Path, seed: int = 0) -> Path:
    import torch

    g = torch.Generator().manual_seed(seed)
    torch.save({k: torch.randn(*s, generator=g) * 0.05 for k, s in MLP_LAYOUT.items()}, path)
    return path


def make_benchmark(root: Path, n: int = 12, *, seed: int = 0, name: str = "editbench") -> Path:
    """A benchmark output at ``root/shards/<name>/v1``, made the way a user makes one: the demo editing
    benchmark (``idd demo-data --only editbench``) through ``idd benchmark build`` (weight-free profile:
    the JSONL's captions, target captions by the offline rule)."""
    from instructdiffusion_data.benchmark import build, load_config
    from instructdiffusion_data.demo.editbench import generate

    generate(root / "demo", n, seed)
    cfg = load_config(None, name=name, version="v1", out=str(root / "shards"), seed=seed,
                      jsonl=str(root / "demo" / "editbench" / "benchmark.jsonl"))
    build(cfg)
    return root / "shards" / name / "v1"


def halves(bench: Path) -> dict:
    """``{half: {category: count}}`` from the benchmark's manifest."""
    man = json.loads((bench / "manifest.json").read_text())
    return {h: v["categories"] for h, v in man["benchmark"]["splits"].items()}
