"""``idd align candidates MODEL BENCHMARK --scales T:I,...``: edits for human alignment (paper section 3.3).

For each sample of the benchmark's ``align`` half, the model edits the source at every (text, image)
classifier-free guidance pair of ``scales`` (``per_scale`` seeds each), with a fixed seed per sample and
variant (the same noise for every pair, so candidates differ by guidance only). The results are written
by the engine's :class:`~instructdiffusion_data.writer.ShardWriter` as a regular output: one row per
candidate, ``src`` = the source at the edit size, ``tgt`` = the edit, task ``edit_<category>``, and in
``meta``: ``group_id`` (the benchmark sample's key: the auditor groups the candidates of one sample by it),
``guidance_scale`` and ``image_guidance_scale``, ``seed``, ``variant``, the benchmark sample
(``meta["benchmark_sample"]``: key, category, captions, half) and ``meta["candidate"]`` (model, benchmark
output, sampler settings).

An auditor picks the best 0-2 of each group (``idd audit``); ``idd export-alignment`` turns the picks into
the fine-tuning output. Shards are committed one at a time; a rerun with the same settings resumes at the
first unfinished shard, one with other settings is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError, UserError
from ..imageio import encode_jpeg
from ..schema import make_key, new_row
from ..writer import MANIFEST, RUN_FILE, SPLITS, ShardWriter
from . import DEFAULT_SCALES
from .benchmark import CATEGORIES, BenchmarkSample, read_benchmark
from .editor import Editor, EditorConfig, EditJob, sample_seed
from .run import load_sources

log = logging.getLogger(__name__)

KIND = "align-candidates"


def parse_scales(text: str) -> list[tuple[float, float]]:
    """``"7.5:1.5,5:1.2"`` -> ``[(7.5, 1.5), (5.0, 1.2)]``; a one-line error naming the bad pair."""
    pairs = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        t, sep, i = part.partition(":")
        try:
            pair = (float(t), float(i)) if sep else None
        except ValueError:
            pair = None
        if pair is None or not all(math.isfinite(v) and v >= 0 for v in pair):
            raise ConfigError(f"--scales: {part!r} is not TEXT:IMAGE (two numbers >= 0, e.g. 7.5:1.5)")
        if pair in pairs:
            raise ConfigError(f"--scales: {part!r} is given twice")
        pairs.append(pair)
    if not pairs:
        raise ConfigError("--scales: give at least one TEXT:IMAGE pair, e.g. 7.5:1.5,7.5:1.2")
    return pairs


@dataclass
class CandidatesConfig:
    model: str
    benchmark: str
    out: str
    scales: list[tuple[float, float]] = field(default_factory=lambda: parse_scales(DEFAULT_SCALES))
    per_scale: int = 1  # seeds per guidance pair
    split: str = "align"
    limit: int | None = None
    samples_per_shard: int = 64
    overwrite: bool = False
    editor: EditorConfig | None = None

    def check(self) -> None:
        for name in ("per_scale", "samples_per_shard"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')}: must be at least 1, got {getattr(self, name)}")
        if len(self.scales) * self.per_scale < 2:
            raise ConfigError("--scales/--per-scale: an auditor needs at least 2 candidates per sample")

    def fingerprint(self, bench_generation: int) -> dict:
        e = self.editor or EditorConfig(model=self.model)
        return {"kind": KIND, "model": self.model, "benchmark": str(Path(self.benchmark).resolve()),
                "benchmark_generation": bench_generation, "scales": [list(p) for p in self.scales],
                "per_scale": self.per_scale, "split": self.split, "limit": self.limit,
                "samples_per_shard": self.samples_per_shard,
                "editor": {k: v for k, v in asdict(e).items() if k not in ("batch_size", "device", "local_files_only")}}


def _prepare(out: Path, fp: dict, overwrite: bool) -> None:
    """Resume (same settings), start afresh (empty folder, or ``overwrite`` of an earlier candidates
    output), or refuse."""
    run_file = out / RUN_FILE
    if out.exists() and any(out.iterdir()):
        prev = None
        if run_file.is_file():
            try:
                prev = json.loads(run_file.read_text())
            except ValueError:
                prev = None
        if not isinstance(prev, dict) or prev.get("kind") != KIND:
            raise UserError(f"{out}: exists and is not an earlier `idd align candidates` output; "
                            "choose an empty folder")
        if prev == fp:
            return
        if not overwrite:
            changed = sorted(k for k in set(prev) | set(fp) if prev.get(k) != fp.get(k))
            raise UserError(f"{out}: written with other settings ({', '.join(changed)} changed); "
                            "rerun with --overwrite or choose another --out")
        for split in SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)
        (out / MANIFEST).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(fp, indent=1, sort_keys=True))


def candidate_task(category: str) -> str:
    return f"edit_{category}" if category in CATEGORIES else "edit"


def _row(s: BenchmarkSample, src_jpg: bytes, tgt_jpg: bytes, t: float, i: float, variant: int, seed: int,
         info: dict) -> dict:
    dataset = s.dataset or "benchmark"
    meta = {"record_id": s.key, "group_id": s.key, "guidance_scale": t, "image_guidance_scale": i,
            "variant": variant, "seed": seed,
            "benchmark_sample": {"key": s.key, "category": s.category, "source_caption": s.caption,
                                 "target_caption": s.target_caption, "split": s.split},
            "candidate": info}
    if isinstance(s.meta.get("provenance"), dict):
        meta["provenance"] = s.meta["provenance"]
    return new_row(key=make_key(dataset, s.key, f"t{t:g}-i{i:g}-v{variant}"), task=candidate_task(s.category),
                   dataset=dataset, src=src_jpg, tgt=tgt_jpg, instruction=s.instruction, meta=meta)


def make_candidates(cfg: CandidatesConfig, *, editor: Editor | None = None) -> dict:
    """Write the candidates output at ``cfg.out``; returns its manifest."""
    cfg.check()
    ecfg = cfg.editor or EditorConfig(model=cfg.model)
    bench = read_benchmark(cfg.benchmark, cfg.split, cfg.limit)
    out = Path(cfg.out)
    fp = cfg.fingerprint(bench.generation)
    _prepare(out, fp, cfg.overwrite)
    name, version = out.parent.name, out.name
    writer = ShardWriter(out, output=name, version=version)
    writer.clean_attempts()
    done = writer.done_shards()
    editor = editor or Editor(ecfg)
    info = {"model": cfg.model, "benchmark": str(bench.path), "benchmark_generation": bench.generation,
            **{k: v for k, v in editor.describe().items() if k in ("steps", "resolution", "dtype", "scheduler")}}
    n = cfg.samples_per_shard
    shards = [bench.samples[k:k + n] for k in range(0, len(bench.samples), n)]
    t0 = time.perf_counter()
    for index, samples in enumerate(shards):
        if index in done:
            log.info("candidates shard %d: done before, skipped", index)
            continue
        rows = []
        for chunk, srcs in load_sources(samples, ecfg.resolution):
            src_jpg = {s.key: encode_jpeg(src) for s, src in zip(chunk, srcs)}
            by_key = {s.key: s for s in chunk}
            for t, i in cfg.scales:
                jobs = [EditJob(s.key, src, s.instruction, t, i, v)
                        for s, src in zip(chunk, srcs) for v in range(cfg.per_scale)]
                for job, img in editor.edit(jobs):
                    s = by_key[job.key]
                    rows.append(_row(s, src_jpg[s.key], encode_jpeg(img), t, i, job.variant,
                                     sample_seed(ecfg.seed, job.key, job.variant), info))
        writer.write_shard(index, rows, info={"records": len(samples), "inputs": {
            "benchmark": str(bench.path), "generation": bench.generation, "samples": [s.key for s in samples]}})
        log.info("candidates shard %d: %d samples x %d = %d rows", index, len(samples),
                 len(cfg.scales) * cfg.per_scale, len(rows))
    manifest = writer.write_manifest(
        config=fp, extra={"name": name, "version": version, "mixture_weight": 0.0, "roots": bench.roots,
                          "complete": True, "failed_shards": [],
                          "candidates": {"samples": len(bench.samples), "scales": [list(p) for p in cfg.scales],
                                         "per_scale": cfg.per_scale, "group_key": "meta.group_id",
                                         "seconds": round(time.perf_counter() - t0, 3)}})
    log.info("candidates: %d rows for %d samples -> %s", manifest["splits"]["train"]["rows"], len(bench.samples), out)
    return manifest
