"""``idd inspect DIR [--verify]``: what an output holds — counts per split, task and dataset, drop reasons,
verification rate and a few sample keys. DIR may be one output or a folder of outputs (or an output's
URI on an object store). Everything is read from the output's current generation (:mod:`..generations`).

``--verify`` checks every tar and parquet the current manifest lists against the manifest: present,
the recorded size and sha256 (``tar_bytes``/``tar_sha256``/``parquet_bytes``/``parquet_sha256``) and
the parquet's row count. It prints one line per damaged file and exits 1 when there is one. A manifest
written before sizes and hashes were recorded is checked for presence and row counts only, with a
warning.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

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


def summarise(out: Path | str, n: int) -> dict:
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
    return "\n".join(lines)


# -- --verify ---------------------------------------------------------------------------------------

def _digest(loc) -> tuple[int, str]:
    sha = hashlib.sha256()
    n = 0
    with loc.fs.open_input_stream(loc.path) as fh:
        while True:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            sha.update(chunk)
            n += len(chunk)
    return n, sha.hexdigest()


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
    summaries = [summarise(o, args.samples) for o in outputs]
    if args.json:
        print(json.dumps(summaries, indent=1))
    else:
        print("\n\n".join(render(s) for s in summaries))
    return 0
