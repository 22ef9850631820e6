"""``idd export-alignment LABELS --out DIR``: alignment picks -> an output the trainer reads."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-alignment",
                       help="write the auditors' alignment picks (best 0-2 per group) as a training output")
    p.add_argument("labels", help="<out>/<name>/.audit/<version>/labels.sqlite written by the auditor page "
                                  "(the older <output>/audit/labels.sqlite is accepted)")
    p.add_argument("--out", required=True, help="folder for the new output (train/ rejected/ manifest.json)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..audit.alignment import export_alignment

    manifest = export_alignment(args.labels, args.out)
    splits = manifest["splits"]
    print(f"output: {args.out}")
    print(f"  train     {splits['train']['rows']:7d} picked samples  "
          f"[{', '.join(f'{k}={v}' for k, v in splits['train']['tasks'].items()) or '-'}]")
    if splits["rejected"]["rows"]:
        print(f"  rejected  {splits['rejected']['rows']:7d} picks that could not be read")
        for reason, n in splits["rejected"]["drop_reasons"].items():
            print(f"    {n:6d}  {reason}")
    return 0
