"""Trainer model and loop on CPU with a tiny SD-1.5-layout model written to disk and loaded back
through the production path: conv_in surgery, loss falls, resume equals an uninterrupted run, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from tests.helpers_trainer import make_output, one_thread, write_mixture  # noqa: F401 (one_thread: autouse)

pytestmark = pytest.mark.ml



@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from instructdiffusion_data.cli import main

    d = tmp_path_factory.mktemp("model") / "tiny-sd"
    assert main(["train", "make-tiny-model", str(d)]) == 0
    return d


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    a = make_output(root, "alpha", 12, shards=2, seed=1, corrupt=2)
    b = make_output(root, "beta", 8, shards=2, seed=2)
    return write_mixture(root / "mixture.json", {"alpha": (a, 1.0), "beta": (b, 1.0)})


def _cfg(tmp_path, tiny_model, mixture, **kw):
    from trainer.config import make_config

    base = dict(output_dir=str(tmp_path / "run"), max_train_steps=4, train_batch_size=2, checkpointing_steps=2,
                log_every_steps=1, report_to="none", save_final_model=False,
                model={"pretrained": str(tiny_model), "local_files_only": True, "ema_decay": 0.9},
                data={"mixture": str(mixture), "resolution": 32, "num_workers": 0, "shuffle_buffer": 4,
                      "shuffle_initial": 2},
                optim={"lr_warmup_steps": 1, "learning_rate": 1e-3},
                validation={"every_steps": 0, "at_end": False, "num_samples": 2, "num_inference_steps": 2})
    for k, v in kw.items():
        if isinstance(v, dict):
            base[k] = {**base.get(k, {}), **v}
        else:
            base[k] = v
    return make_config(**base)


def test_conv_in_surgery_keeps_4_channel_behaviour(tiny_model):
    from trainer.model import load_components, widen_conv_in

    c = load_components(str(tiny_model), local_files_only=True)
    unet = c.unet.eval()
    assert unet.config.in_channels == 4
    old_w = unet.conv_in.weight.detach().clone()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 4, generator=g)
    text = torch.randn(2, 5, 32, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        before = unet(x, t, text).sample
        widen_conv_in(unet)
        assert unet.config.in_channels == 8 and unet.conv_in.weight.shape[1] == 8
        assert torch.equal(unet.conv_in.weight[:, :4], old_w)
        assert torch.count_nonzero(unet.conv_in.weight[:, 4:]) == 0
        after = unet(torch.cat([x, torch.zeros_like(x)], 1), t, text).sample
        assert torch.allclose(before, after, atol=1e-6)
        # the new channels are wired: once they have weights, the source latents change the output
        unet.conv_in.weight[:, 4:].normal_(generator=g)
        moved = unet(torch.cat([x, torch.ones_like(x)], 1), t, text).sample
        assert (moved - before).abs().max() > 1e-3
    assert widen_conv_in(unet) is unet and unet.conv_in.weight.shape[1] == 8  # idempotent


def test_loss_falls_on_one_repeated_batch(tmp_path, tiny_model, mixture):
    from trainer.data import MixtureDataset, make_loader
    from trainer.loop import Trainer

    cfg = _cfg(tmp_path, tiny_model, mixture, conditioning_dropout={"text_only": 0.0, "image_only": 0.0, "both": 0.0},
               optim={"lr_warmup_steps": 0, "learning_rate": 2e-3})
    tr = Trainer(cfg)
    batch = next(iter(make_loader(MixtureDataset(tr.specs, cfg.data, tr.tokenizer, seed=0), 4)))
    losses = []
    for i in range(25):
        tr.noise_gen.manual_seed(123)  # same noise and timesteps: the objective is fixed
        # every other step with grad mode off in the caller: the step must still learn
        with torch.set_grad_enabled(i % 2 == 0):
            loss = tr.loss(batch)
        assert loss.requires_grad
        tr.accelerator.backward(loss)
        tr.optimizer.step()
        tr.optimizer.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses


def _unet_state(run_dir, step):
    from safetensors.torch import load_file

    return load_file(str(run_dir / f"checkpoint-{step}" / "unet" / "diffusion_pytorch_model.safetensors"))


def test_train_4_equals_train_2_resume_2(tmp_path, tiny_model, mixture):
    from trainer.loop import list_checkpoints, train

    straight = train(_cfg(tmp_path / "a", tiny_model, mixture, checkpointing_steps=2))
    assert straight.step == 4 and all(math.isfinite(v) for v in straight.losses)
    train(_cfg(tmp_path / "b", tiny_model, mixture, max_train_steps=2))
    resumed = train(_cfg(tmp_path / "b", tiny_model, mixture), resume="latest")
    assert resumed.step == 4 and len(resumed.losses) == 2
    assert resumed.losses == pytest.approx(straight.losses[2:], rel=1e-4)
    wa, wb = _unet_state(tmp_path / "a" / "run", 4), _unet_state(tmp_path / "b" / "run", 4)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    # EMA and the stream state travelled too
    from trainer.export import load_unet_folder

    ema_a, state_a = load_unet_folder(tmp_path / "a" / "run" / "checkpoint-4" / "unet_ema")
    ema_b, state_b = load_unet_folder(tmp_path / "b" / "run" / "checkpoint-4" / "unet_ema")
    assert state_a["optimization_step"] == state_b["optimization_step"] == 4
    for x, y in zip(ema_a.parameters(), ema_b.parameters()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    sa = json.loads((tmp_path / "a" / "run" / "checkpoint-4" / "trainer_state_rank0.json").read_text())["stream"]
    sb = json.loads((tmp_path / "b" / "run" / "checkpoint-4" / "trainer_state_rank0.json").read_text())["stream"]
    assert sa["positions"] == sb["positions"] and sa["batches"] == sb["batches"] == 4
    assert [p.name for p in list_checkpoints(tmp_path / "a" / "run")] == ["checkpoint-2", "checkpoint-4"]


@pytest.mark.slow
def test_idd_train_end_to_end_writes_checkpoints_grid_and_logs(tmp_path):
    import yaml
    from PIL import Image

    from instructdiffusion_data.cli import main

    # 5 of gamma's 8 sources are unreadable: 6 good samples cannot come without meeting some of them
    make_output(tmp_path / "shards", "gamma", 8, shards=1, seed=4, corrupt=5)
    cfg = {"output_dir": str(tmp_path / "run"), "max_train_steps": 3, "train_batch_size": 2,
           "checkpointing_steps": 1, "checkpoints_total_limit": 2, "log_every_steps": 1,
           "model": {"pretrained": str(tmp_path / "made-on-demand"), "create_tiny_if_missing": True,
                     "tiny_sample_size": 32, "local_files_only": True},
           "data": {"mixture": str(tmp_path / "no-mixture.json"), "outputs": [str(tmp_path / "shards" / "*" / "*")],
                    "resolution": 32, "num_workers": 1, "shuffle_buffer": 4, "shuffle_initial": 2},
           "optim": {"lr_warmup_steps": 1},
           "validation": {"every_steps": 2, "num_samples": 2, "num_inference_steps": 2}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]  # last K=2 kept
    grids = sorted((run / "validation").glob("*.png"))
    assert [g.name for g in grids] == ["step-0000002.png", "step-0000003.png"]
    grid = np.asarray(Image.open(grids[-1]))
    # 2 rows of source | edited | target, each with its instruction wrapped under it (no line cut)
    from trainer.validation import text_strip

    strip = text_strip("invert the colours of picture 0", 3 * 32).shape[0]
    assert strip > 18 and grid.shape == (2 * (32 + strip), 3 * 32, 3)
    assert grid[:32, :32].std() > 10  # the source image is there, not a blank
    assert list((run / "logs").rglob("events.out.tfevents.*"))
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(run / "final", subfolder="unet")
    assert unet.config.in_channels == 8
    state = json.loads((run / "checkpoint-3" / "trainer_state_rank0.json").read_text())
    assert state["step"] == 3
    assert sum(state["stream"]["corrupt"].values()) > 0  # gamma's unreadable sources: skipped, counted
