"""Shared pieces of the IEIW replacement tests: a tiny PaintByExample in the published checkpoint
layout, a tiny open_clip architecture, and demo data."""

from __future__ import annotations

import json
from pathlib import Path

# model_index.json of Fantasy-Studio/Paint-by-Example (the published layout, written by diffusers 0.11)
REAL_MODEL_INDEX = {
    "_class_name": "PaintByExamplePipeline",
    "_diffusers_version": "0.11.0.dev0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["paint_by_example", "PaintByExampleImageEncoder"],
    "requires_safety_checker": False,
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def build_tiny_paint_by_example(out_dir: Path, resolution: int = 32) -> Path:
    """Random tiny components built from configs, saved one folder each, plus the real model_index."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from diffusers.pipelines.deprecated.paint_by_example import (
        PaintByExampleImageEncoder,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    torch.manual_seed(0)
    out = Path(out_dir)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], latent_channels=4,
                        layers_per_block=1, norm_num_groups=8, sample_size=resolution)
    unet = UNet2DConditionModel(sample_size=resolution // 2, in_channels=9, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(16, 32),
                                layers_per_block=1, cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    enc = PaintByExampleImageEncoder(CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=4,
                                                      num_attention_heads=4, image_size=32, patch_size=8,
                                                      projection_dim=32), proj_size=32)
    vae.save_pretrained(out / "vae")
    unet.save_pretrained(out / "unet")
    enc.save_pretrained(out / "image_encoder")
    PNDMScheduler(skip_prk_steps=True).save_pretrained(out / "scheduler")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        out / "feature_extractor")
    # the published checkpoint ships a safety checker too (the adapter skips it unless asked)
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    clip_cfg = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                                       "num_attention_heads": 4, "vocab_size": 100},
                          vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                                         "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
                          projection_dim=32)
    StableDiffusionSafetyChecker(clip_cfg).save_pretrained(out / "safety_checker")
    (out / "model_index.json").write_text(json.dumps(REAL_MODEL_INDEX, indent=2))
    return out


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def build_tiny_open_clip(out_dir: Path, name: str = "idd-tiny-clip-replace") -> tuple[str, str, str]:
    """An open_clip config JSON and a checkpoint of random weights: (model_name, config, checkpoint)."""
    import open_clip
    import torch

    out = Path(out_dir)
    cfg = out / f"{name}.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    ckpt = out / f"{name}.pt"
    torch.save(model.state_dict(), ckpt)
    return name, str(cfg), str(ckpt)
