"""``idd benchmark build``: the editing benchmark (paper 4.4) as a shard output with an ``align`` and an
``eval`` half; ``idd benchmark info OUTPUT`` prints its halves and categories (docs/loop.md, section 3).

    idd benchmark build --jsonl demo_data/editbench/benchmark.jsonl --images demo_data/editbench/images
    idd benchmark build configs/benchmark/editbench.yaml --captioner blip2 --llm-base-url http://localhost:8000/v1
    idd benchmark build --from-output shards/ieiw_removal/v2 --limit 1000 --name ieiw_bench
"""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger("idd.benchmark")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="editing benchmark (paper 4.4): build / info")
    bsub = p.add_subparsers(dest="benchmark_command", metavar="ACTION")
    b = bsub.add_parser("build", help="build a benchmark output from images + JSONL, or from an existing output")
    b.add_argument("config", nargs="?", default=None, help="benchmark YAML (optional), e.g. configs/benchmark/editbench.yaml")
    b.add_argument("--jsonl", default=None, help="one {image, instruction, category} object per line")
    b.add_argument("--images", default=None, help="folder the JSONL's image paths are relative to (default: its folder)")
    b.add_argument("--from-output", dest="from_output", default=None,
                   help="build from the edit_remove/add/replace rows of this output instead")
    b.add_argument("--limit", type=int, default=None, help="--from-output: at most this many samples (by key hash)")
    b.add_argument("--out", default=None, help="output root (default shards): writes OUT/NAME/VERSION")
    b.add_argument("--name", default=None, help="benchmark name (default editbench)")
    b.add_argument("--version", dest="bench_version", default=None, help="output version (default v1)")
    b.add_argument("--seed", type=int, default=None, help="the split's seed (default 0)")
    b.add_argument("--captioner", choices=["annotations", "blip2"], default=None,
                   help="source captions: annotations (weight-free: the JSONL's caption) or blip2")
    b.add_argument("--blip2-model", default=None, help="BLIP-2 hub id or local folder")
    b.add_argument("--llm-base-url", default=None, help="OpenAI-compatible endpoint for target captions "
                                                          "(default: none, the offline rule)")
    b.add_argument("--llm-model", default=None, help="model name at that endpoint")
    b.add_argument("--strict", action="store_true", default=None,
                   help="stop at the first bad JSONL line (default: keep it in rejected/ with its reason)")
    b.add_argument("--overwrite", action="store_true", help="replace a benchmark built with another config")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (dotted: align_fraction=0.5, target_caption.max_words=30)")
    b.set_defaults(func=main_build)
    i = bsub.add_parser("info", help="print a benchmark output's halves and categories")
    i.add_argument("output", help="the benchmark output folder, e.g. shards/editbench/v1")
    i.add_argument("--json", action="store_true", help="print the manifest's benchmark section as JSON")
    i.set_defaults(func=main_info)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def main_build(args: argparse.Namespace) -> int:
    from ..benchmark import build, load_config

    overrides = list(args.overrides)
    if args.captioner:
        overrides.append(f"captioner.backend={args.captioner}")
    if args.blip2_model:
        overrides.append(f"captioner.model={args.blip2_model}")
    if args.llm_base_url:
        overrides.append(f"target_caption.llm.base_url={args.llm_base_url}")
    if args.llm_model:
        overrides.append(f"target_caption.llm.model={args.llm_model}")
    cfg = load_config(args.config, overrides, jsonl=args.jsonl, images=args.images, from_output=args.from_output,
                      limit=args.limit, out=args.out, name=args.name, version=args.bench_version, seed=args.seed,
                      strict=args.strict)
    manifest = build(cfg, overwrite=args.overwrite)
    print("\n".join(table(manifest)))
    print(f"benchmark: {cfg.out}/{cfg.name}/{cfg.version}")
    return 0


def table(manifest: dict) -> list[str]:
    bench = manifest["benchmark"]
    cats = sorted({c for h in bench["splits"].values() for c in h["categories"]})
    lines = [f"{'half':8s}" + "".join(f"{c:>10s}" for c in cats) + f"{'samples':>10s}{'shards':>8s}"]
    for half, h in bench["splits"].items():
        lines.append(f"{half:8s}" + "".join(f"{h['categories'].get(c, 0):10d}" for c in cats)
                     + f"{h['rows']:10d}{len(h['tars']):8d}")
    rej = manifest["splits"]["rejected"]
    lines.append(f"rejected {rej['rows']} ({bench['bad_lines']} bad lines)"
                 + "".join(f"; {k}: {v}" for k, v in rej["drop_reasons"].items()))
    return lines


def main_info(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..generations import current, is_output

    if not is_output(args.output):
        raise UserError(f"{args.output}: not an output (no manifest.json)")
    manifest = current(args.output).manifest
    if not isinstance(manifest.get("benchmark"), dict):
        raise UserError(f"{args.output}: not a benchmark output (its manifest has no 'benchmark' section)")
    if args.json:
        print(json.dumps(manifest["benchmark"], indent=1, sort_keys=True))
    else:
        print("\n".join(table(manifest)))
    return 0
