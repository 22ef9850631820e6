"""Tiny models and a small benchmark output for the evaluation and alignment-candidate tests.

- :func:`make_ip2p_model`: the trainer's tiny SD-1.5-layout model with conv_in widened to 8 channels,
  saved as an InstructPix2Pix pipeline folder (what ``runs/<name>/final`` holds);
- :func:`make_tiny_clip`: an open_clip architecture JSON (768-d, so the LAION head fits) and a checkpoint;
- :func:`make_aesthetic_head`: a state_dict in the published improved-predictor layout;
- :func:`make_benchmark`: a benchmark output in the shard format (``meta["benchmark"]``).
"""

from __future__ import annotations

import json
from pathlib import Path

from instructdiffusion_data.imageio import encode_jpeg
from instructdiffusion_data.schema import make_key, new_row
from instructdiffusion_data.writer import ShardWriter
from tests.helpers_quality import scene

TINY_CLIP_NAME = "idd-test-eval-clip"
# 768-d like ViT-L/14 (the aesthetic head's input); the full BPE vocabulary so open_clip's tokenizer fits
TINY_CLIP = {"embed_dim": 768,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}

MLP_LAYOUT = {"layers.0.weight": (1024, 768), "layers.0.bias": (1024,), "layers.2.weight": (128, 1024),
              "layers.2.bias": (128,), "layers.4.weight": (64, 128), "layers.4.bias": (64,),
              "layers.6.weight": (16, 64), "layers.6.bias": (16,), "layers.7.weight": (1, 16),
              "layers.7.bias": (1,)}

CATEGORY_WORDS = {"remove": ("remove the {c} circle", "a picture without the {c} circle"),
                  "add": ("add a {c} square", "a picture with a {c} square"),
                  "replace": ("replace the circle with a {c} star", "a picture with a {c} star")}
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")


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


def benchmark_rows(n: int, *, seed: int = 0, size: tuple[int, int] = (48, 64)) -> list[dict]:
    """``n`` benchmark samples: categories cycle remove/add/replace, the halves alternate align/eval
    (in pairs, so that each half holds every category)."""
    cats = list(CATEGORY_WORDS)
    rows = []
    for i in range(n):
        cat = cats[i % 3]
        colour = COLOURS[i % len(COLOURS)]
        instr, target = (t.format(c=colour) for t in CATEGORY_WORDS[cat])
        split = "align" if (i // 3) % 2 == 0 else "eval"
        meta = {"record_id": f"img{i:03d}",
                "benchmark": {"caption": f"a picture of coloured circles number {i}", "target_caption": target,
                              "category": cat, "split": split}}
        rows.append(new_row(key=make_key("bench", f"img{i:03d}", 0), task=f"edit_{cat}", dataset="bench",
                            src=encode_jpeg(scene(seed * 1000 + i, *size)), instruction=instr, meta=meta))
    return rows


def make_benchmark(root: Path, n: int = 12, *, seed: int = 0, shards: int = 2) -> Path:
    """A benchmark output at ``root/benchmark/v1`` (the layout ``idd benchmark build`` writes)."""
    out = root / "benchmark" / "v1"
    rows = benchmark_rows(n, seed=seed)
    w = ShardWriter(out, output="benchmark", version="v1")
    per = (n + shards - 1) // shards
    for s in range(shards):
        w.write_shard(s, rows[s * per:(s + 1) * per])
    w.write_manifest(config={"name": "benchmark"}, extra={"name": "benchmark", "version": "v1", "roots": {}})
    return out
