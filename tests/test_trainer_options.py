"""Trainer options a user of diffusers' example expects (min-SNR weighting, 8-bit Adam, xformers, any
logger): missing packages are one line before anything loads; SDPA stays the default; the min-SNR
weights match a hand computation. Validation samples go round-robin over the tasks and the grid wraps
the instruction instead of cutting it."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from tests.helpers_trainer import make_output, write_mixture

pytestmark = pytest.mark.ml


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from trainer.model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny", sample_size=32)


@pytest.mark.parametrize("setting,package,key", [
    ("report_to=wandb", "wandb", "report_to"),
    ("report_to=mlflow", "mlflow", "report_to"),
    ("optim.use_8bit_adam=true", "bitsandbytes", "optim.use_8bit_adam"),
    ("model.enable_xformers_memory_efficient_attention=true", "xformers",
     "model.enable_xformers_memory_efficient_attention"),
])
def test_missing_package_is_one_line_before_anything_loads(tmp_path, capsys, setting, package, key):
    import yaml

    from instructdiffusion_data.cli import main

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    model = tmp_path / "would-be-made"
    cfg = {"output_dir": str(tmp_path / "run"), "max_train_steps": 1,
           "model": {"pretrained": str(model), "create_tiny_if_missing": True, "local_files_only": True},
           "data": {"mixture": str(tmp_path / "no-mixture.json")}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--set", setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"idd train: error: {key}:") and f"pip install {package}" in err[0]
    # checked before the data (the mixture does not exist), the model and the output folder
    assert not model.exists() and not (tmp_path / "run").exists()


def test_default_attention_is_sdpa_and_min_snr_weights(tmp_path, tiny_model):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from trainer.config import make_config
    from trainer.loop import Trainer

    out = make_output(tmp_path / "shards", "alpha", 4, shards=1)
    mix = write_mixture(tmp_path / "shards" / "mixture.json", {"alpha": (out, 1.0)})
    cfg = make_config(output_dir=str(tmp_path / "run"), max_train_steps=1, report_to="none",
                      model={"pretrained": str(tiny_model), "local_files_only": True},
                      data={"mixture": str(mix), "resolution": 32, "num_workers": 0},
                      optim={"snr_gamma": 5.0})
    tr = Trainer(cfg)
    procs = tr.accelerator.unwrap_model(tr.unet).attn_processors
    assert procs and all(isinstance(p, AttnProcessor2_0) for p in procs.values())

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 4, 4, 4, generator=g), torch.randn(4, 4, 4, 4, generator=g)
    t = torch.tensor([5, 100, 500, 999])  # SNR far above 5 at t=5, far below at t=999
    ac = tr.noise_scheduler.alphas_cumprod.double()[t]
    snr = ac / (1 - ac)
    per = ((pred.double() - target.double()) ** 2).mean(dim=(1, 2, 3))
    assert snr[0] > 5 > snr[-1]
    want_eps = (per * torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr).mean()
    assert float(tr.weighted_mse(pred, target, t)) == pytest.approx(float(want_eps), rel=1e-5)
    # v-prediction divides by SNR + 1; no snr_gamma is the plain mean squared error
    v = SimpleNamespace(cfg=SimpleNamespace(optim=SimpleNamespace(snr_gamma=5.0)),
                        noise_scheduler=SimpleNamespace(alphas_cumprod=tr.noise_scheduler.alphas_cumprod,
                                                        config=SimpleNamespace(prediction_type="v_prediction")))
    want_v = (per * torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / (snr + 1)).mean()
    assert float(Trainer.weighted_mse(v, pred, target, t)) == pytest.approx(float(want_v), rel=1e-5)
    v.cfg.optim.snr_gamma = None
    assert float(Trainer.weighted_mse(v, pred, target, t)) == pytest.approx(float(per.mean()), rel=1e-5)
    # and the training loss goes through it: one step's loss is finite
    from trainer.data import MixtureDataset, make_loader

    batch = next(iter(make_loader(MixtureDataset(tr.specs, cfg.data, tr.tokenizer, seed=0), 2)))
    assert torch.isfinite(tr.loss(batch))


def test_validation_round_robin_over_tasks(tmp_path):
    from trainer.datasets import load_mixture
    from trainer.validation import validation_pairs

    root = tmp_path / "shards"
    outs = {"kp_a": make_output(root, "kp_a", 4, shards=1, seed=1, task="keypoint"),
            "kp_b": make_output(root, "kp_b", 4, shards=1, seed=2, task="keypoint"),
            "edit_c": make_output(root, "edit_c", 4, shards=1, seed=3, task="edit"),
            "seg_d": make_output(root, "seg_d", 4, shards=1, seed=4, task="semantic_seg")}
    mix = write_mixture(root / "mixture.json", {k: (v, 1.0) for k, v in outs.items()})
    specs = load_mixture(mix)
    got = validation_pairs(specs, 6, 32)
    # one per task in turn (not the first datasets), the datasets of a task alternating
    assert [p["task"] for p in got] == ["keypoint", "edit", "semantic_seg"] * 2
    assert [p["dataset"] for p in got] == ["kp_a", "edit_c", "seg_d", "kp_b", "edit_c", "seg_d"]
    assert all(p["src"].shape == p["tgt"].shape == (32, 32, 3) for p in got)
    assert [p["key"] for p in validation_pairs(specs, 6, 32)] == [p["key"] for p in got]  # fixed


def test_grid_wraps_the_instruction_instead_of_cutting_it():
    from trainer.validation import FONT, FONT_SCALE, LINE_H, PAD, make_grid, text_strip, wrap_text

    text = ("circle the left shoulder, the right elbow and both knees of the person standing nearest to "
            "the camera, and a supercalifragilisticexpialidociouslylongwordwithoutspaces too")
    width = 96
    lines = wrap_text(text, width - 2 * PAD)
    assert len(lines) > 5
    assert all(cv2.getTextSize(ln, FONT, FONT_SCALE, 1)[0][0] <= width - 2 * PAD for ln in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")  # nothing dropped
    strip = text_strip(text, width)
    assert strip.shape == (PAD + LINE_H * len(lines) + PAD // 2, width, 3)
    last = strip[PAD + LINE_H * (len(lines) - 1): PAD + LINE_H * len(lines)]
    assert (last < 128).any()  # the last line is drawn
    panels = [np.zeros((32, 32, 3), np.uint8)] * 3
    grid = make_grid([panels, panels], [text, "short"])
    assert grid.shape == (32 + strip.shape[0] + 32 + text_strip("short", width).shape[0], width, 3)
    assert wrap_text("", 50) == [""]
