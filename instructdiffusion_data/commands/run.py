"""``idd run CONFIG``: run a pipeline config on Ray Data and write shards."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("idd.run")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run pipeline configs (source -> stages -> shards) on Ray")
    p.add_argument("configs", nargs="+", metavar="CONFIG",
                   help="pipeline YAML(s), e.g. configs/pipelines/keypoints_coco.yaml; several run one after "
                        "the other on the same Ray cluster, every config validated before any work")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (dotted: writer.records_per_shard=64, stages.0.variants_per_record=3)")
    p.add_argument("--address", default=None, help="Ray cluster to join ('auto', 'ray://host:10001'); default: embedded")
    p.add_argument("--out", default=None, help="output root (default: writer.out of the config)")
    p.add_argument("--overwrite", action="store_true", help="replace an output written with a different config")
    p.add_argument("--no-ray", action="store_true", help="run the stages in this process (debugging)")
    p.add_argument("--plan", action="store_true",
                   help="print the shards, their inputs and what is already done; run nothing")
    p.add_argument("--redo-changed", action="store_true",
                   help="redo finished shards whose inputs changed since they were written (default: refuse)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..config import load_pipeline_config
    from ..runner import build, run

    configs = [load_pipeline_config(path, args.overrides) for path in args.configs]
    for cfg in configs:
        build(cfg)  # every source and stage checks its config and paths before any work starts
    failed = 0
    for cfg in configs:
        summary = run(cfg, address=args.address, out=args.out, overwrite=args.overwrite, use_ray=not args.no_ray,
                      redo_changed=args.redo_changed, plan_only=args.plan)
        if args.plan:
            print(f"{cfg.name}/{cfg.version}: " + "\n".join(summary.plan_lines), flush=True)
            continue
        print("\n".join(summary.lines()), flush=True)
        if summary.failed:
            failed += 1
            log.error("%s: %d shards failed (%s); the others are committed, a rerun redoes only the failed ones",
                      cfg.name, len(summary.failed), ", ".join(f"{k:06d}" for k in sorted(summary.failed)[:10]))
    return 1 if failed else 0
