"""The paper's whole loop on a CPU with tiny models, through the commands a user runs (docs/loop.md):

adaptation rows (``idd run`` of the shipped adapt pipeline) -> adaptation run (``configs/trainer/sd15-adapt.yaml``,
``mode: adapt``) -> task rows and task run (the adaptation model as ``model.pretrained``) -> benchmark (``idd
benchmark build``) -> ``idd eval`` on the held-out half -> ``idd align candidates`` on the align half ->
labels through the auditor API -> ``idd export-alignment`` -> alignment run (``configs/trainer/align.yaml``) ->
``idd eval`` again on the held-out half. Every artefact is checked: row counts, images decode, the model
folders load, metrics finite and per category.
"""

from __future__ import annotations

import json
import math
import tarfile
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

from instructdiffusion_data.cli import main as idd  # noqa: E402
from tests.helpers_eval import TINY_CLIP_NAME, halves, make_aesthetic_head, make_tiny_clip  # noqa: E402

pytestmark = [pytest.mark.ml, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TOKEN = "e2e-loop-token"
TINY_TRAIN = ["mixed_precision='no'", "allow_tf32=false", "train_batch_size=2", "max_train_steps=2",
              "checkpointing_steps=0", "log_every_steps=1", "report_to=none", "model.local_files_only=true",
              "model.gradient_checkpointing=false", "data.mixture=null", "data.resolution=64", "data.num_workers=0",
              "data.shuffle_buffer=4", "data.shuffle_initial=2", "optim.lr_warmup_steps=0",
              "validation.every_steps=0", "validation.at_end=false", "cpu_threads=1"]


def _pipeline_config(src: Path, dst: Path, demo: Path) -> Path:
    """A shipped pipeline config pointed at this test's demo data."""
    dst.write_text(src.read_text().replace("demo_data/", f"{demo}/"))
    return dst


def _train(config: str, out: Path, *sets: str) -> Path:
    args = ["train", str(REPO / config), "--output_dir", str(out)]
    for s in (*TINY_TRAIN, *sets):
        args += ["--set", s]
    assert idd(args) == 0
    assert (out / "final" / "model_index.json").is_file()
    return out / "final"


def _tar_samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for tar in sorted((out / "train").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, _, suffix = m.name.partition(".")
                samples.setdefault(key, {})[suffix] = tf.extractfile(m).read()
    return samples


def _check_eval(doc: dict, bench: Path) -> None:
    want = halves(bench)["eval"]
    assert doc["benchmark"]["split"] == "eval" and doc["benchmark"]["samples"] == sum(want.values())
    assert {r["split"] for r in doc["samples"]} == {"eval"}
    assert set(doc["per_category"]) == set(want)
    for cat, b in doc["per_category"].items():
        assert b["samples"] == want[cat]
        for m in ("clip_sim", "aesthetic", "source_clip_sim", "source_aesthetic"):
            assert b[m]["n"] == want[cat] and math.isfinite(b[m]["mean"]) and math.isfinite(b[m]["std"])
    for m in ("clip_sim", "aesthetic"):
        assert math.isfinite(doc["overall"][m]["mean"])
        assert all(math.isfinite(r[m]) for r in doc["samples"])


def test_paper_loop_end_to_end(tmp_path, capsys):
    import torch
    import yaml
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline
    from fastapi.testclient import TestClient

    from instructdiffusion_data.audit.app import create_app
    from instructdiffusion_data.audit.labels import labels_path
    from instructdiffusion_data.demo import generate_all
    from instructdiffusion_data.imageio import decode

    t0 = time.perf_counter()
    times: dict[str, float] = {}

    def lap(name: str) -> None:
        times[name] = round(time.perf_counter() - t0 - sum(times.values()), 1)

    demo, shards = tmp_path / "demo_data", tmp_path / "shards"
    generate_all(demo, n=6, seed=0, only=["coco", "editbench"])
    clip_cfg, clip_ckpt = make_tiny_clip(tmp_path / "clip")
    head = make_aesthetic_head(tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    lap("demo data")

    # 1. adaptation rows and task rows from the shipped pipelines (no Ray)
    cfgs = [_pipeline_config(REPO / "configs/pipelines" / f"{n}.yaml", tmp_path / f"{n}.yaml", demo)
            for n in ("adapt_keypoints_coco", "keypoints_coco")]
    assert idd(["run", *map(str, cfgs), "--no-ray", "--out", str(shards)]) == 0
    adapt_out, task_out = shards / "adapt_keypoints_coco" / "v1", shards / "keypoints_coco" / "v2"
    adapt_rows = _tar_samples(adapt_out)
    assert len(adapt_rows) == json.loads((adapt_out / "manifest.json").read_text())["splits"]["train"]["rows"] > 0
    for members in adapt_rows.values():  # text-to-image rows: a target and its caption, no source
        assert "src.jpg" not in members and decode(members["tgt.jpg"]).ndim == 3
        assert json.loads(members["json"])["task"] == "adapt" and members["txt"].decode().strip()
    assert json.loads((task_out / "manifest.json").read_text())["splits"]["train"]["tasks"].get("keypoint", 0) > 0
    lap("rows")

    # 2. adaptation run (text to image, 4-channel UNet), then the task run on top of it
    adapt_model = _train("configs/trainer/sd15-adapt.yaml", tmp_path / "runs" / "adapt",
                         f"model.pretrained={tmp_path / 'models' / 'tiny-sd'}", "model.create_tiny_if_missing=true",
                         "model.tiny_sample_size=64", f"data.outputs=[{adapt_out}]")
    assert StableDiffusionPipeline.from_pretrained(str(adapt_model)).unet.config.in_channels == 4
    lap("adaptation run")
    task_model = _train("configs/trainer/sd15-256.yaml", tmp_path / "runs" / "task",
                        f"model.pretrained={adapt_model}", f"data.outputs=[{task_out}]")
    assert StableDiffusionInstructPix2PixPipeline.from_pretrained(str(task_model)).unet.config.in_channels == 8
    lap("task run")

    # 3. the benchmark
    assert idd(["benchmark", "build", "--jsonl", str(demo / "editbench" / "benchmark.jsonl"),
                "--out", str(shards), "--name", "editbench"]) == 0
    bench = shards / "editbench" / "v1"
    h = halves(bench)
    assert sum(h["align"].values()) >= 1 and sum(h["eval"].values()) >= 1
    lap("benchmark")

    # 4. eval on the held-out half
    common = ["--steps", "2", "--resolution", "64", "--batch-size", "4", "--device", "cpu", "--local-files-only"]
    metric = ["--clip-model", TINY_CLIP_NAME, "--clip-pretrained", str(clip_ckpt), "--clip-model-config", str(clip_cfg),
              "--aesthetic-weights", str(head)]
    assert idd(["eval", str(task_model), str(bench), *common, *metric, "--out", str(tmp_path / "eval-task")]) == 0
    table = capsys.readouterr().out
    assert "CLIP-Sim" in table and any(ln.startswith("overall") for ln in table.splitlines())
    before = json.loads((tmp_path / "eval-task" / "metrics.json").read_text())
    _check_eval(before, bench)
    for name in before["grids"].values():
        assert decode((tmp_path / "eval-task" / name).read_bytes()).shape[2] == 3
    lap("eval")

    # 5. candidates on the align half, picked through the auditor API, exported
    cands = shards / "align_candidates" / "v1"
    assert idd(["align", "candidates", str(task_model), str(bench), "--out", str(cands),
                "--scales", "7.5:1.5,5:1.2,3:1.5", *common]) == 0
    n_align = sum(h["align"].values())
    cand_rows = _tar_samples(cands)
    assert len(cand_rows) == 3 * n_align
    for members in cand_rows.values():
        assert decode(members["src.jpg"]).shape == decode(members["tgt.jpg"]).shape == (64, 64, 3)
    client = TestClient(create_app(shards, token=TOKEN, cache_dir=tmp_path / "thumbs", refresh_s=0))
    groups = client.get("/api/align/groups", params={"output": "align_candidates/v1", "page_size": 100}).json()
    assert groups["total"] == n_align and all(g["candidates"] == 3 for g in groups["rows"])
    picked = []
    for i, g in enumerate(groups["rows"]):
        keys = [c["key"] for c in client.get("/api/align/group", params={"output": "align_candidates/v1",
                                                                          "group": g["group_id"]}).json()["candidates"]]
        choice = [keys[:2], keys[1:2], []][i % 3]  # the best two, one, or none is good
        body = {"output": "align_candidates/v1", "group": g["group_id"], "keys": choice, "auditor": "e2e"}
        res = client.post("/api/align/pick", headers={"X-Audit-Token": TOKEN}, json=body)
        assert res.status_code == 200
        picked += choice
    assert picked
    aligned_data = shards / "alignment" / "v1"
    assert idd(["export-alignment", str(labels_path(cands)), "--out", str(aligned_data)]) == 0
    exported = _tar_samples(aligned_data)
    assert sorted(exported) == sorted(picked)
    for key, members in exported.items():
        assert members["tgt.jpg"] == cand_rows[key]["tgt.jpg"] and members["src.jpg"] == cand_rows[key]["src.jpg"]
        assert json.loads(members["json"])["meta"]["alignment"]["auditor"] == "e2e"
    lap("candidates, picks, export")

    # 6. the alignment run (EMA 0.99 from align.yaml) and eval again on the held-out half
    aligned_model = _train("configs/trainer/align.yaml", tmp_path / "runs" / "align",
                           f"model.pretrained={task_model}", f"data.outputs=[{aligned_data}]")
    assert yaml.safe_load((REPO / "configs/trainer/align.yaml").read_text())["model"]["ema_decay"] == 0.99
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(aligned_model))
    task_unet = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(task_model)).unet
    assert any(not torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), task_unet.parameters()))  # it trained
    lap("alignment run")
    capsys.readouterr()
    assert idd(["eval", str(aligned_model), str(bench), *common, *metric, "--out", str(tmp_path / "eval-aligned"),
                "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    after = json.loads((tmp_path / "eval-aligned" / "metrics.json").read_text())
    assert printed["overall"] == after["overall"] and "samples" not in printed
    _check_eval(after, bench)
    assert [r["key"] for r in after["samples"]] == [r["key"] for r in before["samples"]]  # the same held-out samples
    assert after["model"] == str(aligned_model) and after["guidance"] == before["guidance"]
    lap("eval again")
    print("e2e timings (s):", json.dumps(times))
