"""``idd inspect DIR [--verify]``: what an output holds — counts per split, task and dataset, drop reasons,
verification rate and a few sample keys. DIR may be one output or a folder of outputs (or an output's
URI on an object store). Everything is read from the output's current generation (:mod:`..generations`).

The typed score columns of the kept rows (``aesthetic_laion_tgt``, ``giqa_tgt``, ...) are summarised with
their count and percentiles (p5, p10, p50, p90; linear interpolation, as DuckDB's ``quantile_cont``).
``--min COLUMN=VALUE`` (repeatable; VALUE a number or ``pNN``, a percentile of that column over the kept
rows) counts the kept rows per task that reach every minimum: the same numbers as a DuckDB query over the
sidecars (docs/shard-format.md). Percentiles are exact up to ``EXACT_VALUES`` values per column, then
taken from a uniform sample of that size (marked ``exact: false``).

``--verify`` checks every tar and parquet the current manifest lists against the manifest: present,
the recorded size and sha256 (``tar_bytes``/``tar_sha256``/``parquet_bytes``/``parquet_sha256``) and
the parquet's row count. It prints one line per damaged file and exits 1 when there is one. A manifest
written before sizes and hashes were recorded is checked for presence and row counts only, with a
warning.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..generations import GENERATIONS, MANIFEST, POINTER, Generation, as_location, current
from ..storage import is_uri
from ..writer import SPLITS

FILE_KINDS = ("tar", "parquet")

log = logging.getLogger("idd.inspect")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarise an output (or every output under a folder)")
    p.add_argument("path", help="an output folder (with manifest.json) or a folder of outputs, e.g. shards/")
    p.add_argument("--samples", type=int, default=3, help="sample keys shown per split (default 3)")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON")
    p.add_argument("--min", dest="mins", action="append", default=[], metavar="COLUMN=VALUE",
                   help="count kept rows per task with COLUMN >= VALUE (a number or pNN: the column's percentile "
                        "over kept rows), e.g. --min aesthetic_classical_tgt=4.5 --min giqa_tgt=p10")
    p.add_argument("--verify", action="store_true",
                   help="check every shard file against the manifest (size, sha256, rows); exit 1 when one is damaged")
    p.set_defaults(func=main)


def find_outputs(path: Path) -> list[Path]:
    """Output folders at or below ``path`` (a folder with manifest.json or a generation pointer); their
    ``generations/`` folders and hidden folders are not outputs of their own."""
    if (path / MANIFEST).is_file() or (path / POINTER).is_file():
        return [path]
    found = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if MANIFEST in filenames or POINTER in filenames:
            found.append(Path(dirpath))
            dirnames[:] = [d for d in dirnames if d != GENERATIONS]
    return sorted(found)


def sample_keys(gen: Generation, split: str, n: int) -> list[str]:
    import pyarrow.parquet as pq

    keys: list[str] = []
    for name in sorted(nm for nm in (gen.loc / split).names() if nm.endswith(".parquet")):
        loc = gen.loc / split / name
        keys += pq.read_table(loc.path, filesystem=loc.fs, columns=["key"]).column("key").to_pylist()[: n - len(keys)]
        if len(keys) >= n:
            break
    return keys


EXACT_VALUES = 5_000_000
PERCENTILES = (5, 10, 50, 90)


def _kept_scores(gen: Generation, columns: list[str]):
    """(task, {column: float64 array}) per train sidecar of the current generation, typed columns only."""
    import pyarrow.parquet as pq

    for name in sorted(nm for nm in (gen.loc / "train").names() if nm.endswith(".parquet")):
        loc = gen.loc / "train" / name
        schema = pq.read_schema(loc.path, filesystem=loc.fs)
        have = [c for c in columns if c in schema.names]
        if not have:
            continue
        t = pq.read_table(loc.path, filesystem=loc.fs, columns=["task", "keep", *have])
        keep = t.column("keep").to_numpy(zero_copy_only=False).astype(bool)
        tasks = [x for x, k in zip(t.column("task").to_pylist(), keep) if k]
        cols = {c: t.column(c).to_numpy(zero_copy_only=False).astype(np.float64)[keep] for c in have}
        yield tasks, cols


def score_stats(gen: Generation) -> tuple[dict, dict[str, np.ndarray]]:
    """Count and percentiles of every typed score column over the kept rows, and the values they come
    from: all of them up to EXACT_VALUES per column, then a uniform sample of that size (bottom-k of
    random keys), so memory is bounded whatever the output's size."""
    from ..schema import SCORE_COLUMNS

    rng = np.random.default_rng(0)
    vals: dict[str, np.ndarray] = {}
    keys: dict[str, np.ndarray] = {}
    seen: dict[str, int] = {}
    for _, cols in _kept_scores(gen, list(SCORE_COLUMNS)):
        for c, v in cols.items():
            v = v[~np.isnan(v)]
            if not v.size:
                continue
            seen[c] = seen.get(c, 0) + v.size
            vals[c] = np.concatenate([vals.get(c, np.empty(0)), v])
            keys[c] = np.concatenate([keys.get(c, np.empty(0)), rng.random(v.size)])
            if vals[c].size > EXACT_VALUES:
                keep = np.argpartition(keys[c], EXACT_VALUES)[:EXACT_VALUES]
                vals[c], keys[c] = vals[c][keep], keys[c][keep]
    stats = {c: {"n": seen[c], "exact": seen[c] == v.size, **{f"p{q}": float(np.percentile(v, q)) for q in PERCENTILES}}
             for c, v in vals.items()}
    return stats, vals


