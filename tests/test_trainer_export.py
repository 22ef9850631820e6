"""Model folders stock diffusers loads: final/ after a bf16 run, checkpoints' unet/ and unet_ema/,
`idd train export` in every dtype (and from a checkpoint of the old layout), resume at the end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from tests.helpers_trainer import make_output, one_thread, write_mixture  # noqa: F401 (one_thread: autouse)

pytestmark = pytest.mark.ml



@pytest.fixture(scope="module", autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one mixed-precision setting per process: this module trains in bf16 after and
    before modules that train without; start and leave the (non-distributed) state empty."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state()
    GradientState._reset_state()


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """3 steps in bf16 with EMA, a checkpoint at 2 and 3, final/ in the default fp32; the YAML kept."""
    import yaml

    from instructdiffusion_data.cli import main
    from trainer.model import make_tiny_model

    root = tmp_path_factory.mktemp("export")
    model = make_tiny_model(root / "tiny", sample_size=32)
    a = make_output(root / "shards", "alpha", 8, shards=1, seed=1)
    mix = write_mixture(root / "shards" / "mixture.json", {"alpha": (a, 1.0)})
    cfg = {"output_dir": str(root / "run"), "max_train_steps": 3, "train_batch_size": 2, "checkpointing_steps": 2,
           "checkpoints_total_limit": 0, "log_every_steps": 1, "report_to": "none", "mixed_precision": "bf16",
           "model": {"pretrained": str(model), "local_files_only": True, "ema_decay": 0.5},
           "data": {"mixture": str(mix), "resolution": 32, "num_workers": 0, "shuffle_buffer": 4, "shuffle_initial": 2},
           "optim": {"lr_warmup_steps": 0, "learning_rate": 1e-2},
           "validation": {"every_steps": 0, "at_end": False}}
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    return root, path


def _dtypes(folder):
    from safetensors import safe_open

    out = {}
    for f in folder.rglob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            out[f.parent.name] = {str(st.get_slice(k).get_dtype()) for k in st.keys()}
    return out


def _run_ip2p(folder, torch_dtype=None):
    """Stock diffusers: load (no torch_dtype unless given) and edit one 32x32 image in 2 steps."""
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    expect_dtype = torch_dtype or torch.float32
    kw = {"dtype": torch_dtype} if torch_dtype else {}
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(folder), **kw)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {expect_dtype}
    pipe.set_progress_bar_config(disable=True)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    out = pipe("make it blue", image=img, num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0)).images[0]
    assert out.shape == (32, 32, 3) and np.isfinite(out).all()
    return pipe


def _params(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def test_final_after_bf16_run_is_fp32_and_stock_diffusers_runs_it(bf16_run):
    root, _ = bf16_run
    run = root / "run"
    final = run / "final"
    assert json.loads((final / "model_index.json").read_text())["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    # every component in fp32 (the bf16 run computed with half-precision VAE/text encoder copies)
    assert _dtypes(final) == {"unet": {"F32"}, "vae": {"F32"}, "text_encoder": {"F32"}}
    _run_ip2p(final)
    # the frozen parts are the pretrained ones at full precision, not bf16 round trips
    from diffusers import AutoencoderKL

    for (k, v), (k0, v0) in zip(AutoencoderKL.from_pretrained(final / "vae").state_dict().items(),
                                AutoencoderKL.from_pretrained(root / "tiny" / "vae").state_dict().items()):
        assert k == k0 and torch.equal(v, v0)
    # final/unet holds the EMA weights of the last step, which differ from the raw weights
    ema, raw, fin = _params(run / "checkpoint-3" / "unet_ema"), _params(run / "checkpoint-3" / "unet"), _params(final / "unet")
    assert ema.keys() == fin.keys() == raw.keys()
    assert all(torch.equal(ema[k], fin[k]) for k in ema)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)


def test_checkpoints_hold_loadable_unet_and_ema(bf16_run):
    from diffusers import UNet2DConditionModel

    root, _ = bf16_run
    ck = root / "run" / "checkpoint-2"
    assert not (ck / "model.safetensors").exists()  # the UNet is stored once, as unet/
    for sub in ("unet", "unet_ema"):
        conf = json.loads((ck / sub / "config.json").read_text())
        assert conf["in_channels"] == 8
        unet = UNet2DConditionModel.from_pretrained(ck / sub)
        assert unet.dtype == torch.float32 and unet.conv_in.weight.shape[1] == 8
    assert json.loads((ck / "unet_ema" / "config.json").read_text())["optimization_step"] == 2


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_export_checkpoint_in_half_precision(bf16_run, dtype, capsys):
    from instructdiffusion_data.cli import main

    root, _ = bf16_run
    out = root / f"export-{dtype}"
    assert main(["train", "export", str(root / "run" / "checkpoint-2"), "--out", str(out), "--dtype", dtype]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"model": str(out), "dtype": dtype}
    tag = {"bf16": "BF16", "fp16": "F16"}[dtype]
    assert _dtypes(out) == {"unet": {tag}, "vae": {tag}, "text_encoder": {tag}}
    want = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    _run_ip2p(out)  # no torch_dtype: every component in fp32, never a mix
    if dtype == "bf16":  # CPU runs bf16; fp16 inference is for GPUs
        _run_ip2p(out, want)
    else:
        from diffusers import StableDiffusionInstructPix2PixPipeline

        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(out), dtype=want)
        assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {want}
    ema = _params(root / "run" / "checkpoint-2" / "unet_ema")
    got = _params(out / "unet")
    assert all(torch.equal(got[k], ema[k].to(want)) for k in ema)


def test_export_fp32_no_ema_and_old_layout(bf16_run, tmp_path):
    """--no-ema exports the trained weights; a checkpoint of the layout before unet/ (accelerate's
    model.safetensors + pickled EMA) exports to the same model."""
    from safetensors.torch import save_file

    from trainer.export import export_checkpoint

    root, _ = bf16_run
    ck = root / "run" / "checkpoint-2"
    raw = export_checkpoint(ck, tmp_path / "raw", use_ema=False)
    assert all(torch.equal(a, b) for a, b in zip(_params(raw / "unet").values(), _params(ck / "unet").values()))
    new = export_checkpoint(ck, tmp_path / "new")
    old = tmp_path / "checkpoint-2"
    old.mkdir()
    shutil.copy(ck / "trainer_state_rank0.json", old)
    save_file(_params(ck / "unet"), str(old / "model.safetensors"))
    from diffusers import UNet2DConditionModel

    ema_unet = UNet2DConditionModel.from_pretrained(ck / "unet_ema")
    torch.save({"shadow_params": [p.detach().clone() for p in ema_unet.parameters()], "optimization_step": 2},
               old / "custom_checkpoint_1.pkl")
    legacy = export_checkpoint(old, tmp_path / "legacy")
    a, b = _params(new / "unet"), _params(legacy / "unet")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _run_ip2p(legacy)


def test_export_errors_are_one_line(tmp_path, capsys):
    from instructdiffusion_data.cli import main

    assert main(["train", "export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a complete checkpoint" in err
    assert main(["train", "export", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err


def test_resume_at_max_steps_writes_final_and_clean_json(bf16_run, capsys):
    from instructdiffusion_data.cli import main

    root, cfg = bf16_run
    final = root / "run" / "final"
    before = _params(final / "unet")
    shutil.rmtree(final)
    assert main(["train", str(cfg), "--resume_from_checkpoint", "latest"]) == 0

    def no_nan(x):
        raise AssertionError(f"JSON holds {x}")

    res = json.loads(capsys.readouterr().out, parse_constant=no_nan)
    assert res["step"] == 3 and res["steps_run"] == 0 and res["last_loss"] is None
    assert res["samples_per_s"] is None and res["data_wait_fraction"] is None and res["final"] == str(final)
    after = _params(final / "unet")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the EMA weights of checkpoint-3 again
    # past the end, with final/ there: nothing rewritten
    mtime = (final / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert main(["train", str(cfg), "--resume_from_checkpoint", "latest", "--max_train_steps", "2"]) == 0
    res = json.loads(capsys.readouterr().out, parse_constant=no_nan)
    assert res["step"] == 3 and res["final"] is None
    assert (final / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == mtime
