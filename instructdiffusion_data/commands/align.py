"""``idd align candidates MODEL BENCHMARK --scales T:I,...``: edits at several guidance pairs for auditors to pick."""

from __future__ import annotations

import argparse
from pathlib import Path

from .eval import add_editor_arguments, editor_config


def register(sub: argparse._SubParsersAction) -> None:
    from ..evaluation import DEFAULT_SCALES  # not .candidates: registering a command loads no model code

    p = sub.add_parser("align", help="human alignment: candidates for auditors to pick from")
    asub = p.add_subparsers(dest="align_command", metavar="ACTION")
    c = asub.add_parser("candidates", help="edit the benchmark's align half at several (text, image) guidance pairs; "
                                           "write them as an output the auditor groups by sample")
    add_editor_arguments(c)
    c.add_argument("--out", required=True,
                   help="output folder <root>/<name>/<version> (e.g. shards/align_candidates/v1); labels go to "
                        "<root>/<name>/.audit/<version>/")
    c.add_argument("--scales", default=DEFAULT_SCALES,
                   help=f"comma-separated TEXT:IMAGE guidance pairs (default {DEFAULT_SCALES})")
    c.add_argument("--per-scale", type=int, default=1, help="seeds per guidance pair (default 1)")
    c.add_argument("--split", choices=("align", "eval", "all"), default="align",
                   help="benchmark half (default align: the eval half stays held out)")
    c.add_argument("--samples-per-shard", type=int, default=64, help="benchmark samples per shard (default 64)")
    c.add_argument("--overwrite", action="store_true", help="replace an earlier candidates output with other settings")
    c.set_defaults(func=main)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def main(args: argparse.Namespace) -> int:
    from ..evaluation.candidates import CandidatesConfig, make_candidates, parse_scales

    cfg = CandidatesConfig(model=args.model, benchmark=args.benchmark, out=args.out, scales=parse_scales(args.scales),
                           per_scale=args.per_scale, split=args.split, limit=args.limit,
                           samples_per_shard=args.samples_per_shard, overwrite=args.overwrite,
                           editor=editor_config(args))
    manifest = make_candidates(cfg)
    train = manifest["splits"]["train"]
    cand = manifest["candidates"]
    print(f"output: {args.out}")
    print(f"  {cand['samples']} samples x {len(cand['scales'])} guidance pairs x {cand['per_scale']} = "
          f"{train['rows']} candidates in {len(train['shards'])} shard(s)  "
          f"[{', '.join(f'{k}={v}' for k, v in train['tasks'].items())}]")
    print(f"  review: idd audit {Path(args.out).parent.parent} --token-env AUDIT_TOKEN  (Alignment tab)")
    return 0