def filtered_counts(gen: Generation, mins: list[str], values: dict[str, np.ndarray]) -> dict:
    """Kept rows per task whose typed columns reach every ``COLUMN=VALUE`` minimum (null fails)."""
    from ..schema import SCORE_COLUMNS

    rules: dict[str, float] = {}
    for item in mins:
        col, sep, val = item.partition("=")
        col, val = col.strip(), val.strip()
        if not sep or col not in SCORE_COLUMNS:
            raise UserError(f"--min {item}: expected COLUMN=VALUE with COLUMN one of {', '.join(SCORE_COLUMNS)}")
        if val[:1].lower() == "p" and val[1:].replace(".", "", 1).isdigit() and float(val[1:]) <= 100:
            if col not in values:
                raise UserError(f"--min {item}: {col} has no values among the kept rows of {gen.root}")
            rules[col] = float(np.percentile(values[col], float(val[1:])))
        else:
            try:
                rules[col] = float(val)
            except ValueError:
                raise UserError(f"--min {item}: VALUE must be a number or pNN (0 <= NN <= 100)") from None
    tasks: dict[str, int] = {}
    for tnames, cols in _kept_scores(gen, list(rules)):
        ok = np.ones(len(tnames), bool)
        for c, thr in rules.items():
            v = cols.get(c)
            ok &= (v >= thr) if v is not None else False  # NaN (null) compares False
        for t, k in zip(tnames, ok):
            if k:
                tasks[t] = tasks.get(t, 0) + 1
    return {"min": rules, "tasks": dict(sorted(tasks.items())), "rows": sum(tasks.values())}


def summarise(out: Path | str, n: int, mins: list[str] | None = None) -> dict:
    gen = current(out)
    manifest = gen.manifest
    summary = {"output": str(out), "name": manifest.get("name"), "version": manifest.get("version"),
               "generation": gen.number, "code_version": manifest.get("code_version", {}), "splits": {}}
    for split in SPLITS:
        info = manifest.get("splits", {}).get(split, {})
        summary["splits"][split] = {
            "rows": info.get("rows", 0), "shards": len(info.get("shards", [])), "tasks": info.get("tasks", {}),
            "datasets": info.get("datasets", {}), "drop_reasons": info.get("drop_reasons", {}),
            "verified": info.get("verified", {}), "sample_keys": sample_keys(gen, split, n),
        }
    summary["scores"], values = score_stats(gen)
    if mins:
        summary["filtered"] = filtered_counts(gen, mins, values)
    return summary


def _table(title: str, counts: dict, total: int) -> list[str]:
    lines = [f"  {title}"]
    for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        pct = 100.0 * v / total if total else 0.0
        lines.append(f"    {k or '-':40s} {v:8d}  {pct:5.1f}%")
    return lines


def render(summary: dict) -> str:
    s = summary
    code = s["code_version"].get("git", s["code_version"].get("package", "?"))[:12]
    gen = f", generation {s['generation']}" if s.get("generation") else ""
    lines = [f"{s['output']}  ({s['name']} {s['version']}{gen}, code {code})"]
    kept, rej = s["splits"]["train"]["rows"], s["splits"]["rejected"]["rows"]
    total = kept + rej
    lines.append(f"  rows {total}: kept {kept}, rejected {rej}" + (f" ({100.0 * rej / total:.1f}% dropped)" if total else ""))
    checked = sum(s["splits"][x]["verified"].get("checked", 0) for x in SPLITS)
    if checked:
        passed = sum(s["splits"][x]["verified"].get("passed", 0) for x in SPLITS)
        lines.append(f"  verified {passed}/{checked} rendered targets ({100.0 * passed / checked:.2f}%)")
    for split in SPLITS:
        info = s["splits"][split]
        lines.append(f"  [{split}] {info['rows']} rows in {info['shards']} shards")
        if info["rows"]:
            lines += _table("per task", info["tasks"], info["rows"])
            lines += _table("per dataset", info["datasets"], info["rows"])
        if info["drop_reasons"]:
            lines += _table("drop reasons", info["drop_reasons"], info["rows"])
        if info["sample_keys"]:
            lines.append("  sample keys: " + ", ".join(info["sample_keys"]))
    if s.get("scores"):
        lines.append("  scores of kept rows (" + ", ".join(f"p{q}" for q in PERCENTILES) + "):")
        for c, st in s["scores"].items():
            pct = "  ".join(f"{st[f'p{q}']:9.4g}" for q in PERCENTILES)
            lines.append(f"    {c:28s} n={st['n']:<8d} {pct}{'' if st['exact'] else '  (sampled)'}")
    if s.get("filtered"):
        f = s["filtered"]
        rule = " and ".join(f"{c} >= {v:.6g}" for c, v in f["min"].items())
        lines.append(f"  kept rows with {rule}: {f['rows']}")
        lines += [f"    {t:40s} {n:8d}" for t, n in f["tasks"].items()]
    return "\n".join(lines)


