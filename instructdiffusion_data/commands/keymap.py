"""``idd keymap OLD_OUTPUT NEW_OUTPUT [--write MAP.parquet] [--carry-labels]``: old keys -> new keys.

When a reader renames its records, the keys made from them change (format 2: CrowdPose, AI Challenger
and MPII records are ``<image>_<annotation>``, format 1 wrote ``<image>/<annotation>``), and the new
version of an output starts with an empty label store. This command pairs the rows of an old output
(format 1 or 2) with those of the new one by ``(dataset, normalised record id, variant)``
(:mod:`instructdiffusion_data.keymap`), prints how many matched and which old keys did not, writes the
map as parquet (``old_key, new_key, dataset, record_id``; temporary file, then renamed) with ``--write``,
and with ``--carry-labels`` copies the old output's auditor labels onto the new keys in the new output's
label store (``<out>/<name>/.audit/<version>/labels.sqlite``), never adding to a key that has a label
already. Labels an older version left inside the old output (``<output>/audit/labels.sqlite``) are moved
beside it first, as every access to them does. See docs/shard-format.md, "Moving to format 2".
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger("idd.keymap")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keymap", help="map an old output's keys to a new output's (renamed record ids) and "
                                      "carry auditor labels over")
    p.add_argument("old", metavar="OLD_OUTPUT", help="the old output folder (<out>/<name>/<version>, format 1 or 2)")
    p.add_argument("new", metavar="NEW_OUTPUT", help="the new output folder")
    p.add_argument("--write", metavar="MAP.parquet", default=None,
                   help="write the key map (old_key, new_key, dataset, record_id) to this parquet file")
    p.add_argument("--carry-labels", action="store_true",
                   help="copy the old output's auditor labels onto the new keys (never over a label already there)")
    p.add_argument("--slash-ids", metavar="DATASET", action="append", default=None,
                   help="datasets whose record ids changed from a/b to a_b (default: crowdpose, aic, mpii); repeatable")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=main)


def render(summary: dict) -> str:
    o, n = summary["old"], summary["new"]
    lines = [
        f"old {o['name']} ({o['format']}, generation {o['generation']}): {o['rows']} rows",
        f"new {n['name']} ({n['format']}, generation {n['generation']}): {n['rows']} rows",
        f"matched {summary['matched']} ({summary['changed_keys']} keys changed, {summary['same_keys']} unchanged); "
        f"new keys without an old one: {summary['unmatched_new']}",
    ]
    if summary["ambiguous_old"]:
        lines.append(f"ambiguous (several new rows for one old row, left out): {summary['ambiguous_old']}")
    if summary["unmatched_old"]:
        by = ", ".join(f"{k}: {v}" for k, v in summary["unmatched_old_by_dataset"].items())
        lines.append(f"old keys without a new one: {summary['unmatched_old']} ({by}); first: "
                     + ", ".join(summary["unmatched_old_examples"]))
    else:
        lines.append("old keys without a new one: 0")
    for side in ("old", "new"):
        if summary[side]["repeated_keys"]:
            lines.append(f"{side} output repeats {summary[side]['repeated_keys']} keys (first row of each kept)")
    if "written" in summary:
        lines.append(f"wrote the key map ({summary['matched']} rows) to {summary['written']}")
    c = summary.get("labels")
    if c is not None:
        lines.append(f"labels {c['old_labels']} -> {c['new_labels']}: carried {c['carried']} keys "
                     f"({c['rows_added']} label rows), no match {c['no_match']}, already labelled "
                     f"{c['already_labelled']}; alignment submissions carried {c['picks_carried']}, "
                     f"no match {c['picks_no_match']}, already there {c['picks_already']}")
        if c["no_match_examples"]:
            lines.append("labelled old keys without a new key: " + ", ".join(c["no_match_examples"]))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from .. import keymap as K
    from ..errors import UserError

    slash = frozenset(args.slash_ids) if args.slash_ids else K.SLASH_IDS
    if _same(args.old, args.new):
        raise UserError(f"{args.new}: the old and new outputs are the same folder")
    km = K.build(args.old, args.new, slash)
    summary = km.summary()
    log.info("keymap: %d of %d old keys matched, %d changed, %d unmatched", summary["matched"],
             summary["old"]["rows"], summary["changed_keys"], summary["unmatched_old"])
    if args.write:
        summary["written"] = str(K.write_map(km, args.write))
    if args.carry_labels:
        res = K.carry_labels(km, slash)
        summary["labels"] = res.as_dict()
        log.info("labels: carried %d, no match %d, already labelled %d (%d rows added to %s)", res.carried,
                 res.no_match, res.already_labelled, res.rows_added, res.new_labels)
    if args.json:
        json.dump(summary, sys.stdout, indent=1, sort_keys=True)
        print()
    else:
        print(render(summary))
    return 0


def _same(a: str, b: str) -> bool:
    import os

    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
