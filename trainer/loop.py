"""The training loop: latent diffusion noise-prediction loss, in two modes.

``mode: edit`` (InstructPix2Pix-style, paper 3.3, 4.1): the target is encoded by the frozen VAE and
noised; the source latents are concatenated to the noisy latents (8-channel conv_in); the instruction,
encoded by the frozen CLIP text encoder, conditions the cross attention. Conditioning dropout (text
only, image only, both) enables classifier-free guidance on both. ``mode: adapt`` (pretraining
adaptation, paper 3.3): a text-to-image fine-tune of the 4-channel UNet on the target and caption of
rows of task ``adapt``; the caption is dropped with probability ``text_only + both``.

accelerate supplies mixed precision, several GPUs/nodes/CPU processes, gradient accumulation and
checkpoint state; the loop is driven by ``max_train_steps`` (a streaming dataset has no length).

A checkpoint ``<output_dir>/checkpoint-<step>/`` holds ``unet/`` and, with EMA, ``unet_ema/``
(diffusers model folders, written through accelerate's save-state hook as diffusers' examples do),
accelerate's optimiser/LR-scheduler/RNG state and, per rank, ``trainer_state_rank<r>.json`` (step,
that rank's data-stream state, a digest of its UNet weights) and ``noise_rng_rank<r>.pt``; rank 0's
json is written last and marks the checkpoint complete. Only rank 0 writes models.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from instructdiffusion_data.config import to_dict
from instructdiffusion_data.errors import ConfigError

from .config import TrainConfig, check_options
from .data import MixtureDataset, StreamState, _seed, make_loader, state_file, to_model_range
from .datasets import resolve_datasets
from .export import list_checkpoints, resolve_resume  # noqa: F401 (list_checkpoints: part of the loop's API)
from .model import (check_unet_for_mode, enable_xformers, freeze, load_components, make_ema, make_optimizer,
                    make_tiny_model, weights_digest, widen_conv_in)

log = logging.getLogger(__name__)



@dataclass
class TrainResult:
    step: int
    losses: list[float]  # per optimisation step (mean over accumulation micro-batches, this rank)
    checkpoints: list[str]
    validation_images: list[str]
    corrupt: int
    data_wait_fraction: float | None  # None: no step ran (resumed at max_train_steps)
    samples_per_s: float | None
    final: str | None = None  # the final model folder, when this run wrote it
    is_main: bool = True  # rank 0 (the process that reports)


def prepare_model_path(cfg: TrainConfig, is_main: bool) -> None:
    m = cfg.model
    if m.create_tiny_if_missing and not Path(m.pretrained).exists():
        if is_main:
            log.info("model.pretrained %s missing and create_tiny_if_missing: writing a tiny random model", m.pretrained)
            make_tiny_model(m.pretrained, seed=cfg.seed, sample_size=m.tiny_sample_size)


def distributed_on_cpu() -> bool:
    """Launched as one of several processes (torchrun, ``accelerate launch --multi_gpu``) on a host
    without an accelerator: accelerate only sets up CPU processes (gloo) when told ``cpu=True``;
    otherwise every process runs alone as rank 0."""
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    has_acc = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return launched and not has_acc


class Trainer:
    def __init__(self, cfg: TrainConfig):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.cfg = cfg
        check_options(cfg)
        out = Path(cfg.output_dir)
        log_with = None if cfg.report_to == "none" else cfg.report_to
        self.accelerator = Accelerator(
            gradient_accumulation_steps=cfg.gradient_accumulation_steps, mixed_precision=cfg.mixed_precision,
            cpu=distributed_on_cpu(), log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
        acc = self.accelerator
        log.info("process %d of %d (%s, backend %s, device %s, mixed precision %s)", acc.process_index,
                 acc.num_processes, acc.distributed_type.value, acc.state.backend, acc.device, acc.mixed_precision)
        if cfg.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        if cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        torch.manual_seed(cfg.seed)
        self.rows = "adapt" if cfg.mode == "adapt" else "paired"
        self.specs = resolve_datasets(cfg.data)  # before the models: a wrong data path fails fast
        prepare_model_path(cfg, acc.is_main_process)
        acc.wait_for_everyone()
        c = load_components(cfg.model.pretrained, revision=cfg.model.revision, unet_path=cfg.model.unet,
                            local_files_only=cfg.model.local_files_only)
        self.tokenizer, self.noise_scheduler = c.tokenizer, c.noise_scheduler
        if cfg.model.prediction_type:
            self.noise_scheduler.register_to_config(prediction_type=cfg.model.prediction_type)
        check_unet_for_mode(c.unet, cfg.mode)
        unet = c.unet if cfg.mode == "adapt" else widen_conv_in(c.unet)
        freeze(c.vae, c.text_encoder)
        unet.train()
        if cfg.model.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if cfg.model.enable_xformers_memory_efficient_attention:
            enable_xformers(unet)
        self.ema = make_ema(unet, cfg.model.ema_decay) if cfg.model.use_ema else None

        o = cfg.optim
        world = acc.num_processes
        lr = o.learning_rate * (cfg.train_batch_size * cfg.gradient_accumulation_steps * world if o.scale_lr else 1)
        optimizer = make_optimizer(unet.parameters(), lr=lr, betas=(o.adam_beta1, o.adam_beta2),
                                   weight_decay=o.adam_weight_decay, eps=o.adam_epsilon, use_8bit_adam=o.use_8bit_adam)
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(o.lr_scheduler, optimizer=optimizer, num_warmup_steps=o.lr_warmup_steps,
                                          num_training_steps=cfg.max_train_steps)
        self.unet, self.optimizer = acc.prepare(unet, optimizer)
        acc.register_for_checkpointing(self.lr_scheduler)
        acc.register_save_state_pre_hook(self._save_models_hook)
        acc.register_load_state_pre_hook(self._load_models_hook)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
        self.vae = c.vae.to(acc.device, dtype=self.weight_dtype)
        self.text_encoder = c.text_encoder.to(acc.device, dtype=self.weight_dtype)
        if self.ema is not None:
            self.ema.to(acc.device)
        with torch.no_grad():
            ids = self.tokenizer("", max_length=self.tokenizer.model_max_length, padding="max_length",
                                 truncation=True, return_tensors="pt").input_ids.to(acc.device)
            self.null_text = self.text_encoder(ids)[0]
        log.info("mode %s; datasets: %s", cfg.mode,
                 ", ".join(f"{s.name} p={s.probability:.3f} ({len(s.shards)} shards)" for s in self.specs))
        self.noise_gen = torch.Generator(device=acc.device).manual_seed(_seed(cfg.seed, acc.process_index, 1))
        self.step = 0
        self.stream = StreamState(seed=cfg.seed)
        self._val_pairs = None
        self._reset_ema = False  # set by the load hook: a checkpoint without unet_ema/

    # --- checkpoints ------------------------------------------------------------------------------

    def _save_models_hook(self, models, weights, output_dir) -> None:
        """accelerate save-state hook (diffusers' convention): the UNet as ``unet/`` and the EMA as
        ``unet_ema/``, diffusers folders a user can load; accelerate then skips its own model file."""
        if self.accelerator.is_main_process:
            for m in models:
                self.accelerator.unwrap_model(m).save_pretrained(os.path.join(output_dir, "unet"))
            if self.ema is not None:
                self.ema.save_pretrained(os.path.join(output_dir, "unet_ema"))
            log.info("rank %d wrote unet/%s to %s", self.accelerator.process_index,
                     " and unet_ema/" if self.ema is not None else "", output_dir)
        while weights:
            weights.pop()

    def _load_models_hook(self, models, input_dir) -> None:
        from .export import load_unet_folder

        d = Path(input_dir)
        if self.ema is not None:
            if (d / "unet_ema").is_dir():
                shadow, ema_state = load_unet_folder(d / "unet_ema")
                ema_state["shadow_params"] = [p.detach() for p in shadow.parameters()]
                self.ema.load_state_dict(ema_state)
                del shadow
            else:
                log.warning("%s has no unet_ema/: the EMA starts from the resumed weights", d)
                self._reset_ema = True
        if not (d / "unet").is_dir():
            return  # accelerate's own model file (checkpoints written before unet/ existed)
        while models:
            model = self.accelerator.unwrap_model(models.pop())
            model.load_state_dict(load_unet_folder(d / "unet")[0].state_dict())

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        d = Path(self.cfg.output_dir) / f"checkpoint-{self.step}"
        acc.save_state(str(d))
        r = acc.process_index
        torch.save(self.noise_gen.get_state(), d / f"noise_rng_rank{r}.pt")
        state = {"step": self.step, "rank": r, "world": acc.num_processes, "stream": self.stream.to_dict(),
                 "unet_sha256": weights_digest(acc.unwrap_model(self.unet)), "config": to_dict(self.cfg)}
        acc.wait_for_everyone()  # rank 0's json marks the checkpoint complete: the others' first
        if r != 0:
            self._write_state(d, r, state)
        acc.wait_for_everyone()
        if r == 0:
            digests = {0: state["unet_sha256"]}
            for q in range(1, acc.num_processes):
                f = d / state_file(q)
                if f.is_file():
                    digests[q] = json.loads(f.read_text()).get("unet_sha256")
            if len(set(digests.values())) > 1:
                log.error("step %d: the ranks' UNet weights differ (%s)", self.step, digests)
            self._write_state(d, r, state)
        acc.wait_for_everyone()
        if acc.is_main_process and self.cfg.checkpoints_total_limit > 0:
            for old in list_checkpoints(self.cfg.output_dir)[: -self.cfg.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
                log.info("removed old checkpoint %s", old)
        if acc.is_main_process:
            log.info("checkpoint %s", d)
        return d

    @staticmethod
    def _write_state(d: Path, r: int, state: dict) -> None:
        tmp = d / f"{state_file(r)}.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(d / state_file(r))

    def load_checkpoint(self, d: Path) -> None:
        acc = self.accelerator
        r = acc.process_index
        path = d / state_file(r)
        if not path.is_file():
            raise ConfigError(f"resume_from_checkpoint: {d} has no state for rank {r} (saved with fewer processes?)")
        self._reset_ema = False
        acc.load_state(str(d))
        if self.ema is not None:
            if self._reset_ema:
                self.ema = make_ema(acc.unwrap_model(self.unet), self.cfg.model.ema_decay)
            self.ema.to(acc.device)
        state = json.loads(path.read_text())
        self.step = int(state["step"])
        self.stream = StreamState.from_dict(state["stream"]).for_resume(
            self.cfg.data.resume_mode, self.cfg.data.replay_max_samples,
            layout=[acc.num_processes, max(1, self.cfg.data.num_workers)])
        rng = d / f"noise_rng_rank{r}.pt"
        if rng.is_file():
            self.noise_gen.set_state(torch.load(rng, weights_only=True))
        log.info("rank %d resumed from %s at step %d", r, d, self.step)

    # --- one step ---------------------------------------------------------------------------------

    def loss_terms(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prediction, target, timesteps) of one batch; draws noise, timesteps and dropout from the
        rank's noise generator."""
        acc, g = self.accelerator, self.noise_gen
        dev, dt = acc.device, self.weight_dtype
        edit = self.cfg.mode != "adapt"
        tgt = to_model_range(batch["tgt"], dev, dt)
        ids = batch["input_ids"].to(dev, non_blocking=True)
        bsz = tgt.shape[0]
        with torch.no_grad():
            latents = self.vae.encode(tgt).latent_dist.sample(generator=g) * self.vae.config.scaling_factor
            src_latents = self.vae.encode(to_model_range(batch["src"], dev, dt)).latent_dist.mode() if edit else None
            text = self.text_encoder(ids)[0]
        noise = torch.randn(latents.shape, generator=g, device=dev, dtype=latents.dtype)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bsz,), generator=g, device=dev)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        # conditioning dropout: u in [0, t) text only, [t, t+b) both, [t+b, t+b+i) image only
        d = self.cfg.conditioning_dropout
        u = torch.rand(bsz, generator=g, device=dev)
        drop_text = u < d.text_only + d.both
        text = torch.where(drop_text[:, None, None], self.null_text.to(text.dtype), text)
        if edit:
            drop_image = (u >= d.text_only) & (u < d.text_only + d.both + d.image_only)
            src_latents = src_latents * (~drop_image)[:, None, None, None].to(src_latents.dtype)
            model_in = torch.cat([noisy, src_latents], dim=1)
        else:
            model_in = noisy
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        pred = self.unet(model_in, timesteps, text, return_dict=False)[0]
        return pred, target, timesteps

    def weighted_mse(self, pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """MSE, or with ``optim.snr_gamma`` the min-SNR-gamma weighting (per sample
        min(SNR(t), gamma) / SNR(t) for epsilon, / (SNR(t) + 1) for v-prediction), as diffusers does."""
        gamma = self.cfg.optim.snr_gamma
        if gamma is None:
            return F.mse_loss(pred.float(), target.float(), reduction="mean")
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.noise_scheduler, timesteps)
        w = torch.clamp(snr, max=gamma)
        w = w / (snr + 1) if self.noise_scheduler.config.prediction_type == "v_prediction" else w / snr
        per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.ndim)))
        return (per * w).mean()

    def loss(self, batch: dict) -> torch.Tensor:
        # grad mode is the caller's thread state (a notebook cell or an eval harness under no_grad, a
        # library that left it off): the training step builds its graph whatever that state is
        with torch.enable_grad():
            return self.weighted_mse(*self.loss_terms(batch))

    def validate(self) -> str | None:
        from .validation import run_validation

        path = run_validation(self) if self.accelerator.is_main_process and self.cfg.validation.num_samples > 0 else None
        self.accelerator.wait_for_everyone()
        return path

    # --- the loop ---------------------------------------------------------------------------------

    def train(self, resume: str | None = None) -> TrainResult:
        cfg, acc = self.cfg, self.accelerator
        ck = resolve_resume(cfg, resume if resume is not None else cfg.resume_from_checkpoint)
        if ck is not None:
            self.load_checkpoint(ck)
        if self.step >= cfg.max_train_steps:
            return self._finish_done(ck)
        if acc.is_main_process and cfg.report_to != "none":
            acc.init_trackers(cfg.name, config={k: v for k, v in _flat(to_dict(cfg)).items()
                                                if isinstance(v, (int, float, str, bool))})
        dataset = MixtureDataset(self.specs, cfg.data, self.tokenizer, seed=cfg.seed, rank=acc.process_index,
                                 world=acc.num_processes, state=self.stream, rows=self.rows)
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
            if not losses and not micro_losses:  # each rank's first batch: shows that ranks read different data
                log.info("rank %d first batch: %s", acc.process_index, " ".join(map(str, batch["key"])))
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
        if cfg.checkpointing_steps > 0 and (not ckpts or not ckpts[-1].endswith(f"-{self.step}")):
            ckpts.append(str(self.save_checkpoint()))
        if cfg.validation.at_end and (cfg.validation.every_steps <= 0 or self.step % cfg.validation.every_steps):
            grids.append(self.validate())
        final = self.save_final() if cfg.save_final_model else None
        acc.wait_for_everyone()
        acc.end_training()
        del it
        return TrainResult(step=self.step, losses=losses, checkpoints=ckpts, validation_images=[g for g in grids if g],
                           corrupt=self.stream.corrupt_total,
                           data_wait_fraction=total["wait"] / total["t"] if total["t"] else None,
                           samples_per_s=total["samples"] / total["t"] if total["t"] else None,
                           final=final, is_main=acc.is_main_process)

    def _finish_done(self, ck: Path | None) -> TrainResult:
        """Resumed at or past ``max_train_steps``: nothing to train; write ``final/`` if it is missing."""
        cfg, acc = self.cfg, self.accelerator
        log.info("step %d: max_train_steps %d already reached, nothing to train", self.step, cfg.max_train_steps)
        done = (Path(cfg.output_dir) / "final" / "model_index.json").is_file()
        final = self.save_final() if cfg.save_final_model and not done else None
        if done:
            log.info("final model already in %s", Path(cfg.output_dir) / "final")
        return TrainResult(step=self.step, losses=[], checkpoints=[str(ck)] if ck else [], validation_images=[],
                           corrupt=self.stream.corrupt_total, data_wait_fraction=None, samples_per_s=None,
                           final=final, is_main=acc.is_main_process)

    def save_final(self) -> str:
        """``<output_dir>/final``: a diffusers pipeline folder (:func:`trainer.export.write_pipeline`) with
        the EMA UNet (or the trained one), every component in ``final_dtype``; written by rank 0."""
        from .export import DTYPES, unet_copy, write_pipeline

        acc, cfg = self.accelerator, self.cfg
        out = Path(cfg.output_dir) / "final"
        if acc.is_main_process:
            unet = unet_copy(acc.unwrap_model(self.unet), DTYPES[cfg.final_dtype], ema=self.ema)
            m = cfg.model
            write_pipeline(out, unet, pretrained=m.pretrained, mode=cfg.mode, dtype=cfg.final_dtype,
                           revision=m.revision, local_files_only=m.local_files_only, prediction_type=m.prediction_type)
            log.info("final model (%s UNet, %s) written to %s", "EMA" if self.ema is not None else "trained",
                     cfg.final_dtype, out)
        acc.wait_for_everyone()
        return str(out)


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
