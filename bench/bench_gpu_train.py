"""The trainer part of bench/bench_gpu.py: optimisation steps/s, samples/s and the data-wait fraction of the
project's trainer (trainer.loop.Trainer: its loss, AdamW, EMA, accelerate mixed precision) at the SD-1.5 size,
fed by its real loader (trainer.data.MixtureDataset + make_loader).

Its inputs are made on the spot, so a GPU host needs no data and no weights:
- demo shards: ``--train-samples`` editing pairs from the bundled demo generator
  (``instructdiffusion_data.demo._figures.edit_pair``, ~30 ms a pair at 320x384) written with the project's
  ShardWriter (JPEG source/target, 32 pairs a shard); the loader resamples them, so a few hundred pairs
  exercise the same decode/crop/tokenise path as a real mixture. 128 pairs take about 5 s: no committed
  fixture is needed.
- an SD-1.5-layout folder with random weights: UNet (4 input channels as SD-1.5 ships; the trainer widens
  conv_in to 8), VAE and text encoder from configs/models/, the tokenizer and scheduler of
  ``trainer.model.make_tiny_model``.
The training config is configs/trainer/sd15-256.yaml (``--tiny``: tiny-cpu.yaml) with only the paths, the
logging and the checkpoints changed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_gpu")

REPO = Path(__file__).resolve().parents[1]


def write_demo_shards(root: Path, n: int, h: int, w: int, seed: int = 0, per_shard: int = 32) -> Path:
    """``n`` demo editing pairs as one shard output ``root/bench_edit/v1`` (manifest, tars, sidecars)."""
    from instructdiffusion_data.demo._figures import edit_pair
    from instructdiffusion_data.imageio import encode_jpeg
    from instructdiffusion_data.schema import make_key, new_row
    from instructdiffusion_data.writer import ShardWriter

    rng = np.random.default_rng(seed)
    out = root / "bench_edit" / "v1"
    writer = ShardWriter(out)
    rows = []
    for i in range(n):
        p = edit_pair(rng, h, w)
        rows.append(new_row(key=make_key("bench_edit", i, "v0"), task="edit", dataset="bench_edit",
                            src=encode_jpeg(p["src"], 90), tgt=encode_jpeg(p["tgt"], 90),
                            instruction=p["instruction"], meta={"kind": p["kind"]}))
    for s in range(0, n, per_shard):
        writer.write_shard(s // per_shard, rows[s:s + per_shard])
    writer.write_manifest(config={"name": "bench_edit"}, extra={"name": "bench_edit", "version": "v1",
                                                                 "mixture_weight": 1.0})
    return out


def write_sd_layout(out: Path, tiny: bool, device: str) -> Path:
    """An SD-1.5-layout folder with random weights at the configs' size (built on ``device``, saved fp32)."""
    import torch
    from transformers import CLIPTokenizer

    from bench_gpu_models import build_text_encoder, build_unet, build_vae
    from trainer.model import LATENT_CHANNELS, make_tiny_model

    make_tiny_model(out)  # tokenizer, scheduler, model_index.json; unet/vae/text_encoder are replaced below
    tok = CLIPTokenizer.from_pretrained(str(out / "tokenizer"))
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    with torch.device(device):
        parts = {"unet": lambda: build_unet("sd15_unet_ip2p", tiny, in_channels=LATENT_CHANNELS),
                 "vae": lambda: build_vae(tiny), "text_encoder": lambda: build_text_encoder(tiny, **ids)}
        for name, build in parts.items():
            m = build()
            m.save_pretrained(str(out / name))
            del m
    return out


def train_config(tmp: Path, layout: Path, shards: Path, tiny: bool, batch: int | None):
    from instructdiffusion_data.config import load_yaml
    from trainer.config import make_config

    raw = load_yaml(REPO / "configs" / "trainer" / ("tiny-cpu.yaml" if tiny else "sd15-256.yaml"))
    raw.update(output_dir=str(tmp / "run"), max_train_steps=10**6, report_to="none", checkpointing_steps=0,
               save_final_model=False, validation={"every_steps": 0, "at_end": False})
    raw["model"].update(pretrained=str(layout), local_files_only=True, create_tiny_if_missing=False, unet=None)
    raw["data"].update(mixture=None, outputs=[str(shards)])
    raw["data"]["num_workers"] = min(int(raw["data"].get("num_workers", 2)), max(1, (os.cpu_count() or 2) - 2))
    if batch:
        raw["train_batch_size"] = batch
    return make_config(**raw)


