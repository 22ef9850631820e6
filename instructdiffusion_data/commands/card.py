"""``idd card ROOT``: write ROOT/README.md, a Hugging Face dataset card over every output under ROOT.

One config per output (its current generation's train tars), the features of every member its rows
carry and its row count, so ``datasets.load_dataset(ROOT, CONFIG)`` loads every kept row with its
images; licences per source dataset and citations (:mod:`..card`, docs/shard-format.md).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("card", help="write ROOT/README.md: a dataset card (configs, features, licences) over the outputs")
    p.add_argument("root", help="the folder holding the outputs (ROOT/<name>/<version>/manifest.json), e.g. shards")
    p.add_argument("--with-rejected", action="store_true",
                   help="also declare a 'rejected' split per config (the dropped rows; some have no images)")
    p.add_argument("--force", action="store_true", help="replace a README.md that idd card did not write")
    p.add_argument("--json", action="store_true", help="print the configs as JSON")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..card import card_summary, dumps, write_card

    res = write_card(args.root, force=args.force, with_rejected=args.with_rejected)
    if args.json:
        print(dumps(card_summary(res)))
        return 0
    print(f"card: {res.path} ({len(res.outputs)} configs)")
    for o in res.outputs:
        gen = f", generation {o.generation}" if o.generation else ""
        print(f"  {o.config_name:28s} {o.train_rows:8d} kept rows  {o.rel or '.'}{gen}  [{', '.join(sorted(o.members))}]")
    for rel, why in res.skipped:
        print(f"  (skipped {rel}: {why})")
    return 0
