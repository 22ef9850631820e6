"""Two CPU processes (gloo), launched with the commands docs/trainer.md gives: distinct ranks reading
different data, identical weights on both after every checkpoint, one writer, and a resume with two
processes (the other launcher) that restores each rank's stream: steps 3-4 after resuming equal
steps 3-4 of the uninterrupted run. Mixed precision bf16."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from tests.helpers_trainer import make_output, write_mixture

pytestmark = [pytest.mark.ml, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCS = (ROOT / "docs" / "trainer.md").read_text()
# the commands exactly as docs/trainer.md writes them (CONFIG stands for the config path)
TORCHRUN = "torchrun --nproc_per_node 2 -m trainer.train CONFIG"
ACCELERATE = "accelerate launch --multi_gpu --num_processes 2 -m trainer.train CONFIG"


def _launch(cmd: str, cfg: Path, *extra: str) -> subprocess.CompletedProcess:
    assert cmd in DOCS, f"docs/trainer.md no longer gives `{cmd}`"
    argv = cmd.replace("CONFIG", str(cfg)).split()
    argv[0] = str(BIN / argv[0])
    # torchrun reads its options from PET_* variables too: a free port, so that parallel runs do not meet;
    # HF_HOME: no accelerate default_config.yaml of this machine changes what the documented command does
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PET_MASTER_PORT": str(_free_port()),
           "HF_HOME": str(cfg.parent / "hf_home")}
    p = subprocess.run([*argv, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(ck: Path, rank: int) -> dict:
    return json.loads((ck / f"trainer_state_rank{rank}.json").read_text())


def _first_batches(log: str) -> dict[int, set[str]]:
    out = {}
    for m in re.finditer(r"rank (\d) first batch: (.+)", log):
        out[int(m.group(1))] = set(m.group(2).split())
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import yaml

    from trainer.model import make_tiny_model

    root = tmp_path_factory.mktemp("multiproc")
    model = make_tiny_model(root / "tiny", sample_size=32)
    a = make_output(root / "shards", "alpha", 16, shards=2, seed=1)
    b = make_output(root / "shards", "beta", 16, shards=2, seed=2)
    mix = write_mixture(root / "shards" / "mixture.json", {"alpha": (a, 1.0), "beta": (b, 1.0)})

    def cfg(name: str, **kw) -> Path:
        c = {"output_dir": str(root / name), "max_train_steps": 4, "train_batch_size": 2, "checkpointing_steps": 2,
             "checkpoints_total_limit": 0, "log_every_steps": 1, "report_to": "none", "mixed_precision": "bf16",
             "cpu_threads": 1, "save_final_model": False,
             "model": {"pretrained": str(model), "local_files_only": True, "ema_decay": 0.9},
             "data": {"mixture": str(mix), "resolution": 32, "num_workers": 0, "shuffle_buffer": 4, "shuffle_initial": 2},
             "optim": {"lr_warmup_steps": 0, "learning_rate": 1e-3},
             "validation": {"every_steps": 0, "at_end": False}, **kw}
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(c))
        return path

    return root, cfg


def test_two_processes_torchrun_then_resume_with_accelerate_launch(setup):
    from safetensors.torch import load_file

    root, cfg = setup
    straight = _launch(TORCHRUN, cfg("straight"))
    log = straight.stderr
    # two distinct ranks of one gloo group, in bf16
    for r in (0, 1):
        assert re.search(rf"rank{r} INFO trainer\.loop: process {r} of 2 \(MULTI_CPU, backend gloo, .*bf16\)", log), log[-3000:]
    # different data per rank
    first = _first_batches(log)
    assert set(first) == {0, 1} and first[0] != first[1]
    # one writer: rank 0 wrote the models, rank 1 never did; one JSON report
    assert len(re.findall(r"rank0 INFO trainer\.loop: rank 0 wrote unet/ and unet_ema/", log)) == 2
    assert "rank 1 wrote" not in log
    assert json.loads(straight.stdout)["step"] == 4
    run = root / "straight"
    for step in (2, 4):
        ck = run / f"checkpoint-{step}"
        s0, s1 = _state(ck, 0), _state(ck, 1)
        assert s0["step"] == s1["step"] == step and (s0["rank"], s1["rank"]) == (0, 1) and s0["world"] == 2
        assert s0["unet_sha256"] == s1["unet_sha256"]  # gradients averaged: the ranks hold the same weights
        assert s0["stream"]["rank"] == 0 and s1["stream"]["rank"] == 1
        assert (ck / "random_states_0.pkl").is_file() and (ck / "random_states_1.pkl").is_file()
    w2 = load_file(str(run / "checkpoint-2" / "unet" / "diffusion_pytorch_model.safetensors"))
    w4 = load_file(str(run / "checkpoint-4" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(w2[k], w4[k]) for k in w2)

    # resume from step 2 with the other launcher, two processes, into another folder; final/ on
    resumed = _launch(ACCELERATE, cfg("resumed", save_final_model=True),
                      "--resume_from_checkpoint", str(run / "checkpoint-2"))
    log = resumed.stderr
    for r in (0, 1):
        assert re.search(rf"rank{r} INFO trainer\.loop: rank {r} resumed from .*checkpoint-2 at step 2", log), log[-3000:]
    assert len(re.findall(r"final model \(EMA UNet, fp32\) written", log)) == 1 and "rank1 INFO trainer.loop: final" not in log
    rs, st = root / "resumed" / "checkpoint-4", run / "checkpoint-4"
    for r in (0, 1):  # each rank's stream continued where it stopped
        assert _state(rs, r)["stream"]["positions"] == _state(st, r)["stream"]["positions"]
        assert _state(rs, r)["stream"]["generation"] == 0
    assert _state(rs, 0)["unet_sha256"] == _state(rs, 1)["unet_sha256"]
    for sub in ("unet", "unet_ema"):
        a = load_file(str(rs / sub / "diffusion_pytorch_model.safetensors"))
        b = load_file(str(st / sub / "diffusion_pytorch_model.safetensors"))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert (root / "resumed" / "final" / "model_index.json").is_file()
