"""Adaptation mode (paper 3.3, stage 1): a text-to-image fine-tune of the 4-channel UNet on the target
and caption of rows of task ``adapt``; its final/ is a StableDiffusionPipeline folder that task training
takes as model.pretrained (and widens)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from instructdiffusion_data.imageio import encode_png
from instructdiffusion_data.schema import make_key, new_row
from instructdiffusion_data.writer import ShardWriter
from tests.helpers_trainer import make_output, write_mixture

pytestmark = pytest.mark.ml


def make_adapt_output(root, name: str, n: int, *, from_task: str, seed: int = 0):
    """``n`` adaptation rows: a target image, its caption + suffix, no source."""
    rng = np.random.default_rng(seed)
    out = root / name / "v1"
    rows = [new_row(key=make_key(name, i, "v0"), task="adapt", dataset=name,
                    tgt=encode_png(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)),
                    instruction=f"a photo of thing {i} surrounded with a red circle",
                    meta={"record_id": i, "adapt": {"from_task": from_task}}) for i in range(n)]
    w = ShardWriter(out)
    w.write_shard(0, rows)
    w.write_manifest(config={"name": name}, extra={"name": name, "version": "v1", "mixture_weight": 1.0})
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from trainer.model import make_tiny_model

    root = tmp_path_factory.mktemp("adapt")
    model = make_tiny_model(root / "tiny", sample_size=32)
    kp = make_adapt_output(root / "shards", "adapt_kp", 6, from_task="keypoint", seed=1)
    ss = make_adapt_output(root / "shards", "adapt_ss", 6, from_task="semantic_seg", seed=2)
    adapt_mix = write_mixture(root / "shards" / "mixture-adapt.json", {"adapt_kp": (kp, 1.0), "adapt_ss": (ss, 1.0)})
    edit = make_output(root / "shards", "edits", 6, shards=1, seed=3)
    edit_mix = write_mixture(root / "shards" / "mixture.json", {"edits": (edit, 1.0)})
    return root, model, adapt_mix, edit_mix


def _cfg(out, pretrained, mixture, **kw):
    from trainer.config import make_config

    base = dict(output_dir=str(out), max_train_steps=2, train_batch_size=2, checkpointing_steps=2,
                log_every_steps=1, report_to="none",
                model={"pretrained": str(pretrained), "local_files_only": True, "ema_decay": 0.5},
                data={"mixture": str(mixture), "resolution": 32, "num_workers": 0, "shuffle_buffer": 4,
                      "shuffle_initial": 2},
                optim={"lr_warmup_steps": 0, "learning_rate": 1e-2},
                validation={"every_steps": 0, "at_end": False})
    for k, v in kw.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in base else v
    return make_config(**base)


def test_adapt_run_gives_a_text_to_image_model_that_task_training_widens(setup):
    from diffusers import StableDiffusionPipeline
    from PIL import Image
    from safetensors.torch import load_file

    from trainer.loop import Trainer, train

    root, model, adapt_mix, edit_mix = setup
    run = root / "adapt-run"
    res = train(_cfg(run, model, adapt_mix, mode="adapt",
                     validation={"at_end": True, "num_samples": 2, "num_inference_steps": 2}))
    assert res.step == 2 and all(np.isfinite(res.losses))
    # validation: generated | target with the caption under each, one row per source task in turn
    rows = json.loads((run / "validation" / "step-0000002.json").read_text())
    assert [r["task"] for r in rows] == ["adapt/keypoint", "adapt/semantic_seg"]
    grid = np.asarray(Image.open(res.validation_images[-1]))
    assert grid.shape[1] == 2 * 32
    # the checkpoint and final/ hold a 4-channel text-to-image UNet
    ck = run / "checkpoint-2"
    assert json.loads((ck / "unet" / "config.json").read_text())["in_channels"] == 4
    final = run / "final"
    assert json.loads((final / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    pipe = StableDiffusionPipeline.from_pretrained(str(final))
    assert pipe.unet.config.in_channels == 4
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a photo of a dog surrounded with a red circle", height=32, width=32, num_inference_steps=2,
               output_type="np", generator=torch.Generator().manual_seed(0)).images[0]
    assert img.shape == (32, 32, 3) and np.isfinite(img).all()
    adapted = load_file(str(final / "unet" / "diffusion_pytorch_model.safetensors"))
    before = load_file(str(model / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(adapted[k], before[k]) for k in before)  # training moved the weights
    assert all(torch.equal(adapted[k], v) for k, v in
               load_file(str(ck / "unet_ema" / "diffusion_pytorch_model.safetensors")).items())  # EMA weights

    # task training from the adapted model: conv_in widened from the adapted filters, new channels zero
    tr = Trainer(_cfg(root / "task-run", final, edit_mix))
    unet = tr.accelerator.unwrap_model(tr.unet)
    assert unet.config.in_channels == 8
    assert torch.equal(unet.conv_in.weight[:, :4], adapted["conv_in.weight"])
    assert torch.count_nonzero(unet.conv_in.weight[:, 4:]) == 0
    from trainer.data import MixtureDataset, make_loader

    batch = next(iter(make_loader(MixtureDataset(tr.specs, tr.cfg.data, tr.tokenizer, seed=0), 2)))
    assert torch.isfinite(tr.loss(batch))


def test_adapt_mode_refuses_an_8_channel_unet(setup, tmp_path):
    from instructdiffusion_data.errors import ConfigError
    from trainer.loop import Trainer
    from trainer.model import load_components, widen_conv_in

    root, model, adapt_mix, _ = setup
    wide = tmp_path / "unet8"
    widen_conv_in(load_components(str(model), local_files_only=True).unet).save_pretrained(wide)
    with pytest.raises(ConfigError, match="mode adapt: the UNet has 8 input channels"):
        Trainer(_cfg(tmp_path / "run", model, adapt_mix, mode="adapt", model={"unet": str(wide)}))


def test_adapt_loss_is_text_to_image(setup, tmp_path):
    """The UNet sees the noisy target latents alone (4 channels) and the caption; a batch has no src."""
    from trainer.data import MixtureDataset, make_loader
    from trainer.loop import Trainer

    root, model, adapt_mix, _ = setup
    tr = Trainer(_cfg(tmp_path / "run", model, adapt_mix, mode="adapt",
                      conditioning_dropout={"text_only": 0.0, "image_only": 0.0, "both": 0.0}))
    batch = next(iter(make_loader(MixtureDataset(tr.specs, tr.cfg.data, tr.tokenizer, seed=0, rows="adapt"), 2)))
    assert "src" not in batch and batch["tgt"].shape == (2, 3, 32, 32)
    seen = {}
    unet = tr.accelerator.unwrap_model(tr.unet)
    h = unet.register_forward_pre_hook(lambda m, args, kwargs: seen.update(x=args[0], text=args[2]), with_kwargs=True)
    try:
        tr.noise_gen.manual_seed(0)
        pred, target, t = tr.loss_terms(batch)
    finally:
        h.remove()
    assert seen["x"].shape == (2, 4, 4, 4) and pred.shape == target.shape == (2, 4, 4, 4)
    with torch.no_grad():
        text = tr.text_encoder(batch["input_ids"])[0]
    torch.testing.assert_close(seen["text"], text)  # no dropout: the captions condition the UNet