def train_bench(args, budget: float, time_cap, CapReached) -> dict:
    """Warm-up steps, then ``args.train_steps`` timed optimisation steps with the loader feeding them."""
    from bench_gpu import first_line, free, peak_gib, peak_reset, sync_fn

    gpu = args.device.startswith("cuda")
    steps = args.train_steps or (20 if gpu else 3)
    warmup = 5 if gpu else 1
    n = args.train_samples or (128 if gpu else 16)
    out: dict = {"status": "running", "warmup_steps": warmup}
    t0 = time.perf_counter()
    tmp_ctx = tempfile.TemporaryDirectory(prefix="bench_gpu_")
    tmp = Path(tmp_ctx.name)
    it = None
    try:
        with time_cap(min(args.cap_for.get("trainer", 2 * args.cap), budget), "trainer"):
            t = time.perf_counter()
            shards = write_demo_shards(tmp / "shards", n, *((80, 96) if args.tiny else (320, 384)))
            out["demo_shards"] = {"pairs": n, "seconds": time.perf_counter() - t}
            t = time.perf_counter()
            layout = write_sd_layout(tmp / "sd15-random", args.tiny, args.device)
            out["model_write_s"] = time.perf_counter() - t
            from trainer.data import MixtureDataset, make_loader
            from trainer.loop import Trainer

            cfg = train_config(tmp, layout, shards, args.tiny, None)
            t = time.perf_counter()
            tr = Trainer(cfg)
            out["trainer_init_s"] = time.perf_counter() - t
            acc = tr.accelerator
            out.update(batch=cfg.train_batch_size, resolution=cfg.data.resolution,
                       precision=acc.mixed_precision if acc.mixed_precision != "no" else "fp32",
                       loader_workers=cfg.data.num_workers, ema=tr.ema is not None,
                       gradient_checkpointing=cfg.model.gradient_checkpointing,
                       unet_params=sum(p.numel() for p in tr.unet.parameters()))
            sync = sync_fn(args.device)
            loader = make_loader(MixtureDataset(tr.specs, cfg.data, tr.tokenizer, seed=cfg.seed,
                                                rank=acc.process_index, world=acc.num_processes), cfg.train_batch_size)
            it = iter(loader)
            wait = 0.0
            for i in range(warmup + steps):
                if i == warmup:
                    sync()
                    peak_reset(args.device)
                    wait, t_steps = 0.0, time.perf_counter()
                t = time.perf_counter()
                batch = next(it)
                wait += time.perf_counter() - t
                with acc.accumulate(tr.unet):
                    loss = tr.loss(batch)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.optim.max_grad_norm > 0:
                        acc.clip_grad_norm_(tr.unet.parameters(), cfg.optim.max_grad_norm)
                    tr.optimizer.step()
                    tr.optimizer.zero_grad(set_to_none=True)
                tr.lr_scheduler.step()
                if tr.ema is not None:
                    tr.ema.step(tr.unet.parameters())
            sync()
            dt = time.perf_counter() - t_steps
            out.update(status="ok", timed_steps=steps, steps_per_s=steps / dt,
                       samples_per_s=steps * cfg.train_batch_size * acc.num_processes / dt,
                       data_wait_fraction=wait / dt, peak_mem_gib=peak_gib(args.device), last_loss=float(loss.detach()))
    except CapReached as e:
        out.update(status="cut", cut=str(e))
        log.warning("%s", e)
    except Exception as e:  # noqa: BLE001 - recorded in the results, the run goes on to the table
        out.update(status="failed", error=first_line(e))
        log.exception("trainer bench failed")
    finally:
        del it
        tmp_ctx.cleanup()
        free(args.device)
    out["seconds"] = time.perf_counter() - t0
    return out
