"""Which shards the trainer reads: a mixture manifest written by ``idd mix`` or output folders, checked
against the files they name (a damaged shard stops the run, or is skipped with a count), with per-dataset
sampling probabilities; and the score gate of ``data.min_scores`` (docs/trainer.md)."""

from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instructdiffusion_data.errors import ConfigError

if TYPE_CHECKING:
    from .data import DataConfig

log = logging.getLogger(__name__)

MIXTURE_FORMAT = "instructdiffusion-data/mixture/1"


@dataclass
class DatasetSpec:
    name: str
    shards: list[str]
    probability: float
    samples: int = 0
    weight: float = 1.0
    shard_bytes: list[int | None] = field(default_factory=list)  # expected tar sizes (None: not recorded)
    tasks: dict[str, int] = field(default_factory=dict)  # kept rows per task (empty: not recorded)


def _resolve(path: str, base: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else base / p)


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _task_counts(v: Any) -> dict[str, int]:
    """``{task: rows}`` from a manifest's ``tasks`` (a mapping of counts); anything else: not recorded."""
    if not isinstance(v, dict):
        return {}
    return {str(k): int(c) for k, c in v.items() if _whole(c)}


def load_mixture(path: str | Path, mixing: str = "effective", bad_shards: str = "error") -> list[DatasetSpec]:
    """Read a mixture manifest (``idd mix``): datasets with shard lists, sample counts and weights."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"data.mixture: file not found: {p}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"data.mixture: {p}: invalid JSON ({e.msg}, line {e.lineno})") from None
    if doc.get("format") != MIXTURE_FORMAT:
        raise ConfigError(f"data.mixture: {p}: format is {doc.get('format')!r}, expected {MIXTURE_FORMAT!r}")
    specs = []
    unsized = 0
    for i, d in enumerate(doc.get("datasets") or []):
        for k in ("name", "shards", "weight"):
            if k not in d:
                raise ConfigError(f"data.mixture: {p}: datasets[{i}].{k} is missing")
        shards = [_resolve(s, p.parent) for s in d["shards"]]
        files = d.get("shard_files")
        if files is None:
            sizes: list[int | None] = [None] * len(shards)
        elif not isinstance(files, list) or len(files) != len(shards):
            raise ConfigError(f"data.mixture: {p}: datasets[{i}].shard_files: expected one entry per shard")
        else:
            sizes = []
            for j, f in enumerate(files):
                b = f.get("bytes") if isinstance(f, dict) else None
                if b is not None and not _whole(b):
                    raise ConfigError(f"data.mixture: {p}: datasets[{i}].shard_files[{j}].bytes: "
                                      f"expected a whole number, got {b!r}")
                sizes.append(b)
        unsized += sum(1 for b in sizes if b is None)
        samples = int(d.get("samples", 0))
        eff = float(d.get("effective_per_epoch", samples * float(d["weight"])))
        prob = eff if mixing == "effective" else float(d["weight"])
        specs.append(DatasetSpec(name=d["name"], shards=shards, probability=prob, samples=samples,
                                 weight=float(d["weight"]), shard_bytes=sizes, tasks=_task_counts(d.get("tasks"))))
    if unsized:
        log.warning("data.mixture %s: %d shard(s) without a recorded size (a mixture or output written before "
                    "sizes were recorded): checked for presence only", p, unsized)
    return _normalise(specs, str(p), bad_shards)


def specs_from_outputs(patterns: list[str], weights: dict[str, float], mixing: str = "effective",
                       bad_shards: str = "error") -> list[DatasetSpec]:
    """Fallback without ``idd mix``: every output dir (``<out>/<name>/<version>``, globs allowed) with a
    manifest.json becomes one dataset, read at its current generation; weight from ``weights[name]``, the
    manifest's mixture_weight, or 1."""
    from instructdiffusion_data.errors import UserError
    from instructdiffusion_data.generations import current, is_output

    specs = []
    unsized = 0
    for pat in patterns:
        dirs = sorted(glob.glob(pat)) if any(c in pat for c in "*?[") else [pat]
        for d in dirs:
            if not is_output(d):
                if dirs == [pat]:
                    raise ConfigError(f"data.outputs: no manifest.json in {d}")
                continue
            try:
                gen = current(d)
            except UserError as e:
                raise ConfigError(f"data.outputs: {e}") from None
            doc = gen.manifest
            train = doc.get("splits", {}).get("train", {})
            listed = [s for s in train.get("shards", []) if s.get("rows", 1) > 0]
            shards = [str(Path(gen.file(s["tar"]).path)) for s in listed]
            sizes = [s.get("tar_bytes") for s in listed]
            unsized += sum(1 for b in sizes if b is None)
            name = doc.get("name") or Path(d).parent.name
            mw = doc.get("mixture_weight")
            w = float(weights.get(name, 1.0 if mw is None else mw))
            if w <= 0:  # weight 0: not training data (a benchmark, alignment candidates) unless weighted here
                log.info("data.outputs: %s skipped (mixture_weight %s)", d, w)
                continue
            samples = int(train.get("rows", 0))
            specs.append(DatasetSpec(name=name, shards=shards, probability=samples * w if mixing == "effective" else w,
                                     samples=samples, weight=w, shard_bytes=sizes, tasks=_task_counts(train.get("tasks"))))
    if unsized:
        log.warning("data.outputs %s: %d shard(s) without tar_bytes in their manifest (an output written before "
                    "sizes were recorded): checked for presence only", patterns, unsized)
    return _normalise(specs, f"data.outputs {patterns}", bad_shards)


