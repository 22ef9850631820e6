"""``idd filter OUTPUT --set rule=value ... [--out NEWOUTPUT]``: re-apply quality thresholds.

Reads the parquet sidecars only (the scores are in ``meta["scores"]``, the rules in
``models.quality.RULES``): nothing is recomputed. Each row that the ``quality_filter`` stage scored is
kept when it was kept before the filter (``meta["filter"]["prior_drop"]`` is empty) and passes every
rule under the new thresholds; auditor labels (``<output>/audit/labels.sqlite``, newest accept/reject
per key) override both ways. Rows the filter never saw keep their split unless an auditor labelled them.

Every shard is rewritten (same shard numbers, same writer, so the format and byte-reproducibility
are those of ``idd run``): the image members are copied out of the old tars by the parquet offsets.
Without ``--out`` the output is rewritten in place (new shards are written aside, then swapped in);
with ``--out`` a new output folder is written and the old one is left as it was. Then the manifest,
``filter_report.json`` and the histograms are rewritten, and what moved is printed per rule.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

log = logging.getLogger("idd.filter")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filter", help="re-apply quality thresholds to an output from its parquet sidecars")
    p.add_argument("output", help="output folder (shards/<name>/<version>, holding manifest.json)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="RULE=VALUE",
                   help="a threshold: aesthetic_tgt_min=5.0, giqa_tgt_min=ref:p10, aesthetic_diff_max=none, ...")
    p.add_argument("--out", default=None, help="write the re-filtered output here (default: rewrite in place)")
    p.add_argument("--no-audit", action="store_true", help="ignore auditor labels")
    p.add_argument("--report-only", action="store_true",
                   help="only (re)write filter_report.json and the histograms; move nothing")
    p.add_argument("--dry-run", action="store_true", help="print what would move; write nothing")
    p.set_defaults(func=main)


def parse_sets(items: list[str]) -> dict[str, object]:
    import yaml

    from ..errors import UserError
    from ..models.quality import RULES

    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item}: expected rule=value")
        k, v = item.split("=", 1)
        k = k.strip()
        if k not in RULES:
            raise UserError(f"--set {k}: unknown rule (known: {', '.join(RULES)})")
        try:
            val = yaml.safe_load(v)
        except yaml.YAMLError:
            val = v
        out[k] = val
    return out


def refilter_row(row: dict, sets: dict, audit: dict[str, str]) -> tuple[bool, str | None, dict]:
    """New ``(keep, drop_reason, meta)`` of one sidecar row under thresholds ``sets`` and labels."""
    from ..models.quality import RULES, evaluate, resolve_threshold

    meta = dict(row.get("meta") or {})
    keep, reason = bool(row.get("keep")), row.get("drop_reason")
    flt = meta.get("filter")
    if isinstance(flt, dict) and "thresholds" in flt:
        flt = dict(flt)
        pct = (flt.get("giqa_reference") or {}).get("percentiles")
        thr = {f: flt["thresholds"].get(f) for f in RULES}
        specs = dict(flt.get("threshold_specs") or {})
        for f, v in sets.items():
            if f.startswith("giqa") and not flt.get("giqa_reference"):
                continue  # no GIQA scores in this row
            thr[f] = resolve_threshold(f, v, pct)
            if isinstance(v, str) and v.strip().lower().startswith("ref:"):
                specs[f] = v
            else:
                specs.pop(f, None)
        failed = evaluate(meta.get("scores") or {}, thr)
        prior = flt.get("prior_drop")
        keep = prior is None and not failed
        parts = ([prior] if prior else []) + failed
        reason = ";".join(parts) if parts else None
        flt.update(thresholds=thr, failed=failed)
        if specs:
            flt["threshold_specs"] = specs
        else:
            flt.pop("threshold_specs", None)
        flt.pop("audit", None)
        meta["filter"] = flt
    verdict = audit.get(row["key"])
    if verdict == "accept" and not keep:
        if row.get("src_offset") is None:
            log.warning("%s: accepted by an auditor but has no images; stays rejected", row["key"])
        else:
            keep, reason = True, None
            meta.setdefault("filter", {})["audit"] = "accept"
    elif verdict == "reject" and keep:
        keep, reason = False, "audit:reject"
        meta.setdefault("filter", {})["audit"] = "reject"
    return keep, reason, meta


def _cause(old_reason: str | None, new_reason: str | None, moved_out: bool) -> list[str]:
    from ..models.quality import rule_of_reason

    parts = (new_reason if moved_out else old_reason) or ""
    causes = [rule_of_reason(p) or p for p in parts.split(";") if p]
    return causes or ["(none)"]


def refilter(root: Path, sets: dict, dest: Path | None, *, use_audit: bool = True, dry_run: bool = False) -> dict:
    from ..audit.labels import overrides
    from ..errors import UserError
    from ..models.quality import (
        RULES,
        read_member,
        read_sidecar,
        shard_sidecars,
        write_report,
    )
    from ..writer import MANIFEST, RUN_FILE, ShardWriter

    audit = overrides(root) if use_audit else {}
    in_place = dest is None or dest.resolve() == root.resolve()
    work = root / ".refilter.tmp" if in_place else dest
    if not in_place and dest.exists() and any(dest.iterdir()):
        raise UserError(f"--out {dest}: exists and is not empty")
    if not dry_run:
        if in_place and work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(work)
    moved_out: Counter = Counter()
    moved_in: Counter = Counter()
    totals = Counter()
    applicable: Counter = Counter()
    all_rows: list[dict] = []
    for name, splits in shard_sidecars(root).items():
        rows = []
        fhs: dict = {}
        try:
            for split, pq_path in sorted(splits.items()):
                for r in read_sidecar(pq_path):
                    keep, reason, meta = refilter_row(r, sets, audit)
                    was = bool(r.get("keep"))
                    if was and not keep:
                        for c in _cause(r.get("drop_reason"), reason, True):
                            moved_out[c] += 1
                    elif keep and not was:
                        causes = (["audit:accept"] if audit.get(r["key"]) == "accept"
                                  else _cause(r.get("drop_reason"), reason, False))
                        for c in causes:
                            moved_in[c] += 1
                    totals["train" if keep else "rejected"] += 1
                    scores = meta.get("scores") or {}
                    for f in sets:
                        if RULES[f].score in scores:
                            applicable[f] += 1
                    audit_hit = audit.get(r["key"])
                    if audit_hit:
                        totals[f"audit_{audit_hit}"] += 1
                    new = {"key": r["key"], "task": r["task"], "dataset": r["dataset"],
                           "instruction": r["instruction"], "meta": meta, "keep": keep, "drop_reason": reason}
                    if not dry_run:
                        tar = pq_path.parent / r["tar"]
                        for col in ("src", "tgt", "mask"):
                            new[col] = read_member(tar, r.get(f"{col}_offset"), r.get(f"{col}_size"), fhs)
                    rows.append(new)
                    all_rows.append({"key": r["key"], "keep": keep, "meta": meta})
        finally:
            for fh in fhs.values():
                fh.close()
        if not dry_run:
            writer.write_shard(int(name), rows)
    result = {"moved_to_rejected": dict(moved_out), "moved_to_train": dict(moved_in), "totals": dict(totals),
              "set": dict(sets), "audit_labels": len(audit),
              "rows_with_score": {f: applicable[f] for f in sets}}
    if dry_run:
        return result
    old_manifest = json.loads((root / MANIFEST).read_text())
    extra = {k: v for k, v in old_manifest.items() if k not in ("format", "code_version", "config", "splits")}
    extra["refilter"] = {"from": str(root.resolve()), **result}
    if in_place:
        for split in ("train", "rejected"):
            old = root / split
            aside = root / f".{split}.old"
            if aside.exists():
                shutil.rmtree(aside)
            if old.exists():
                old.rename(aside)
            if (work / split).exists():
                (work / split).rename(old)
            if aside.exists():
                shutil.rmtree(aside)
        shutil.rmtree(work)
        target = root
    else:
        target = dest
        if (root / RUN_FILE).is_file():
            shutil.copy2(root / RUN_FILE, dest / RUN_FILE)
    ShardWriter(target).write_manifest(config=old_manifest.get("config", {}), extra=extra)
    write_report(target, all_rows)
    return result


def main(args: argparse.Namespace) -> int:
    from ..models.quality import output_root, write_report

    root = output_root(args.output)
    if args.report_only:
        rep = write_report(root)
        print(f"report: {root / 'filter_report.json'} ({rep['rows_scored']} of {rep['rows']} rows scored)")
        for rule, n in sorted(rep["drops_per_rule"].items()):
            print(f"  dropped {n:6d}  {rule}")
        return 0
    sets = parse_sets(args.overrides)
    dest = Path(args.out) if args.out else None
    res = refilter(root, sets, dest, use_audit=not args.no_audit, dry_run=args.dry_run)
    where = "(dry run)" if args.dry_run else str(dest or root)
    print(f"re-filtered {root} -> {where}")
    if sets:
        print("  thresholds: " + ", ".join(f"{k}={v}" for k, v in sets.items()))
    print(f"  train {res['totals'].get('train', 0)}, rejected {res['totals'].get('rejected', 0)}"
          f"; auditor labels applied: {res['audit_labels']}")
    for f, n in res["rows_with_score"].items():
        if not n:
            print(f"  note: no row has the score of {f}; that threshold changes nothing")
    print(f"  train -> rejected: {sum(res['moved_to_rejected'].values())}")
    for rule, n in sorted(res["moved_to_rejected"].items(), key=lambda kv: -kv[1]):
        print(f"    {n:6d}  {rule}")
    print(f"  rejected -> train: {sum(res['moved_to_train'].values())}")
    for rule, n in sorted(res["moved_to_train"].items(), key=lambda kv: -kv[1]):
        print(f"    {n:6d}  no longer fails {rule}")
    return 0
