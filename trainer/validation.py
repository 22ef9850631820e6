"""Validation of a training run: a fixed set of samples, one per task in turn, and the grid they make.

:func:`validation_pairs` reads the first samples of each dataset's first shards and takes them
round-robin over the *tasks* of the mixture (keypoint, seg, edit, ...: the ``task`` field of each
sample's json, or the dataset name where there is none), datasets of one task in turn inside it, so a
grid of 8 shows every task a mixture holds rather than the first datasets. It is the same for every
run on the same shards. :func:`make_grid` draws rows of images with the instruction (or caption)
under each row, word-wrapped to the row's width: never cut.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import webdataset as wds

from instructdiffusion_data.errors import RecordError

from .data import AugmentConfig, augment_sample, decode_sample, row_kind_ok, sample_task
from .datasets import DatasetSpec

log = logging.getLogger(__name__)

FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.4
LINE_H = 13  # pixels per text line at FONT_SCALE (cap height ~9 + descent + spacing)
PAD = 3


def _raw_samples(spec: DatasetSpec, max_shards: int) -> Iterator[dict]:
    errors: list[str] = []

    def handler(exn: Exception) -> bool:
        errors.append(str(exn))
        return True

    yield from wds.tarfile_to_samples(handler=handler)(iter([{"url": u} for u in spec.shards[:max_shards]]))
    if errors:
        log.info("validation: %s: %d tar read errors in its first shards", spec.name, len(errors))


def validation_pairs(specs: list[DatasetSpec], n: int, resolution: int, *, rows: str = "paired",
                     aug: AugmentConfig | None = None, scan: int | None = None, max_shards: int = 2) -> list[dict]:
    """``n`` fixed samples, round-robin over the mixture's tasks.

    Per dataset, up to ``scan`` raw samples (default ``max(64, 8 n)``) of its first ``max_shards``
    shards are read and up to ``n`` usable ones kept per task. Tasks are ordered by first appearance
    (mixture order, then shard order); the i-th round takes the i-th sample of every task, and inside
    a task the datasets that hold it alternate. ``rows="paired"``: samples with a source (``src``,
    ``tgt``, ``instruction``); ``rows="adapt"``: samples of task ``adapt`` (``src`` is None, ``tgt``,
    ``instruction`` = the caption). Placed as the trainer's augmentation does without randomness
    (:func:`trainer.data.augment_sample` with no rng: centred, protected region whole, no flip).
    """
    if n <= 0:
        return []
    scan = scan or max(64, 8 * n)
    aug = aug or AugmentConfig()
    # task -> dataset index -> samples, both in order of first appearance
    by_task: dict[str, dict[int, list[dict]]] = {}
    for di, spec in enumerate(specs):
        kept: dict[str, int] = {}
        for seen, raw in enumerate(_raw_samples(spec, max_shards)):
            if seen >= scan:
                break
            if not row_kind_ok(raw, rows):
                continue
            task = str(sample_task(raw) or spec.name)
            if task == "adapt":  # adaptation rows: round-robin over the tasks their targets were rendered for
                origin = (raw["__doc__"].get("meta") or {}).get("adapt") or {}
                task = f"adapt/{origin['from_task']}" if isinstance(origin, dict) and origin.get("from_task") else task
            if kept.get(task, 0) >= n:
                continue
            try:
                d = decode_sample(raw, with_mask=aug.task_aware)
                a = augment_sample(d, resolution, None, aug)
            except (RecordError, cv2.error, ValueError):
                continue
            src, tgt, text = a.src, a.tgt, d.text
            kept[task] = kept.get(task, 0) + 1
            by_task.setdefault(task, {}).setdefault(di, []).append(
                {"src": src, "tgt": tgt, "instruction": text, "dataset": spec.name, "task": task,
                 "key": raw.get("__key__", "")})
    # inside a task: datasets alternate
    queues = []
    for per_ds in by_task.values():
        lists = list(per_ds.values())
        merged = [lst[i] for i in range(max(len(lst) for lst in lists)) for lst in lists if i < len(lst)]
        queues.append(merged)
    out: list[dict] = []
    for i in range(n):
        for q in queues:
            if i < len(q) and len(out) < n:
                out.append(q[i])
    return out


def wrap_text(text: str, width: int) -> list[str]:
    """Words of ``text`` in lines no wider than ``width`` pixels (a word wider than a line is split)."""
    def fits(s: str) -> bool:
        return cv2.getTextSize(s, FONT, FONT_SCALE, 1)[0][0] <= width

    lines: list[str] = []
    cur = ""
    for word in text.split():
        while len(word) > 1 and not fits(word):  # a word alone wider than the line: break it
            cut = len(word) - 1
            while cut > 1 and not fits(word[:cut]):
                cut -= 1
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(word[:cut])
            word = word[cut:]
        cand = f"{cur} {word}" if cur else word
        if fits(cand) or not cur:
            cur = cand
        else:
            lines.append(cur)
            cur = word
    if cur:
        lines.append(cur)
    return lines or [""]


def text_strip(text: str, width: int) -> np.ndarray:
    """A white strip ``width`` pixels wide with ``text`` wrapped onto as many lines as it needs."""
    lines = wrap_text(text, width - 2 * PAD)
    strip = np.full((PAD + LINE_H * len(lines) + PAD // 2, width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(strip, line, (PAD, PAD + LINE_H * (i + 1) - 4), FONT, FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def make_grid(rows: list[list[np.ndarray]], captions: list[str]) -> np.ndarray:
    """Rows of square panels (resized to the first panel's height), each with its caption under it."""
    out = []
    for panels, caption in zip(rows, captions):
        r = panels[0].shape[0]
        row = np.concatenate([p if p.shape[:2] == (r, r) else cv2.resize(p, (r, r)) for p in panels], axis=1)
        out.append(np.concatenate([row, text_strip(caption, row.shape[1])], axis=0))
    return np.concatenate(out, axis=0)


def run_validation(tr) -> str:
    """Render the fixed samples with the current weights (EMA ones when kept) on rank 0 of trainer ``tr``
    and write ``validation/step-<step>.png`` (+ ``.json``): rows of source | edited | target (edit mode)
    or generated | target (adapt mode), each with its instruction or caption, wrapped."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline
    from PIL import Image

    acc, cfg, v = tr.accelerator, tr.cfg, tr.cfg.validation
    adapt = cfg.mode == "adapt"
    if tr._val_pairs is None:
        tr._val_pairs = validation_pairs(tr.specs, v.num_samples, cfg.data.resolution, rows=tr.rows, aug=cfg.data.augment)
        log.info("validation samples: %s", ", ".join(f"{p['task']} ({p['dataset']})" for p in tr._val_pairs))
    pairs = tr._val_pairs
    unet = acc.unwrap_model(tr.unet)
    if tr.ema is not None:
        tr.ema.store(unet.parameters())
        tr.ema.copy_to(unet.parameters())
    unet.eval()
    parts = dict(vae=tr.vae, text_encoder=tr.text_encoder, tokenizer=tr.tokenizer, unet=unet,
                 scheduler=EulerAncestralDiscreteScheduler.from_config(tr.noise_scheduler.config),
                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = (StableDiffusionPipeline if adapt else StableDiffusionInstructPix2PixPipeline)(**parts)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator(device=acc.device).manual_seed(v.seed)
    made = []
    res = cfg.data.resolution
    try:
        with acc.autocast():
            for p in pairs:
                if adapt:
                    img = pipe(p["instruction"], height=res, width=res, num_inference_steps=v.num_inference_steps,
                               guidance_scale=v.guidance_scale, generator=gen).images[0]
                else:
                    img = pipe(p["instruction"], image=Image.fromarray(p["src"]), num_inference_steps=v.num_inference_steps,
                               guidance_scale=v.guidance_scale, image_guidance_scale=v.image_guidance_scale,
                               generator=gen).images[0]
                made.append(np.asarray(img.convert("RGB")))
    finally:
        if tr.ema is not None:
            tr.ema.restore(unet.parameters())
        unet.train()
    rows = [[m, p["tgt"]] if adapt else [p["src"], m, p["tgt"]] for p, m in zip(pairs, made)]
    grid = make_grid(rows, [p["instruction"] for p in pairs])
    d = Path(cfg.output_dir) / "validation"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step-{tr.step:07d}.png"
    Image.fromarray(grid).save(path)
    (d / f"step-{tr.step:07d}.json").write_text(json.dumps(
        [{"key": p["key"], "dataset": p["dataset"], "task": p["task"], "instruction": p["instruction"]} for p in pairs],
        indent=1))
    for t in acc.trackers:
        if t.name == "tensorboard":
            t.writer.add_image("validation", grid, tr.step, dataformats="HWC")
    log.info("validation grid %s", path)
    return str(path)
