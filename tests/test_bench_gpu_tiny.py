"""bench/bench_gpu.py on the CPU with tiny configs (the same code as the real-size GPU run), the parameter
counts of the real-size configs on torch's meta device (no memory), the cut-run guarantees, and the wheel list
the GPU host installs."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


ROW_FIELDS = {"model", "batch", "precision", "compiled", "status", "items_per_s", "ms_per_item", "ms_per_batch",
              "peak_mem_gib", "timed_batches", "first_call_s", "ratio_to_published"}
TABLE_HEAD = "| model | batch | precision | compiled | items/s | ms/item | peak GiB | published | ratio |"


def test_tiny_run_writes_table_and_json(tmp_path, capsys):
    bench = _load("bench_gpu")
    t0 = time.perf_counter()
    assert bench.main(["--tiny", "--out", str(tmp_path), "--cap", "300"]) == 0  # a loaded CI machine is slow
    elapsed = time.perf_counter() - t0
    doc = json.loads((tmp_path / "bench_gpu_tiny.json").read_text())
    assert doc["format"] == "instructdiffusion-data/bench-gpu/1" and doc["tiny"] and doc["complete"]
    names = [m["name"] for m in doc["models"]]
    assert names == ["sd15_unet_ip2p", "sd15_vae_decode", "pbe_unet", "clip_vit_l14", "blip2_opt27b", "lama"]
    for m in doc["models"][:-1]:
        assert m["status"] == "ok", m
        assert m["params"] > 0
        for r in m["rows"]:
            assert ROW_FIELDS <= set(r), r
            assert r["status"] == "ok" and r["items_per_s"] > 0 and r["ms_per_item"] > 0 and r["precision"] == "fp32"
            assert abs(r["items_per_s"] * r["ms_per_item"] - 1000) < 1e-6 * r["items_per_s"] * r["ms_per_item"]
    clip = doc["models"][3]["rows"][0]
    assert clip["ratio_to_published"] == pytest.approx(clip["items_per_s"] / 312.0)
    (sd,) = doc["sd15_sampling"]  # the 50-step per-image figure, 2 UNet passes per step + VAE decode
    vae = doc["models"][1]["rows"][0]["ms_per_item"]
    assert sd["s_per_image_cfg2"] == pytest.approx(100 * sd["ms_per_item"] / 1000 + vae / 1000)
    assert sd["s_per_image_ip2p_cfg3"] > sd["s_per_image_cfg2"] and sd["published_s_per_image"] == 1.03
    lama = doc["models"][-1]
    assert lama["status"] == "not built" and "TorchScript" in lama["note"]
    tr = doc["trainer"]
    assert tr["status"] == "ok", tr
    assert tr["steps_per_s"] > 0 and tr["samples_per_s"] == pytest.approx(tr["steps_per_s"] * tr["batch"])
    assert 0 <= tr["data_wait_fraction"] <= 1 and tr["demo_shards"]["pairs"] == 16 and tr["ema"]
    pr = doc["projections"]
    assert pr["ieiw_removal_gpu_h"] is None  # LaMa not built: said so, not guessed
    assert pr["ieiw_replacement_gpu_h"] > 0 and set(pr["ieiw_replacement_parts_gpu_h"]) == {"pbe", "blip2", "clip"}
    assert pr["epoch"]["gpu_h"] > 0 and pr["epoch"]["effective_samples"] > 500_000
    assert set(pr["epoch"]["not_counted"]) == {"semseg_cocostuff", "refseg_refcoco", "refseg_grefcoco"}
    out = capsys.readouterr().out
    assert TABLE_HEAD in out
    for text in ("ms per UNet pass", "2 passes/step", "InstructPix2Pix (3 passes/step)", "| 1.03 |",
                 "IEIW removal, 85,000 LaMa inpaintings: not measured", "IEIW replacement, 51,000 pairs",
                 "one epoch of the task mixture", "data-wait", "| clip_vit_l14 | 4 | fp32 | no |", "| 312.0 |"):
        assert text in out, text
    assert (tmp_path / "bench_gpu_tiny.md").read_text().strip() in out
    print(f"bench_gpu --tiny: {elapsed:.1f} s")


def test_model_over_its_cap_is_cut_and_the_others_kept(tmp_path):
    bench = _load("bench_gpu")
    assert bench.main(["--tiny", "--out", str(tmp_path), "--models", "sd15_unet_ip2p,blip2_opt27b,clip_vit_l14",
                       "--cap-for", "clip_vit_l14=0.001"]) == 0
    doc = json.loads((tmp_path / "bench_gpu_tiny.json").read_text())
    by = {m["name"]: m for m in doc["models"]}
    assert list(by) == ["sd15_unet_ip2p", "clip_vit_l14", "blip2_opt27b"]
    assert by["sd15_unet_ip2p"]["status"] == "ok" and by["sd15_unet_ip2p"]["rows"][0]["items_per_s"] > 0
    assert by["clip_vit_l14"]["status"] == "cut" and "time cap" in by["clip_vit_l14"]["cut"]
    assert by["blip2_opt27b"]["status"] == "ok"  # the run went on after the cut model
    assert doc["trainer"] is None and doc["projections"]["ieiw_replacement_gpu_h"] is None
    assert "| clip_vit_l14 | - |" in (tmp_path / "bench_gpu_tiny.md").read_text()


def test_failed_variant_is_a_row_and_the_rest_stays(tmp_path):
    bench = _load("bench_gpu")
    assert bench.main(["--tiny", "--out", str(tmp_path), "--models", "sd15_unet_ip2p", "--compile", "both",
                       "--compile-backend", "no_such_backend"]) == 0
    (m,) = json.loads((tmp_path / "bench_gpu_tiny.json").read_text())["models"]
    assert m["status"] == "ok" and [r["compiled"] for r in m["rows"]] == [False, True]
    assert m["rows"][0]["status"] == "ok" and m["rows"][1]["status"].startswith("failed: InvalidBackend")


def test_total_cap_skips_what_it_cannot_start(tmp_path):
    bench = _load("bench_gpu")
    assert bench.main(["--tiny", "--out", str(tmp_path), "--models", "sd15_unet_ip2p,trainer", "--total-cap", "5"]) == 0
    doc = json.loads((tmp_path / "bench_gpu_tiny.json").read_text())
    assert doc["complete"] and [m["status"] for m in doc["models"]] == ["skipped"]
    assert doc["trainer"]["status"] == "skipped" and doc["projections"]["epoch"]["gpu_h"] is None


def test_killed_run_keeps_what_it_measured(tmp_path):
    """A run killed mid-way (a host's time limit) leaves valid JSON and a table with the finished models."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(BENCH / "bench_gpu.py"), "--tiny", "--out", str(tmp_path),
                             "--models", "sd15_unet_ip2p,trainer"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = tmp_path / "bench_gpu_tiny.json"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if path.is_file():
                doc = json.loads(path.read_text())  # always whole: written to a temp file and renamed
                if doc["models"] and doc["models"][0]["status"] == "ok":
                    break
            assert proc.poll() is None, "the run ended before it could be cut"
            time.sleep(0.2)
        else:
            pytest.fail("the first model was not written within 120 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    doc = json.loads(path.read_text())
    assert not doc["complete"]
    assert doc["models"][0]["name"] == "sd15_unet_ip2p" and doc["models"][0]["rows"][0]["status"] == "ok"
    md = (tmp_path / "bench_gpu_tiny.md").read_text()
    assert "| sd15_unet_ip2p | 2 | fp32 | no |" in md and "run not complete" in md


@pytest.mark.parametrize("name, low, high", [
    ("sd15_unet_ip2p", 855e6, 865e6),     # SD-1.5 UNet: 859.5M (+ 11.5K for the 4 extra conv_in channels)
    ("pbe_unet", 855e6, 865e6),           # PaintByExample UNet: the same with 9 input channels
    ("sd15_vae", 83e6, 84.5e6),           # SD-1.5 VAE: 83.7M
    ("sd15_text_encoder", 122e6, 124e6),  # CLIP ViT-L/14 text tower: 123.1M
    ("clip_vit_l14", 425e6, 430e6),       # open_clip ViT-L-14: 427.6M
    ("blip2_opt27b", 3.70e9, 3.90e9),     # BLIP-2 OPT-2.7b: 3.74B
])
def test_real_size_configs_have_the_published_parameter_counts(name, low, high):
    import torch

    models = _load("bench_gpu_models")
    m = models.build_on_meta(name)
    assert all(p.device == torch.device("meta") for p in m.parameters())  # nothing allocated
    assert low <= models.n_params(m) <= high, models.n_params(m)


def test_gpu_wheels_pin_what_the_project_pins():
    """The wheels carried to a GPU host are the versions the tests here run with."""
    listed = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (BENCH / "gpu-wheels.txt").read_text(), re.M))
    pins = {}
    for req in ("requirements.txt", "requirements-ml.txt"):
        pins.update(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / req).read_text(), re.M))
    for name in ("diffusers", "transformers", "accelerate", "open_clip_torch", "timm", "webdataset", "simplejpeg"):
        assert listed.get(name) == pins[name], name
    assert "torch" not in listed and "torchvision" not in listed  # the GPU host's own
    assert "gpu-wheels/" in (REPO / ".gitignore").read_text().splitlines()
