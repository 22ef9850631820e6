"""``idd eval MODEL BENCHMARK``: edit the benchmark with a model and report CLIP-Sim and AP (Table 5).

The samples of one half of the benchmark (``eval`` by default) are edited at one (text, image) guidance
pair with a fixed seed per sample (:mod:`.editor`), scored (:mod:`.metrics`) and reported per category and
overall: a table on stdout, ``metrics.json`` (settings, summary, every sample's scores) and
``grid-<category>.png`` (source | edit, instruction and scores) in ``out``. ``save_images`` also writes
each edit to ``out/edited/<key>.png``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, UserError
from ..imageio import decode
from .benchmark import Benchmark, BenchmarkSample, read_benchmark
from .editor import Editor, EditorConfig, EditJob, fit_source
from .grid import GridRow, make_grid
from .metrics import EditScorer, MetricConfig, format_table, summarise

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CHUNK = 64  # samples decoded and held at once


@dataclass
class EvalConfig:
    model: str
    benchmark: str
    out: str | None = None  # default: runs/eval/<model>/<benchmark>-<split>-t<text>-i<image>
    split: str = "eval"  # eval | align | all
    limit: int | None = None  # first N samples per category
    text_guidance: float = 5.0
    image_guidance: float = 1.25
    grid_rows: int = 8  # samples per category grid
    save_images: bool = False
    editor: EditorConfig | None = None
    metrics: MetricConfig = field(default_factory=MetricConfig)

    def check(self) -> None:
        for name in ("text_guidance", "image_guidance"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name.replace('_', '-')}: must be a finite number >= 0, got {v!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit: must be at least 1, got {self.limit}")
        if self.grid_rows < 0:
            raise ConfigError(f"grid-rows: must be >= 0, got {self.grid_rows}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "-", text).strip("-") or "model"


def default_out(cfg: EvalConfig, bench: Benchmark) -> Path:
    model = Path(cfg.model)
    mname = "-".join(model.parts[-2:]) if model.exists() else cfg.model
    return Path("runs/eval") / _slug(mname) / _slug(
        f"{bench.name or bench.path.name}-{cfg.split}-t{cfg.text_guidance:g}-i{cfg.image_guidance:g}")


def load_sources(samples: Sequence[BenchmarkSample], resolution: int
                 ) -> Iterator[tuple[list[BenchmarkSample], list[np.ndarray]]]:
    """Chunks of ``(samples, sources)``: each source decoded once and fitted to ``resolution``
    (:func:`.editor.fit_source`); at most :data:`CHUNK` decoded images held at once."""
    for i in range(0, len(samples), CHUNK):
        chunk = list(samples[i:i + CHUNK])
        srcs = []
        for s in chunk:
            try:
                rgb = decode(s.read_src())
            except UserError as e:
                raise UserError(f"{s.tar}: source image of {s.key} unreadable: {e}") from None
            srcs.append(fit_source(rgb, resolution))
        yield chunk, srcs


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False))
    tmp.replace(path)


def evaluate(cfg: EvalConfig, *, editor: Editor | None = None, scorer: EditScorer | None = None) -> dict:
    """Run the evaluation; returns the report (also written to ``<out>/metrics.json``). ``editor`` and
    ``scorer`` may be passed in loaded (several evaluations in one process)."""
    from PIL import Image

    cfg.check()
    ecfg = cfg.editor or EditorConfig(model=cfg.model)
    bench = read_benchmark(cfg.benchmark, cfg.split, cfg.limit)
    out = Path(cfg.out) if cfg.out else default_out(cfg, bench)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("grid-*.png"):  # an earlier run's grids (its categories may differ)
        old.unlink()
    editor = editor or Editor(ecfg)
    scorer = scorer or EditScorer(cfg.metrics)
    if cfg.save_images:
        (out / "edited").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    done0, secs0 = editor.images_done, editor.seconds
    records: list[dict] = []
    grids: dict[str, list[GridRow]] = {c: [] for c in bench.categories()}
    for chunk, srcs in load_sources(bench.samples, ecfg.resolution):
        by_key = {s.key: (s, src) for s, src in zip(chunk, srcs)}
        jobs = [EditJob(s.key, src, s.instruction, cfg.text_guidance, cfg.image_guidance)
                for s, src in zip(chunk, srcs)]
        edited = dict((j.key, img) for j, img in editor.edit(jobs))
        keys = [s.key for s in chunk]
        caps = [by_key[k][0].target_caption for k in keys]
        sc = scorer.score([edited[k] for k in keys], caps)
        base = scorer.score(srcs, caps)
        for i, k in enumerate(keys):
            s = by_key[k][0]
            rec = {"key": k, "category": s.category, "split": s.split, "instruction": s.instruction,
                   "caption": s.caption, "target_caption": s.target_caption,
                   "clip_sim": _finite(sc["clip_sim"][i]), "aesthetic": _finite(sc["aesthetic"][i]),
                   "source_clip_sim": _finite(base["clip_sim"][i]), "source_aesthetic": _finite(base["aesthetic"][i])}
            records.append(rec)
            if cfg.save_images:
                Image.fromarray(edited[k]).save(out / "edited" / f"{k}.png")
            if len(grids[s.category]) < cfg.grid_rows:
                nums = " ".join(f"{label} {rec[m]:.2f}" for label, m in (("CLIP-Sim", "clip_sim"), ("AP", "aesthetic"))
                                if rec[m] is not None)
                grids[s.category].append(GridRow([by_key[k][1], edited[k]], f"{s.instruction} | {nums}"))
        log.info("eval: %d / %d samples edited and scored", len(records), len(bench.samples))
    summary = summarise(records, bench.categories())
    n_img, secs = editor.images_done - done0, editor.seconds - secs0
    grid_files = {}
    for cat, rows in grids.items():
        if rows:
            name = f"grid-{_slug(cat)}.png"
            head = (f"{cat}: source | edit   {Path(cfg.model).name or cfg.model}  text {cfg.text_guidance:g} "
                    f"image {cfg.image_guidance:g}  seed {ecfg.seed}")
            Image.fromarray(make_grid(rows, head)).save(out / name)
            grid_files[cat] = name
    title = (f"{cfg.model} on {bench.path} ({cfg.split}, {len(records)} samples), text {cfg.text_guidance:g} "
             f"image {cfg.image_guidance:g}")
    report = {
        "kind": "idd-eval/1",
        "model": cfg.model,
        "benchmark": {"path": str(bench.path), "name": bench.name, "version": bench.version,
                      "generation": bench.generation, "split": cfg.split, "limit": cfg.limit,
                      "samples": len(records)},
        "guidance": {"text": cfg.text_guidance, "image": cfg.image_guidance},
        "editor": editor.describe(),
        "scorer": {**scorer.describe(), **{k: v for k, v in asdict(cfg.metrics).items() if k != "device"}},
        "overall": summary["overall"],
        "per_category": summary["per_category"],
        "grids": grid_files,
        "timing": {"seconds": round(time.perf_counter() - t0, 3), "edit_seconds": round(secs, 3),
                   "images_per_s": round(n_img / secs, 4) if secs > 0 else None},
        "table": format_table(summary, title),
        "samples": records,
    }
    write_json(out / METRICS_FILE, report)
    report["out"] = str(out)
    log.info("eval: %d samples, CLIP-Sim %s, AP %s -> %s", len(records), summary["overall"]["clip_sim"]["mean"],
             summary["overall"]["aesthetic"]["mean"], out)
    return report
