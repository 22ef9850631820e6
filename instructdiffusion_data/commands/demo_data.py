"""``idd demo-data OUT``: write the procedural demo datasets in their real formats."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="generate the demo datasets (real on-disk formats) under OUT")
    p.add_argument("out", help="output folder, e.g. demo_data")
    p.add_argument("--n", type=int, default=48, help="images per dataset (default 48)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", action="append", default=None, help="only this generator (repeatable)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..demo import generate_all, generator_names
    from ..errors import UserError

    if args.only:
        unknown = sorted(set(args.only) - set(generator_names()))
        if unknown:
            raise UserError(f"--only {unknown[0]}: unknown generator (available: {', '.join(generator_names())})")
    summary = generate_all(args.out, args.n, args.seed, args.only)
    print(json.dumps(summary, indent=1, sort_keys=True))
    return 0
