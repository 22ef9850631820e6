"""The training loop: latent diffusion noise-prediction loss on (source, instruction, target) triplets.

InstructPix2Pix-style (paper 3.3, 4.1): the target is encoded by the frozen VAE and noised; the source
latents are concatenated to the noisy latents (8-channel conv_in); the instruction, encoded by the
frozen CLIP text encoder, conditions the cross attention. Conditioning dropout (text only, image only,
both) enables classifier-free guidance on both. accelerate supplies mixed precision, several GPUs and
nodes, gradient accumulation and checkpoint state; the loop is driven by ``max_train_steps`` (a
streaming dataset has no length).

A checkpoint ``<output_dir>/checkpoint-<step>/`` holds accelerate's state (UNet, optimiser, LR
scheduler, EMA, RNGs) plus, per rank, ``trainer_state_rank<r>.json`` (step, data-stream state) and
``noise_rng_rank<r>.pt``; the json is written last and marks the checkpoint complete.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from instructdiffusion_data.config import to_dict
from instructdiffusion_data.errors import ConfigError

from .config import TrainConfig
from .data import MixtureDataset, StreamState, _seed, make_loader, to_model_range, validation_pairs
from .datasets import resolve_datasets
from .model import freeze, load_components, make_ema, make_tiny_model, widen_conv_in

log = logging.getLogger(__name__)

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainResult:
    step: int
    losses: list[float]  # per optimisation step (mean over accumulation micro-batches, this rank)
    checkpoints: list[str]
    validation_images: list[str]
    corrupt: int
    data_wait_fraction: float
    samples_per_s: float


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (rank-0 state written), oldest first."""
    d = Path(output_dir)
    found = []
    for p in d.glob("checkpoint-*") if d.is_dir() else []:
        m = CKPT_RE.match(p.name)
        if m and (p / "trainer_state_rank0.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def resolve_resume(cfg: TrainConfig, resume: str | None) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        ck = list_checkpoints(cfg.output_dir)
        if not ck:
            log.info("resume_from_checkpoint latest: no checkpoint in %s, starting from step 0", cfg.output_dir)
            return None
        return ck[-1]
    p = Path(resume)
    if not (p / "trainer_state_rank0.json").is_file():
        raise ConfigError(f"resume_from_checkpoint: not a complete checkpoint: {resume}")
    return p


def prepare_model_path(cfg: TrainConfig, is_main: bool) -> None:
    m = cfg.model
    if m.create_tiny_if_missing and not Path(m.pretrained).exists():
        if is_main:
            log.info("model.pretrained %s missing and create_tiny_if_missing: writing a tiny random model", m.pretrained)
            make_tiny_model(m.pretrained, seed=cfg.seed, sample_size=m.tiny_sample_size)


def _grid(pairs: list[dict], edited: list[np.ndarray]) -> np.ndarray:
    """Rows of [source | edited | target] with the instruction written under each row."""
    import cv2

    rows = []
    for p, e in zip(pairs, edited):
        r = p["src"].shape[0]
        e = cv2.resize(e, (r, r)) if e.shape[:2] != (r, r) else e
        row = np.concatenate([p["src"], e, p["tgt"]], axis=1)
        strip = np.full((18, row.shape[1], 3), 255, np.uint8)
        cv2.putText(strip, p["instruction"][:80], (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([row, strip], axis=0))
    return np.concatenate(rows, axis=0)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.cfg = cfg
        out = Path(cfg.output_dir)
        log_with = None if cfg.report_to == "none" else cfg.report_to
        self.accelerator = Accelerator(
            gradient_accumulation_steps=cfg.gradient_accumulation_steps, mixed_precision=cfg.mixed_precision,
            log_with=log_with, project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
        acc = self.accelerator
        if cfg.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        if cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        torch.manual_seed(cfg.seed)
        self.specs = resolve_datasets(cfg.data)  # before the models: a wrong data path fails fast
        prepare_model_path(cfg, acc.is_main_process)
        acc.wait_for_everyone()
        c = load_components(cfg.model.pretrained, revision=cfg.model.revision, unet_path=cfg.model.unet,
                            local_files_only=cfg.model.local_files_only)
        self.tokenizer, self.noise_scheduler = c.tokenizer, c.noise_scheduler
        if cfg.model.prediction_type:
            self.noise_scheduler.register_to_config(prediction_type=cfg.model.prediction_type)
        unet = widen_conv_in(c.unet)
        freeze(c.vae, c.text_encoder)
        unet.train()
        if cfg.model.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.ema = make_ema(unet, cfg.model.ema_decay) if cfg.model.use_ema else None

        o = cfg.optim
        world = acc.num_processes
        lr = o.learning_rate * (cfg.train_batch_size * cfg.gradient_accumulation_steps * world if o.scale_lr else 1)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(o.adam_beta1, o.adam_beta2),
                                      weight_decay=o.adam_weight_decay, eps=o.adam_epsilon)
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(o.lr_scheduler, optimizer=optimizer, num_warmup_steps=o.lr_warmup_steps,
                                          num_training_steps=cfg.max_train_steps)
        self.unet, self.optimizer = acc.prepare(unet, optimizer)
        acc.register_for_checkpointing(self.lr_scheduler)
        if self.ema is not None:
            acc.register_for_checkpointing(self.ema)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
        self.vae = c.vae.to(acc.device, dtype=self.weight_dtype)
        self.text_encoder = c.text_encoder.to(acc.device, dtype=self.weight_dtype)
        if self.ema is not None:
            self.ema.to(acc.device)
        with torch.no_grad():
            ids = self.tokenizer("", max_length=self.tokenizer.model_max_length, padding="max_length",
                                 truncation=True, return_tensors="pt").input_ids.to(acc.device)
            self.null_text = self.text_encoder(ids)[0]
        log.info("datasets: %s", ", ".join(f"{s.name} p={s.probability:.3f} ({len(s.shards)} shards)" for s in self.specs))
        self.noise_gen = torch.Generator(device=acc.device).manual_seed(_seed(cfg.seed, acc.process_index, 1))
        self.step = 0
        self.stream = StreamState(seed=cfg.seed)
        self._val_pairs = None

    # --- checkpoints ------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        d = Path(self.cfg.output_dir) / f"checkpoint-{self.step}"
        acc.save_state(str(d))
        r = acc.process_index
        torch.save(self.noise_gen.get_state(), d / f"noise_rng_rank{r}.pt")
        state = {"step": self.step, "stream": self.stream.to_dict(), "config": to_dict(self.cfg)}
        tmp = d / f"trainer_state_rank{r}.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(d / f"trainer_state_rank{r}.json")
        acc.wait_for_everyone()
        if acc.is_main_process and self.cfg.checkpoints_total_limit > 0:
            for old in list_checkpoints(self.cfg.output_dir)[: -self.cfg.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
                log.info("removed old checkpoint %s", old)
        if acc.is_main_process:
            log.info("checkpoint %s", d)
        return d

    def load_checkpoint(self, d: Path) -> None:
        acc = self.accelerator
        acc.load_state(str(d))
        if self.ema is not None:
            self.ema.to(acc.device)
        r = acc.process_index
        path = d / f"trainer_state_rank{r}.json"
        if not path.is_file():
            raise ConfigError(f"resume_from_checkpoint: {d} has no state for rank {r} (saved with fewer processes?)")
        state = json.loads(path.read_text())
        self.step = int(state["step"])
        self.stream = StreamState.from_dict(state["stream"]).for_resume(
            self.cfg.data.resume_mode, self.cfg.data.replay_max_samples,
            layout=[acc.num_processes, max(1, self.cfg.data.num_workers)])
        rng = d / f"noise_rng_rank{r}.pt"
        if rng.is_file():
            self.noise_gen.set_state(torch.load(rng, weights_only=True))
        log.info("resumed from %s at step %d", d, self.step)

    # --- one step ---------------------------------------------------------------------------------

    def loss(self, batch: dict) -> torch.Tensor:
        acc, g = self.accelerator, self.noise_gen
        dev, dt = acc.device, self.weight_dtype
        src = to_model_range(batch["src"], dev, dt)
        tgt = to_model_range(batch["tgt"], dev, dt)
        ids = batch["input_ids"].to(dev, non_blocking=True)
        bsz = tgt.shape[0]
        with torch.no_grad():
            latents = self.vae.encode(tgt).latent_dist.sample(generator=g) * self.vae.config.scaling_factor
            src_latents = self.vae.encode(src).latent_dist.mode()
            text = self.text_encoder(ids)[0]
        noise = torch.randn(latents.shape, generator=g, device=dev, dtype=latents.dtype)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bsz,), generator=g, device=dev)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        # conditioning dropout: u in [0, t) text only, [t, t+b) both, [t+b, t+b+i) image only
        d = self.cfg.conditioning_dropout
        u = torch.rand(bsz, generator=g, device=dev)
        drop_text = u < d.text_only + d.both
        drop_image = (u >= d.text_only) & (u < d.text_only + d.both + d.image_only)
        text = torch.where(drop_text[:, None, None], self.null_text.to(text.dtype), text)
        src_latents = src_latents * (~drop_image)[:, None, None, None].to(src_latents.dtype)
        model_in = torch.cat([noisy, src_latents], dim=1)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        pred = self.unet(model_in, timesteps, text, return_dict=False)[0]
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    # --- validation -------------------------------------------------------------------------------

    def validate(self) -> str | None:
        acc, v = self.accelerator, self.cfg.validation
        path = None
        if acc.is_main_process and v.num_samples > 0:
            from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline
            from PIL import Image

            if self._val_pairs is None:
                self._val_pairs = validation_pairs(self.specs, v.num_samples, self.cfg.data.resolution)
            unet = acc.unwrap_model(self.unet)
            if self.ema is not None:
                self.ema.store(unet.parameters())
                self.ema.copy_to(unet.parameters())
            unet.eval()
            pipe = StableDiffusionInstructPix2PixPipeline(
                vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=unet,
                scheduler=EulerAncestralDiscreteScheduler.from_config(self.noise_scheduler.config),
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            gen = torch.Generator(device=acc.device).manual_seed(v.seed)
            edited = []
            try:
                with acc.autocast():
                    for p in self._val_pairs:
                        img = pipe(p["instruction"], image=Image.fromarray(p["src"]), num_inference_steps=v.num_inference_steps,
                                   guidance_scale=v.guidance_scale, image_guidance_scale=v.image_guidance_scale,
                                   generator=gen).images[0]
                        edited.append(np.asarray(img.convert("RGB")))
            finally:
                if self.ema is not None:
                    self.ema.restore(unet.parameters())
                unet.train()
            grid = _grid(self._val_pairs, edited)
            d = Path(self.cfg.output_dir) / "validation"
            d.mkdir(parents=True, exist_ok=True)
            path = str(d / f"step-{self.step:07d}.png")
            Image.fromarray(grid).save(path)
            (d / f"step-{self.step:07d}.json").write_text(json.dumps(
                [{"key": p["key"], "dataset": p["dataset"], "instruction": p["instruction"]} for p in self._val_pairs], indent=1))
            for t in acc.trackers:
                if t.name == "tensorboard":
                    t.writer.add_image("validation", grid, self.step, dataformats="HWC")
            log.info("validation grid %s", path)
        acc.wait_for_everyone()
        return path

    # --- the loop ---------------------------------------------------------------------------------

    def train(self, resume: str | None = None) -> TrainResult:
        cfg, acc = self.cfg, self.accelerator
        ck = resolve_resume(cfg, resume if resume is not None else cfg.resume_from_checkpoint)
        if ck is not None:
            self.load_checkpoint(ck)
        if acc.is_main_process and cfg.report_to != "none":
            acc.init_trackers(cfg.name, config={k: v for k, v in _flat(to_dict(cfg)).items()
                                                if isinstance(v, (int, float, str, bool))})
        dataset = MixtureDataset(self.specs, cfg.data, self.tokenizer, seed=cfg.seed, rank=acc.process_index,
                                 world=acc.num_processes, state=self.stream)
        loader = make_loader(dataset, cfg.train_batch_size)
        it = iter(loader)
        losses, ckpts, grids = [], [], []
        micro_losses: list[torch.Tensor] = []
        window = {"t0": time.perf_counter(), "wait": 0.0, "samples": 0, "loss": [], "steps": 0}
        total = {"t": 0.0, "wait": 0.0, "samples": 0}
        samples_per_step = cfg.train_batch_size * acc.num_processes
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_train_steps, initial=self.step, desc="train", disable=not acc.is_local_main_process)
        while self.step < cfg.max_train_steps:
            t0 = time.perf_counter()
            batch = next(it)
            waited = time.perf_counter() - t0
            window["wait"] += waited
            total["wait"] += waited
            self.stream.update(batch)
            with acc.accumulate(self.unet):
                loss = self.loss(batch)
                acc.backward(loss)
                if acc.sync_gradients and cfg.optim.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.unet.parameters(), cfg.optim.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            micro_losses.append(loss.detach())
            window["samples"] += samples_per_step
            if not acc.sync_gradients:
                continue
            self.lr_scheduler.step()
            if self.ema is not None:
                self.ema.step(self.unet.parameters())
            self.step += 1
            step_loss = torch.stack(micro_losses).mean()
            micro_losses = []
            losses.append(float(step_loss))
            window["loss"].append(acc.gather(step_loss[None]).mean())
            window["steps"] += 1
            bar.update(1)
            if self.step % cfg.log_every_steps == 0 or self.step == cfg.max_train_steps:
                dt = time.perf_counter() - window["t0"]
                logs = {"loss": float(torch.stack(window["loss"]).mean()), "lr": self.lr_scheduler.get_last_lr()[0],
                        "samples_per_s": window["samples"] / max(dt, 1e-9),
                        "data_wait_fraction": window["wait"] / max(dt, 1e-9),
                        "corrupt_samples": self.stream.corrupt_total}
                acc.log(logs, step=self.step)
                bar.set_postfix(loss=f"{logs['loss']:.4f}", wait=f"{logs['data_wait_fraction']:.2f}")
                if acc.is_main_process:
                    log.info("step %d loss %.4f lr %.2e %.1f samples/s data-wait %.0f%% skipped %d (rank 0)", self.step,
                             logs["loss"], logs["lr"], logs["samples_per_s"], 100 * logs["data_wait_fraction"],
                             logs["corrupt_samples"])
                total["t"] += dt
                total["samples"] += window["samples"]
                window = {"t0": time.perf_counter(), "wait": 0.0, "samples": 0, "loss": [], "steps": 0}
            if cfg.checkpointing_steps > 0 and self.step % cfg.checkpointing_steps == 0:
                ckpts.append(str(self.save_checkpoint()))
            if cfg.validation.every_steps > 0 and self.step % cfg.validation.every_steps == 0:
                grids.append(self.validate())
        bar.close()
        if cfg.checkpointing_steps > 0 and (not ckpts or not ckpts[-1].endswith(f"-{self.step}")) and losses:
            ckpts.append(str(self.save_checkpoint()))
        if cfg.validation.at_end and (cfg.validation.every_steps <= 0 or self.step % cfg.validation.every_steps) and losses:
            grids.append(self.validate())
        if cfg.save_final_model and acc.is_main_process and losses:
            self.save_final()
        acc.wait_for_everyone()
        acc.end_training()
        del it
        return TrainResult(step=self.step, losses=losses, checkpoints=ckpts, validation_images=[g for g in grids if g],
                           corrupt=self.stream.corrupt_total,
                           data_wait_fraction=total["wait"] / max(total["t"], 1e-9) if total["t"] else math.nan,
                           samples_per_s=total["samples"] / max(total["t"], 1e-9) if total["t"] else math.nan)

    def save_final(self) -> Path:
        """``<output_dir>/final``: the EMA UNet (or the raw one) in the SD layout beside the frozen parts,
        loadable with ``StableDiffusionInstructPix2PixPipeline.from_pretrained``."""
        from diffusers import StableDiffusionInstructPix2PixPipeline

        out = Path(self.cfg.output_dir) / "final"
        unet = self.accelerator.unwrap_model(self.unet)
        if self.ema is not None:
            self.ema.store(unet.parameters())
            self.ema.copy_to(unet.parameters())
        try:
            pipe = StableDiffusionInstructPix2PixPipeline(
                vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=unet,
                scheduler=self.noise_scheduler, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)
            pipe.save_pretrained(str(out))
        finally:
            if self.ema is not None:
                self.ema.restore(unet.parameters())
        log.info("final model (EMA UNet) written to %s", out)
        return out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def train(cfg: TrainConfig, resume: str | None = None) -> TrainResult:
    return Trainer(cfg).train(resume)