def check_shards(spec: DatasetSpec) -> list[tuple[str, str]]:
    """``(shard, problem)`` for each shard of ``spec`` that is missing or not the size its manifest says."""
    bad = []
    sizes = spec.shard_bytes or [None] * len(spec.shards)
    for u, want in zip(spec.shards, sizes):
        try:
            have = Path(u).stat().st_size
        except FileNotFoundError:
            bad.append((u, "shard not found"))
            continue
        except OSError as e:
            bad.append((u, f"shard unreadable ({e.strerror})"))
            continue
        if want is not None and have != want:
            bad.append((u, f"shard is {have} bytes, its manifest says {want}"))
    return bad


def _normalise(specs: list[DatasetSpec], where: str, bad_shards: str = "error") -> list[DatasetSpec]:
    specs = [s for s in specs if s.shards and s.probability > 0]
    if not specs:
        raise ConfigError(f"{where}: no dataset with shards and a positive weight")
    skipped = 0
    for s in specs:
        bad = check_shards(s)
        if not bad:
            continue
        if bad_shards != "skip":
            u, why = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise ConfigError(f"{where}: dataset {s.name}: {why}: {u}{more}; set data.bad_shards: skip to "
                              "train without it")
        drop = {u for u, _ in bad}
        for u, why in bad:
            log.warning("dataset %s: skipping %s: %s", s.name, u, why)
        keep = [i for i, u in enumerate(s.shards) if u not in drop]
        s.shards = [s.shards[i] for i in keep]
        s.shard_bytes = [s.shard_bytes[i] for i in keep] if s.shard_bytes else []
        skipped += len(drop)
    if skipped:
        log.warning("%s: %d damaged or missing shard(s) skipped (data.bad_shards: skip)", where, skipped)
        specs = [s for s in specs if s.shards]
        if not specs:
            raise ConfigError(f"{where}: every shard is damaged or missing")
    total = sum(s.probability for s in specs)
    for s in specs:
        s.probability /= total
    return specs


def resolve_datasets(cfg: DataConfig) -> list[DatasetSpec]:
    if cfg.min_scores:
        ScoreGate(cfg.min_scores)  # a wrong column name is one line before any training
    if cfg.mixture and Path(cfg.mixture).is_file():
        return load_mixture(cfg.mixture, cfg.mixing, cfg.bad_shards)
    if cfg.outputs:
        if cfg.mixture:
            log.warning("data.mixture %s not found: using data.outputs %s", cfg.mixture, cfg.outputs)
        return specs_from_outputs(cfg.outputs, cfg.output_weights, cfg.mixing, cfg.bad_shards)
    if cfg.mixture:
        raise ConfigError(f"data.mixture: file not found: {cfg.mixture} (write it with `idd mix MIXTURE.yaml --out {cfg.mixture}`)")
    raise ConfigError("data: set data.mixture (a mixture manifest) or data.outputs (output dirs)")


# --- streams -------------------------------------------------------------------------------------

class ScoreGate:
    """Which samples of a shard reach ``min_scores``: read once per shard from its parquet sidecar (the
    typed score columns, no JSON parsing), for the few shards a worker has open at a time."""

    def __init__(self, min_scores: dict[str, float], cache: int = 8):
        from instructdiffusion_data.schema import SCORE_COLUMNS

        bad = sorted(set(min_scores) - set(SCORE_COLUMNS))
        if bad:
            raise ConfigError(f"data.min_scores.{bad[0]}: not a score column (known: {', '.join(SCORE_COLUMNS)})")
        self.min_scores = {k: float(v) for k, v in min_scores.items()}
        self.cache: dict[str, set[str]] = {}
        self.size = cache
        self.passed = self.held = 0

    def allowed(self, url: str) -> set[str]:
        if url not in self.cache:
            import numpy as np
            import pyarrow.parquet as pq

            sidecar = url[: -len(".tar")] + ".parquet" if url.endswith(".tar") else url + ".parquet"
            t = pq.read_table(sidecar, columns=["key", *self.min_scores])
            ok = np.ones(t.num_rows, bool)
            for col, thr in self.min_scores.items():
                v = t.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
                ok &= v >= thr  # null (NaN) compares False
            if len(self.cache) >= self.size:
                self.cache.pop(next(iter(self.cache)))
            self.cache[url] = {k for k, good in zip(t.column("key").to_pylist(), ok) if good}
        return self.cache[url]

    def ok(self, sample: dict) -> bool:
        good = sample.get("__key__") in self.allowed(sample.get("__url__", ""))
        self.passed += good
        self.held += not good
        return good