# -- --verify ---------------------------------------------------------------------------------------

def _digest(loc) -> tuple[int, str]:
    return loc.digest()


def verify(out: Path | str) -> tuple[list[str], dict]:
    """Check the current generation's files against its manifest. Returns (one line per damaged file or
    manifest field, counts)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    gen = current(out)
    where = gen.manifest_loc
    problems: list[str] = []
    counts = {"files": 0, "checked_size": 0, "checked_sha256": 0, "without_fields": 0}
    splits = gen.manifest.get("splits")
    if not isinstance(splits, dict):
        return [f"{where}: field splits: expected an object"], counts
    for split in SPLITS:
        info = splits.get(split) or {}
        shards = info.get("shards", []) if isinstance(info, dict) else None
        if not isinstance(shards, list):
            problems.append(f"{where}: field splits.{split}.shards: expected a list")
            continue
        for i, e in enumerate(shards):
            field = f"splits.{split}.shards[{i}]"
            if not isinstance(e, dict):
                problems.append(f"{where}: field {field}: expected an object")
                continue
            for kind in FILE_KINDS:
                rel = e.get(kind)
                if not isinstance(rel, str) or not rel or rel.startswith("/") or ".." in rel.split("/"):
                    problems.append(f"{where}: field {field}.{kind}: expected a path inside the output, got {rel!r}")
                    continue
                loc = gen.file(rel)
                counts["files"] += 1
                info_ = loc.fs.get_file_info(loc.path)
                if info_.type != pafs.FileType.File:
                    problems.append(f"{loc}: missing (listed in {where} as {field}.{kind})")
                    continue
                want_bytes, want_sha = e.get(f"{kind}_bytes"), e.get(f"{kind}_sha256")
                if want_bytes is None and want_sha is None:
                    counts["without_fields"] += 1
                if want_bytes is not None:
                    counts["checked_size"] += 1
                    if int(info_.size) != want_bytes:
                        problems.append(f"{loc}: damaged: {int(info_.size)} bytes, the manifest says {want_bytes}")
                        continue
                if want_sha is not None:
                    counts["checked_sha256"] += 1
                    _, sha = _digest(loc)
                    if sha != want_sha:
                        problems.append(f"{loc}: damaged: sha256 {sha[:16]}..., the manifest says {str(want_sha)[:16]}...")
                        continue
                if kind == "parquet" and isinstance(e.get("rows"), int):
                    try:
                        rows = pq.ParquetFile(loc.fs.open_input_file(loc.path)).metadata.num_rows
                    except (OSError, ValueError) as exc:
                        problems.append(f"{loc}: damaged: not a readable parquet ({str(exc).splitlines()[0][:120]})")
                        continue
                    if rows != e["rows"]:
                        problems.append(f"{loc}: damaged: {rows} rows, the manifest says {e['rows']}")
    if counts["without_fields"]:
        log.warning("%s: %d files have no size or sha256 in the manifest (an output written before they were "
                    "recorded): checked for presence and row counts only", where, counts["without_fields"])
    return problems, counts


def main(args: argparse.Namespace) -> int:
    if is_uri(args.path):
        if not (as_location(args.path) / MANIFEST).is_file() and not (as_location(args.path) / POINTER).is_file():
            raise UserError(f"{args.path}: not a shard output (no manifest.json)")
        outputs: list = [args.path]
    else:
        path = Path(args.path)
        if not path.exists():
            raise UserError(f"{path}: no such folder")
        outputs = find_outputs(path)
        if not outputs:
            raise UserError(f"{path}: no output found (no manifest.json below it)")
    if args.verify:
        bad = 0
        for o in outputs:
            problems, counts = verify(o)
            for line in problems:
                print(line)
            bad += len(problems)
            print(f"{o}: {counts['files']} files checked ({counts['checked_sha256']} by sha256), "
                  f"{len(problems)} damaged", file=sys.stderr)
        return 1 if bad else 0
    summaries = [summarise(o, args.samples, args.mins) for o in outputs]
    if args.json:
        print(json.dumps(summaries, indent=1))
    else:
        print("\n\n".join(render(s) for s in summaries))
    return 0
