"""``idd mix MIXTURE --out FILE``: combine finished shard outputs into a training mixture.

The mixture config (YAML, e.g. ``configs/mixtures/instructdiffusion.yaml``) names shard outputs and
gives each a sampling weight, like the paper's Table 1::

    name: instructdiffusion
    seed: 0
    root: shards                 # outputs live in <root>/<output>
    datasets:
      - {name: keypoints_coco, output: keypoints_coco/v1, weight: 1.0}
      - {name: edit_magicbrush, weight: 10.0}      # output defaults to the newest <name>/<version>

``weight`` is a repeat factor: a dataset contributes ``samples * weight`` effective samples per
epoch (omitted: the output's own ``writer.mixture_weight``). An output that does not exist yet (or
has no kept samples) is skipped with a warning; a manifest that does not match its files (a malformed
field, a missing or wrong-sized tar) stops ``idd mix`` with one line naming it. The written manifest
(format ``instructdiffusion-data/mixture/1``) lists per dataset the generation of the output it read
(``generation``, ``manifest``), its train shards in that generation (relative to the mixture file's
folder unless ``--absolute``) with their recorded sizes (``shard_files``, what the trainer checks),
sample counts per task, weight and effective samples per epoch, and the effective samples per task;
the trainer samples datasets in proportion to ``effective_per_epoch``. The file is written under a
temporary name and renamed.
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
    # output folder relative to the mixture's root (default: the newest version under <name>/, named in the log)
    output: str | None = None
    weight: float | None = None  # repeat factor; default: the output manifest's mixture_weight


@dataclass
class MixtureConfig:
    name: str
    datasets: list[MixEntry] = field(default_factory=list)
    seed: int = 0
    root: str = "shards"  # relative to the current directory, like pipeline configs


def _newest_version(base, name: str) -> str:
    """``<name>/<version>`` of the newest output version under ``base/<name>`` (``v10`` after ``v9``)."""
    import re

    from ..generations import is_output
    from ..storage import Location, join

    versions = [v for v in Location(str(join(base, name))).dirs() if is_output(join(base, name, v))]
    if not versions:
        return f"{name}/v2"
    key = lambda v: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", v)]  # noqa: E731
    best = max(versions, key=key)
    if len(versions) > 1:
        log.info("mix: %s: using the newest version %s of %s (set output: to choose)", name, best, sorted(versions))
    return f"{name}/{best}"


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
    """The mixture manifest for ``cfg``; outputs that are missing or empty are skipped (warning).

    Each output is read at its current generation (:mod:`..generations`); the mixture records which
    (``generation``, ``manifest``) and its shard paths point into that generation, so a later
    ``idd filter`` (a new generation) does not change what this mixture means. Every manifest is checked
    against the files it names: a malformed field or a missing or wrong-sized tar is a one-line error
    naming the manifest and field, or the file.
    """
    from ..errors import UserError
    from ..generations import current, is_output
    from ..storage import is_uri, join

    base = str(root if root is not None else cfg.root)
    remote = is_uri(base)
    out_dir = Path(os.path.abspath(out_file)).parent

    def rel(p: Path | str) -> str:
        if remote:
            return str(p)
        return os.path.abspath(p) if absolute else os.path.relpath(os.path.abspath(p), out_dir)

    def place(loc) -> Path | str:
        return Path(loc.path) if loc.local else str(loc)

    datasets, tasks = [], {}
    for e in cfg.datasets:
        out = join(base, e.output or _newest_version(base, e.name))
        if not is_output(out):
            log.warning("mix: %s: no output at %s (run its pipeline first); skipped", e.name, out)
            continue
        gen = current(out)
        checked = check_train(gen)
        samples = checked["rows"]
        if samples == 0:
            log.warning("mix: %s: output %s has no kept samples; skipped", e.name, out)
            continue
        weight = float(e.weight if e.weight is not None else checked["mixture_weight"])
        listed = [s for s in checked["shards"] if s["rows"]]
        shards = [rel(place(gen.file(s["tar"]))) for s in listed]
        shard_files = [{"tar": p, "rows": s["rows"], "bytes": s.get("tar_bytes"), "sha256": s.get("tar_sha256")}
                       for p, s in zip(shards, listed)]
        counts = checked["tasks"]
        for t, n in counts.items():
            tasks[t] = tasks.get(t, 0.0) + n * weight
        datasets.append({"name": e.name, "output": rel(place(gen.root)), "generation": gen.number,
                         "manifest": rel(place(gen.manifest_loc)), "tasks": counts, "samples": samples,
                         "weight": weight, "shards": shards, "shard_files": shard_files,
                         "effective_per_epoch": samples * weight})
    if not datasets:
        raise UserError(f"mix: none of the {len(cfg.datasets)} outputs exists under {base}; run the pipelines first")
    return {"format": FORMAT, "seed": cfg.seed, "datasets": datasets, "tasks": dict(sorted(tasks.items()))}


def _whole(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_train(gen) -> dict:
    """The train split of a generation's manifest, checked field by field and against its files:
    ``{"rows", "tasks", "shards", "mixture_weight"}``. UserError (one line) naming the manifest and the
    field, or the missing or damaged file."""
    import pyarrow.fs as pafs

    from ..errors import UserError

    m, where = gen.manifest, gen.manifest_loc

    def bad(field: str, what: str) -> UserError:
        return UserError(f"{where}: field {field}: {what}")

    splits = m.get("splits")
    if not isinstance(splits, dict):
        raise bad("splits", f"expected an object, got {splits!r}"[:200])
    train = splits.get("train")
    if not isinstance(train, dict):
        raise bad("splits.train", f"expected an object, got {train!r}"[:200])
    rows = train.get("rows", 0)
    if not _whole(rows):
        raise bad("splits.train.rows", f"expected a whole number >= 0, got {rows!r}"[:200])
    shards = train.get("shards", [])
    if not isinstance(shards, list):
        raise bad("splits.train.shards", f"expected a list, got {shards!r}"[:200])
    tasks = train.get("tasks", {})
    if not isinstance(tasks, dict) or not all(isinstance(k, str) and _whole(v) for k, v in tasks.items()):
        raise bad("splits.train.tasks", f"expected {{task: whole number}}, got {tasks!r}"[:200])
    weight = m.get("mixture_weight", 1.0)
    if weight is None:
        weight = 1.0
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
        raise bad("mixture_weight", f"expected a number >= 0, got {weight!r}"[:200])
    total = 0
    unsized = 0
    for i, s in enumerate(shards):
        field = f"splits.train.shards[{i}]"
        if not isinstance(s, dict):
            raise bad(field, f"expected an object, got {s!r}"[:200])
        tar = s.get("tar")
        if not isinstance(tar, str) or not tar or tar.startswith("/") or ".." in tar.split("/"):
            raise bad(f"{field}.tar", f"expected a path inside the output, got {tar!r}"[:200])
        n = s.get("rows")
        if not _whole(n):
            raise bad(f"{field}.rows", f"expected a whole number >= 0, got {n!r}"[:200])
        total += n
        for k in ("tar_bytes", "parquet_bytes"):
            if s.get(k) is not None and not _whole(s[k]):
                raise bad(f"{field}.{k}", f"expected a whole number >= 0, got {s[k]!r}"[:200])
        if not n:
            continue
        loc = gen.file(tar)
        try:
            info = loc.fs.get_file_info(loc.path)
        except OSError as e:
            raise UserError(f"{loc}: cannot read ({e})") from None
        if info.type != pafs.FileType.File:
            raise UserError(f"{loc}: missing (listed in {where} as {field}.tar)")
        want = s.get("tar_bytes")
        if want is None:
            unsized += 1
        elif int(info.size) != want:
            raise UserError(f"{loc}: damaged shard: {int(info.size)} bytes, the manifest {where} says {want}")
    if total != rows:
        raise bad("splits.train.rows", f"{rows}, but its shards hold {total} rows")
    if unsized:
        log.warning("mix: %s: %d shard(s) without tar_bytes (an output written before sizes were recorded): "
                    "checked for presence only", where, unsized)
    return {"rows": rows, "tasks": {t: int(n) for t, n in sorted(tasks.items())}, "shards": shards,
            "mixture_weight": float(weight)}


def write_mixture(out: Path, manifest: dict) -> None:
    """Write the mixture file whole (temporary name, fsync, rename): a reader sees the old file or the
    new one. Commit points ``mix.write`` (temporary file complete) and ``mix.rename``. An OS error is one
    line naming the path."""
    from .. import faults
    from ..errors import UserError

    text = json.dumps(manifest, indent=1)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        faults.point("mix.write")
        os.replace(tmp, out)
        faults.point("mix.rename")
    except OSError as e:
        path = e.filename or out
        raise UserError(f"{path}: cannot write the mixture ({e.strerror or e})") from None


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
    write_mixture(out, manifest)
    print("\n".join(table(manifest)))
    print(f"mixture: {out} ({len(manifest['datasets'])} of {len(cfg.datasets)} datasets)")
    return 0
