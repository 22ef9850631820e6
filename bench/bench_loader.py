"""Trainer input pipeline benchmark (self-contained: writes its own shards and models to a temp dir).

CPU mode (default):
  1. raw tar read rate: every shard read through webdataset, no decoding (the ceiling for the loader);
  2. the trainer's loader (mixture, decode, paired augmentation, tokenisation, collation) with 0, 1, 2
     DataLoader workers, samples/s and the ratio to (1);
  3. the data-wait fraction of training steps with the tiny model, loader with 2 workers.
GPU mode (``--gpu``): a real-size SD-1.5 UNet/VAE/CLIP text encoder with random weights at 256 px in
bf16; steps/s with the loader feeding it against steps/s on one batch kept on the GPU (the GPU-bound
ceiling): a ratio near 1 and a small data-wait fraction mean the loader keeps the GPU busy.
Ranks mode (``--ranks``): the loader of each rank of a 2-process run against the loader of a 1-process
run, on demo shards (keypoints, semantic and referring segmentation made by ``idd demo-data`` +
``idd run``, or ``--shards DIR`` of an earlier ``make demo``): each rank is its own process with
``RANK``/``WORLD_SIZE`` set, as torchrun starts them, building ``MixtureDataset(rank, world)``; all
ranks of a run start timing together. Prints samples/s per rank, the ratio of the 2-process per-rank
rate to the 1-process rate (measured before and after the 2-process run, the mean is the baseline), the
ratio of the 2-process total, and the share of keys the two ranks have in common (about what two
independent draws share). Each rank process gets OMP_NUM_THREADS=1 unless set, as torchrun does.

  .venv/bin/python bench/bench_loader.py [--samples 512] [--res 256] [--gpu --workers 8 --batch 32]
  .venv/bin/python bench/bench_loader.py --ranks [--shards shards] [--rank-workers 1] [--seconds 8]
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("bench_loader")


def natural_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth gradients and shapes: JPEG sizes like photos' (noise would be 10x larger)."""
    import cv2

    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([(x / w) * rng.uniform(80, 255), (y / h) * rng.uniform(80, 255),
                    np.full((h, w), rng.uniform(0, 255), np.float32)], -1)
    for _ in range(8):
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(8, h // 3)), c, -1)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_shards(root: Path, n: int, res: int) -> Path:
    """Two datasets (weights 1 and 2), JPEG source/target about res*1.25 x res*1.5 px, 64 rows/shard."""
    from instructdiffusion_data.imageio import encode_jpeg
    from instructdiffusion_data.schema import make_key, new_row
    from instructdiffusion_data.writer import ShardWriter

    rng = np.random.default_rng(0)
    h, w = int(res * 1.25), int(res * 1.5)
    datasets = []
    for name, weight, count in (("bench_a", 1.0, n // 2), ("bench_b", 2.0, n - n // 2)):
        out = root / name / "v1"
        wr = ShardWriter(out)
        rows = []
        for i in range(count):
            img = natural_image(rng, h, w)
            rows.append(new_row(key=make_key(name, i, "v0"), task="edit", dataset=name, src=encode_jpeg(img, 90),
                                tgt=encode_jpeg(255 - img, 90), instruction=f"invert the colours of the picture number {i}"))
        for s in range(0, count, 64):
            wr.write_shard(s // 64, rows[s:s + 64])
        man = wr.write_manifest(config={}, extra={"name": name, "mixture_weight": weight})
        tr = man["splits"]["train"]
        datasets.append({"name": name, "output": str(out), "tasks": tr["tasks"], "samples": tr["rows"], "weight": weight,
                         "shards": [str(out / s["tar"]) for s in tr["shards"]], "effective_per_epoch": tr["rows"] * weight})
    mix = root / "mixture.json"
    mix.write_text(json.dumps({"format": "instructdiffusion-data/mixture/1", "seed": 0, "datasets": datasets, "tasks": {}}))
    return mix


def raw_read_rate(mixture: Path, seconds: float) -> tuple[float, float]:
    """samples/s and MB/s reading every shard through webdataset without decoding (repeated)."""
    import webdataset as wds

    shards = [s for d in json.loads(mixture.read_text())["datasets"] for s in d["shards"]]
    n, nbytes, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for s in wds.tarfile_to_samples()(iter([{"url": u} for u in shards])):
            n += 1
            nbytes += sum(len(v) for k, v in s.items() if isinstance(v, bytes))
    dt = time.perf_counter() - t0
    return n / dt, nbytes / dt / 1e6


def loader_rate(mixture: Path, tokenizer, res: int, workers: int, batch: int, seconds: float) -> float:
    from trainer.data import DataConfig, MixtureDataset, make_loader
    from trainer.datasets import load_mixture

    cfg = DataConfig(mixture=str(mixture), resolution=res, num_workers=workers, shuffle_buffer=64, shuffle_initial=16,
                     prefetch_factor=4)
    loader = make_loader(MixtureDataset(load_mixture(mixture), cfg, tokenizer, seed=0), batch)
    it = iter(loader)
    for _ in range(2):  # warm-up: workers started, buffers filled
        next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += len(next(it)["key"])
    rate = n / (time.perf_counter() - t0)
    del it
    return rate


def _step(trainer, batch) -> None:
    """One optimiser step of the trainer's own loss, backward, optimiser and EMA."""
    loss = trainer.loss(batch)
    trainer.accelerator.backward(loss)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    if trainer.ema is not None:
        trainer.ema.step(trainer.unet.parameters())


def train_rate(trainer, steps: int, warmup: int) -> dict:
    """Steps through the trainer's own loss/backward/optimiser with its loader; time waiting for data."""
    import torch

    from trainer.data import MixtureDataset, make_loader

    cfg = trainer.cfg
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    loader = make_loader(MixtureDataset(trainer.specs, cfg.data, trainer.tokenizer, seed=cfg.seed), cfg.train_batch_size)
    it = iter(loader)
    wait = 0.0
    batch = None
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            wait, t0 = 0.0, time.perf_counter()
        t = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - t
        _step(trainer, batch)
    sync()
    dt = time.perf_counter() - t0
    del it
    # the same steps on one batch already in memory: the model-bound ceiling
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t1 = time.perf_counter()
        _step(trainer, batch)
    sync()
    dt_model = time.perf_counter() - t1
    return {"steps_per_s": steps / dt, "samples_per_s": steps * cfg.train_batch_size / dt,
            "data_wait_fraction": wait / dt, "model_only_steps_per_s": steps / dt_model,
            "loader_vs_model_only": (steps / dt) / (steps / dt_model)}


def make_sd15_random(out: Path) -> Path:
    """Real-size SD-1.5 component configs, random weights, in the SD layout (no download)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from trainer.model import make_tiny_model, make_tiny_tokenizer

    make_tiny_model(out)  # layout, scheduler, model_index; the big parts are replaced below
    tok = make_tiny_tokenizer(out / "tokenizer")
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(vocab_size=max(len(tok), 49408), hidden_size=768, intermediate_size=3072,
                                 num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id, hidden_act="quick_gelu")).save_pretrained(out / "text_encoder")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                  sample_size=512).save_pretrained(out / "vae")
    UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                         block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                         down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                         up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3).save_pretrained(out / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  clip_sample=False, steps_offset=1).save_pretrained(out / "scheduler")
    return out


def trainer_for(tmp: Path, model: Path, mixture: Path, res: int, batch: int, workers: int, gpu: bool):
    from trainer.config import make_config
    from trainer.loop import Trainer

    cfg = make_config(output_dir=str(tmp / "run"), max_train_steps=10**6, train_batch_size=batch, report_to="none",
                      mixed_precision="bf16" if gpu else "no", checkpointing_steps=0, save_final_model=False,
                      model={"pretrained": str(model), "local_files_only": True, "gradient_checkpointing": False},
                      data={"mixture": str(mixture), "resolution": res, "num_workers": workers, "shuffle_buffer": 64,
                            "shuffle_initial": 16, "prefetch_factor": 4},
                      optim={"lr_warmup_steps": 0}, validation={"every_steps": 0, "at_end": False})
    return Trainer(cfg)


# --- ranks: per-rank loader throughput, 2 processes vs 1 -------------------------------------------

DEMO_PIPELINES = ("keypoints_coco", "semseg_cocostuff", "refseg_refcoco")


def demo_outputs(tmp: Path, shards: str | None) -> list[str]:
    """Output folders of the demo task pipelines: under ``shards`` when given (``make demo``), else made
    here with ``idd demo-data`` (COCO family) and ``idd run --no-ray``."""
    if shards:
        outs = sorted(d for name in DEMO_PIPELINES for d in glob.glob(str(Path(shards) / name / "*"))
                      if (Path(d) / "manifest.json").is_file())
        if not outs:
            raise SystemExit(f"--shards {shards}: none of {', '.join(DEMO_PIPELINES)} has an output there (make demo)")
        return outs
    root = Path(__file__).resolve().parents[1]
    idd = [sys.executable, "-m", "instructdiffusion_data.cli"]
    work = tmp / "demo"
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()

    def idd_run(cmd: list[str], cwd: Path) -> None:
        done = subprocess.run([*idd, *cmd], cwd=cwd, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(root)})
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-4000:])
            raise SystemExit(f"idd {cmd[0]} failed (exit {done.returncode}) while making the demo shards")

    idd_run(["demo-data", str(work / "demo_data"), "--n", "48", "--only", "coco"], root)
    # the pipeline configs name demo_data/... relative to the working directory
    idd_run(["run", *(str(root / "configs" / "pipelines" / f"{n}.yaml") for n in DEMO_PIPELINES),
             "--out", str(work / "shards"), "--no-ray"], work)
    print(f"demo shards: {', '.join(DEMO_PIPELINES)} written in {time.perf_counter() - t:.0f} s")
    return sorted(str(Path(d)) for n in DEMO_PIPELINES for d in glob.glob(str(work / "shards" / n / "*")))


def rank_worker(args) -> int:
    """One rank (RANK/WORLD_SIZE from the environment, as torchrun sets them): warm up, wait for every
    rank, time the loader for ``--seconds``, print one JSON line."""
    from trainer.data import DataConfig, MixtureDataset, make_loader
    from trainer.datasets import specs_from_outputs
    from trainer.model import make_tiny_tokenizer

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    sync = Path(args.sync)
    tok = make_tiny_tokenizer(sync / f"tok{rank}")
    cfg = DataConfig(resolution=args.res, num_workers=args.rank_workers, shuffle_buffer=64, shuffle_initial=16,
                     prefetch_factor=4)
    specs = specs_from_outputs(args.outputs, {})
    loader = make_loader(MixtureDataset(specs, cfg, tok, seed=0, rank=rank, world=world), args.batch)
    it = iter(loader)
    keys: list[str] = []
    for _ in range(2):  # warm-up: workers started, buffers filled
        keys += next(it)["key"]
    (sync / f"ready{rank}").touch()
    deadline = time.time() + 600
    while not all((sync / f"ready{r}").exists() for r in range(world)):
        if time.time() > deadline:
            raise SystemExit(f"rank {rank}: other ranks never became ready")
        time.sleep(0.01)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        b = next(it)
        n += len(b["key"])
        keys += b["key"]
    rate = n / (time.perf_counter() - t0)
    del it
    print(json.dumps({"rank": rank, "world": world, "samples_per_s": rate, "keys": keys}))
    return 0


def run_ranks(outputs: list[str], world: int, args, tmp: Path) -> list[dict]:
    sync = Path(tempfile.mkdtemp(dir=tmp, prefix=f"world{world}-"))
    base = [sys.executable, str(Path(__file__).resolve()), "--rank-worker", "--sync", str(sync), "--res", str(args.res),
            "--batch", str(args.batch), "--seconds", str(args.seconds), "--rank-workers", str(args.rank_workers),
            "--outputs", *outputs]
    procs = [subprocess.Popen(base, stdout=subprocess.PIPE, text=True,
                              env={"OMP_NUM_THREADS": "1", **os.environ,  # as torchrun sets it for each rank
                                   "RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r)})
             for r in range(world)]
    res = []
    for p in procs:
        out, _ = p.communicate(timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"a rank of the {world}-process run failed (exit {p.returncode})")
        res.append(json.loads(out.strip().splitlines()[-1]))
    return sorted(res, key=lambda r: r["rank"])


def ranks_bench(args, tmp: Path) -> dict:
    outputs = demo_outputs(tmp, args.shards)
    print(f"outputs: {', '.join(str(Path(o).relative_to(Path(o).parents[1])) for o in outputs)}; "
          f"batch {args.batch}, {args.res} px, {args.rank_workers} loader worker(s) per rank, {args.seconds:.0f} s "
          f"timed per run, cpus {os.cpu_count()}")
    # the 1-process baseline before and after the 2-process run (a shared machine's load drifts): the
    # mean is the baseline, both are printed
    before = run_ranks(outputs, 1, args, tmp)[0]["samples_per_s"]
    two = run_ranks(outputs, 2, args, tmp)
    after = run_ranks(outputs, 1, args, tmp)[0]["samples_per_s"]
    base = (before + after) / 2
    print(f"1 process : rank 0 {before:8.1f} samples/s before, {after:.1f} after: baseline {base:.1f}")
    for r in two:
        print(f"2 processes: rank {r['rank']} {r['samples_per_s']:8.1f} samples/s  = {r['samples_per_s'] / base:.2f} x baseline")
    per_rank = sum(r["samples_per_s"] for r in two) / len(two) / base
    total = sum(r["samples_per_s"] for r in two) / base
    k0, k1 = two[0]["keys"], two[1]["keys"]
    n = min(len(k0), len(k1))
    same_pos = sum(a == b for a, b in zip(k0[:n], k1[:n])) / max(1, n)
    common = len(set(k0) & set(k1)) / max(1, len(set(k0) | set(k1)))
    print(f"ratio per rank (2 processes / 1): {per_rank:.2f}; total of both ranks / 1 process: {total:.2f}")
    print(f"distinct data: {same_pos:.1%} of positions hold the same sample on both ranks; "
          f"{common:.0%} of the keys seen are seen by both (shared dataset, independent draws)")
    return {"one_process": base, "one_process_before_after": [before, after], "two_processes": [r["samples_per_s"] for r in two], "ratio_per_rank": per_rank,
            "ratio_total": total, "same_position_share": same_pos, "common_key_share": common,
            "rank_workers": args.rank_workers, "batch": args.batch, "res": args.res, "seconds": args.seconds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=512, help="samples written to the bench shards")
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8.0, help="per loader measurement")
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--workers", type=int, default=2, help="loader workers for the training measurement")
    p.add_argument("--gpu", action="store_true", help="real-size SD-1.5 UNet (random weights) on the GPU")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads of the main process (default: torch's)")
    p.add_argument("--keep", default=None, help="write shards/models here instead of a temp dir")
    p.add_argument("--ranks", action="store_true", help="per-rank loader rate, 2 processes vs 1, on demo shards")
    p.add_argument("--shards", default=None, help="--ranks: output root of `make demo` (default: build demo shards)")
    p.add_argument("--rank-workers", type=int, default=1, help="--ranks: loader workers per rank")
    p.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)  # one rank (internal)
    p.add_argument("--sync", default=None, help=argparse.SUPPRESS)
    p.add_argument("--outputs", nargs="*", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_worker:
        logging.basicConfig(level=logging.ERROR)
        return rank_worker(args)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp_ctx = tempfile.TemporaryDirectory() if args.keep is None else None
    tmp = Path(args.keep or tmp_ctx.name)
    tmp.mkdir(parents=True, exist_ok=True)
    if args.ranks:
        results = ranks_bench(args, tmp)
        out = Path("bench/results")
        out.mkdir(parents=True, exist_ok=True)
        (out / "loader_ranks.json").write_text(json.dumps(results, indent=1))
        print(f"wrote {out / 'loader_ranks.json'}")
        if tmp_ctx:
            tmp_ctx.cleanup()
        return 0
    t = time.perf_counter()
    mixture = write_shards(tmp / "shards", args.samples, args.res)
    print(f"shards: {args.samples} samples, {args.res} px crops from {int(args.res * 1.25)}x{int(args.res * 1.5)} JPEGs "
          f"({time.perf_counter() - t:.1f} s to write); torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    results: dict = {"res": args.res, "batch": args.batch}
    from trainer.model import make_tiny_model, make_tiny_tokenizer

    if not args.gpu:
        raw, mbs = raw_read_rate(mixture, args.seconds / 2)
        results["raw_tar_samples_per_s"] = raw
        print(f"raw tar read (webdataset, no decode): {raw:8.0f} samples/s  {mbs:6.0f} MB/s")
        tok = make_tiny_tokenizer(tmp / "tok")
        for w in (0, 1, 2):
            r = loader_rate(mixture, tok, args.res, w, args.batch, args.seconds)
            results[f"loader_{w}_workers_samples_per_s"] = r
            print(f"loader, {w} workers: {r:8.1f} samples/s  = {r / raw:.3f} x raw read")
        model = make_tiny_model(tmp / "tiny-sd")
        tr = trainer_for(tmp, model, mixture, args.res, args.batch, args.workers, gpu=False)
        res = train_rate(tr, args.steps, warmup=3)
        results["tiny_model"] = res
        print(f"tiny model, {args.workers} workers, batch {args.batch}: {res['steps_per_s']:.2f} steps/s "
              f"({res['samples_per_s']:.1f} samples/s), data-wait fraction {res['data_wait_fraction']:.2f}; "
              f"model alone {res['model_only_steps_per_s']:.2f} steps/s (loader-fed = {res['loader_vs_model_only']:.2f} x)")
    else:
        if not torch.cuda.is_available():
            print("--gpu: no CUDA device", file=sys.stderr)
            return 2
        model = make_sd15_random(tmp / "sd15-random")
        tr = trainer_for(tmp, model, mixture, args.res, args.batch, args.workers, gpu=True)
        res = train_rate(tr, args.steps, warmup=5)
        results["sd15_gpu"] = {**res, "device": torch.cuda.get_device_name(), "workers": args.workers}
        print(f"SD-1.5 UNet (random) {args.res} px bf16 batch {args.batch} on {torch.cuda.get_device_name()}, "
              f"{args.workers} workers: {res['steps_per_s']:.2f} steps/s ({res['samples_per_s']:.1f} samples/s), "
              f"data-wait {res['data_wait_fraction']:.2f}; one batch on the GPU {res['model_only_steps_per_s']:.2f} "
              f"steps/s: loader-fed = {res['loader_vs_model_only']:.2f} x (1.0 = the loader keeps the GPU busy)")
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    name = "loader_gpu.json" if args.gpu else "loader.json"
    (out / name).write_text(json.dumps(results, indent=1))
    print(f"wrote {out / name}")
    if tmp_ctx:
        tmp_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
