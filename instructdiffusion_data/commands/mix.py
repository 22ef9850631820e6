"""``idd mix MIXTURE --out FILE``: combine finished shard outputs into a training mixture.

The mixture config (YAML, e.g. ``configs/mixtures/instructdiffusion.yaml``) names shard outputs and
gives each a sampling weight, like the paper's Table 1::

    name: instructdiffusion
    seed: 0
    root: shards                 # outputs live in <root>/<output>
    datasets:
      - {name: keypoints_coco, output: keypoints_coco/v1, weight: 1.0}
      - {name: edit_magicbrush, weight: 10.0}      # output defaults to <name>/v1

``weight`` is a repeat factor: a dataset contributes ``samples * weight`` effective samples per
epoch (omitted: the output's own ``writer.mixture_weight``). An output that does not exist yet (or
has no kept samples) is skipped with a warning. The written manifest (format
``instructdiffusion-data/mixture/1``) lists per dataset its train shards (relative to the mixture
file's folder unless ``--absolute``), sample counts per task, weight and effective samples per
epoch, and the effective samples per task; the trainer samples datasets in proportion to
``effective_per_epoch``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("idd.mix")

FORMAT = "instructdiffusion-data/mixture/1"


@dataclass
class MixEntry:
    name: str
    output: str | None = None  # output folder relative to the mixture's root (default: <name>/v1)
    weight: float | None = None  # repeat factor; default: the output manifest's mixture_weight


@dataclass
class MixtureConfig:
    name: str
    datasets: list[MixEntry] = field(default_factory=list)
    seed: int = 0
    root: str = "shards"  # relative to the current directory, like pipeline configs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mix", help="write a mixture manifest (per-dataset shards, weights, effective samples)")
    p.add_argument("mixture", help="mixture YAML, e.g. configs/mixtures/instructdiffusion.yaml")
    p.add_argument("--out", required=True, help="mixture manifest to write, e.g. shards/mixture.json")
    p.add_argument("--root", default=None, help="folder holding the outputs (default: root of the mixture config)")
    p.add_argument("--absolute", action="store_true", help="write absolute shard paths (default: relative to --out's folder)")
    p.set_defaults(func=main)


def load_mixture(path: str | os.PathLike) -> MixtureConfig:
    from ..config import build, load_yaml
    from ..errors import ConfigError

    cfg = build(MixtureConfig, load_yaml(path), where=Path(path).name)
    seen = set()
    for i, e in enumerate(cfg.datasets):
        if e.name in seen:
            raise ConfigError(f"{Path(path).name}.datasets[{i}].name: duplicate dataset {e.name!r}")
        seen.add(e.name)
        if e.weight is not None and e.weight < 0:
            raise ConfigError(f"{Path(path).name}.datasets[{i}].weight: must be >= 0, got {e.weight}")
    if not cfg.datasets:
        raise ConfigError(f"{Path(path).name}.datasets: no datasets listed")
    return cfg


def build_mixture(cfg: MixtureConfig, out_file: Path, root: str | None = None, absolute: bool = False) -> dict:
    """The mixture manifest for ``cfg``; outputs that are missing or empty are skipped (warning)."""
    from ..errors import UserError

    base = Path(root if root is not None else cfg.root)
    out_dir = out_file.resolve().parent

    def rel(p: Path) -> str:
        return str(p.resolve()) if absolute else os.path.relpath(p.resolve(), out_dir)

    datasets, tasks = [], {}
    for e in cfg.datasets:
        out = base / (e.output or f"{e.name}/v1")
        mpath = out / "manifest.json"
        if not mpath.is_file():
            log.warning("mix: %s: no output at %s (run its pipeline first); skipped", e.name, out)
            continue
        try:
            manifest = json.loads(mpath.read_text())
            train = manifest["splits"]["train"]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("mix: %s: unreadable manifest %s (%s); skipped", e.name, mpath, exc)
            continue
        samples = int(train.get("rows", 0))
        if samples == 0:
            log.warning("mix: %s: output %s has no kept samples; skipped", e.name, out)
            continue
        weight = float(e.weight if e.weight is not None else manifest.get("mixture_weight", 1.0))
        shards = [rel(out / s["tar"]) for s in train.get("shards", []) if s.get("rows")]
        counts = {t: int(n) for t, n in sorted(train.get("tasks", {}).items())}
        for t, n in counts.items():
            tasks[t] = tasks.get(t, 0.0) + n * weight
        datasets.append({"name": e.name, "output": rel(out), "tasks": counts, "samples": samples, "weight": weight,
                         "shards": shards, "effective_per_epoch": samples * weight})
    if not datasets:
        raise UserError(f"mix: none of the {len(cfg.datasets)} outputs exists under {base}; run the pipelines first")
    return {"format": FORMAT, "seed": cfg.seed, "datasets": datasets, "tasks": dict(sorted(tasks.items()))}


def table(manifest: dict) -> list[str]:
    total = sum(d["effective_per_epoch"] for d in manifest["datasets"]) or 1.0
    lines = [f"{'dataset':24s} {'task':14s} {'samples':>9s} {'weight':>8s} {'effective/epoch':>16s} {'share':>7s}"]
    for d in manifest["datasets"]:
        for t, n in d["tasks"].items():
            eff = n * d["weight"]
            lines.append(f"{d['name']:24s} {t:14s} {n:9d} {d['weight']:8.3g} {eff:16.1f} {100 * eff / total:6.2f}%")
    lines.append("-" * 83)
    for t, eff in manifest["tasks"].items():
        n = sum(d["tasks"].get(t, 0) for d in manifest["datasets"])
        lines.append(f"{'(all)':24s} {t:14s} {n:9d} {'':8s} {eff:16.1f} {100 * eff / total:6.2f}%")
    lines.append(f"{'(all)':24s} {'(all)':14s} {sum(d['samples'] for d in manifest['datasets']):9d} {'':8s} {total:16.1f}")
    return lines


def main(args: argparse.Namespace) -> int:
    cfg = load_mixture(args.mixture)
    out = Path(args.out)
    manifest = build_mixture(cfg, out, args.root, args.absolute)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out)
    print("\n".join(table(manifest)))
    print(f"mixture: {out} ({len(manifest['datasets'])} of {len(cfg.datasets)} datasets)")
    return 0
