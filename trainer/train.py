"""``python -m trainer.train CONFIG`` (also under ``accelerate launch -m trainer.train CONFIG``).

The same entry as ``idd train CONFIG``; see docs/trainer.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from instructdiffusion_data.errors import UserError

log = logging.getLogger("trainer")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="trainer YAML (configs/trainer/*.yaml), or 'make-tiny-model' followed by a folder")
    p.add_argument("dir", nargs="?", help="with make-tiny-model: the folder to write the tiny SD-1.5-layout model to")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (dotted: data.resolution=512, optim.learning_rate=5e-5)")
    p.add_argument("--resume_from_checkpoint", "--resume-from-checkpoint", dest="resume", default=None,
                   help="'latest' (newest complete checkpoint in output_dir) or a checkpoint folder")
    p.add_argument("--max_train_steps", "--max-train-steps", dest="max_train_steps", type=int, default=None)
    p.add_argument("--output_dir", "--output-dir", dest="output_dir", default=None)


def run(args: argparse.Namespace) -> int:
    if args.config == "make-tiny-model":
        if not args.dir:
            raise UserError("make-tiny-model: give the folder to write, e.g. `idd train make-tiny-model runs/models/tiny-sd`")
        from .model import make_tiny_model

        print(make_tiny_model(args.dir))
        return 0
    from .config import load_train_config
    from .loop import train

    overrides = list(args.overrides)
    if args.max_train_steps is not None:
        overrides.append(f"max_train_steps={args.max_train_steps}")
    if args.output_dir is not None:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_train_config(args.config, overrides)
    res = train(cfg, resume=args.resume)
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(json.dumps({"step": res.step, "last_loss": res.losses[-1] if res.losses else None,
                      "checkpoints": res.checkpoints[-1:], "validation": res.validation_images[-1:],
                      "skipped_samples": res.corrupt, "samples_per_s": round(res.samples_per_s, 2),
                      "data_wait_fraction": round(res.data_wait_fraction, 3)}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    p = argparse.ArgumentParser(prog="python -m trainer.train", description="train on a shard mixture")
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return run(args)
    except UserError as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
