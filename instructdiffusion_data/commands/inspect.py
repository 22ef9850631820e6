"""``idd inspect DIR``: what an output holds — counts per split, task and dataset, drop reasons,
verification rate and a few sample keys. DIR may be one output or a folder of outputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from ..writer import MANIFEST, SPLITS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarise an output (or every output under a folder)")
    p.add_argument("path", help="an output folder (with manifest.json) or a folder of outputs, e.g. shards/")
    p.add_argument("--samples", type=int, default=3, help="sample keys shown per split (default 3)")
    p.add_argument("--json", action="store_true", help="print the summaries as JSON")
    p.set_defaults(func=main)


def find_outputs(path: Path) -> list[Path]:
    if (path / MANIFEST).is_file():
        return [path]
    return sorted(p.parent for p in path.rglob(MANIFEST))


def sample_keys(out: Path, split: str, n: int) -> list[str]:
    import pyarrow.parquet as pq

    keys: list[str] = []
    for pq_path in sorted((out / split).glob("*.parquet")):
        keys += pq.read_table(pq_path, columns=["key"]).column("key").to_pylist()[: n - len(keys)]
        if len(keys) >= n:
            break
    return keys


def summarise(out: Path, n: int) -> dict:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{out / MANIFEST}: unreadable manifest ({e})") from None
    summary = {"output": str(out), "name": manifest.get("name"), "version": manifest.get("version"),
               "code_version": manifest.get("code_version", {}), "splits": {}}
    for split in SPLITS:
        info = manifest.get("splits", {}).get(split, {})
        summary["splits"][split] = {
            "rows": info.get("rows", 0), "shards": len(info.get("shards", [])), "tasks": info.get("tasks", {}),
            "datasets": info.get("datasets", {}), "drop_reasons": info.get("drop_reasons", {}),
            "verified": info.get("verified", {}), "sample_keys": sample_keys(out, split, n),
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
    lines = [f"{s['output']}  ({s['name']} {s['version']}, code {s['code_version'].get('git', s['code_version'].get('package', '?'))[:12]})"]
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


def main(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not path.exists():
        raise UserError(f"{path}: no such folder")
    outputs = find_outputs(path)
    if not outputs:
        raise UserError(f"{path}: no output found (no manifest.json below it)")
    summaries = [summarise(o, args.samples) for o in outputs]
    if args.json:
        print(json.dumps(summaries, indent=1))
    else:
        print("\n\n".join(render(s) for s in summaries))
    return 0
