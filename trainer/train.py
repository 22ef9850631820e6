"""``python -m trainer.train CONFIG``: the same entry as ``idd train CONFIG`` (docs/trainer.md).

Several processes: ``torchrun --nproc_per_node N -m trainer.train CONFIG`` or
``accelerate launch --multi_gpu --num_processes N -m trainer.train CONFIG`` (GPUs; on a host without
them, CPU processes talking over gloo). ``... export CHECKPOINT --out DIR [--dtype fp32|fp16|bf16]``
turns a checkpoint into a diffusers model folder; ``... make-tiny-model DIR`` writes a tiny model.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys

from instructdiffusion_data.errors import UserError

log = logging.getLogger("trainer")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="trainer YAML (configs/trainer/*.yaml); or 'export' followed by a checkpoint "
                                  "folder; or 'make-tiny-model' followed by a folder")
    p.add_argument("dir", nargs="?", help="with export: the checkpoint-N folder; with make-tiny-model: the folder "
                                          "to write the tiny SD-1.5-layout model to")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (dotted: data.resolution=512, optim.learning_rate=5e-5)")
    p.add_argument("--resume_from_checkpoint", "--resume-from-checkpoint", dest="resume", default=None,
                   help="'latest' (newest complete checkpoint in output_dir) or a checkpoint folder")
    p.add_argument("--max_train_steps", "--max-train-steps", dest="max_train_steps", type=int, default=None)
    p.add_argument("--output_dir", "--output-dir", dest="output_dir", default=None)
    p.add_argument("--out", default=None, help="with export: the model folder to write")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="with export: dtype of every component of the model folder (default fp32)")
    p.add_argument("--no-ema", dest="ema", action="store_false",
                   help="with export: the trained UNet weights, not the EMA ones")
    p.add_argument("--pretrained", default=None,
                   help="with export: where the VAE/text encoder/tokenizer/scheduler come from, when not the "
                        "run's model.pretrained")


def _clean(v):
    """JSON-safe: NaN and infinities become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _export(args: argparse.Namespace) -> int:
    if not args.dir or not args.out:
        raise UserError("export: give the checkpoint and the folder to write, e.g. "
                        "`idd train export runs/sd15-256/checkpoint-2000 --out models/step-2000`")
    from .export import export_checkpoint

    out = export_checkpoint(args.dir, args.out, dtype=args.dtype, use_ema=args.ema, pretrained=args.pretrained)
    print(json.dumps({"model": str(out), "dtype": args.dtype}))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.config == "make-tiny-model":
        if not args.dir:
            raise UserError("make-tiny-model: give the folder to write, e.g. `idd train make-tiny-model runs/models/tiny-sd`")
        from .model import make_tiny_model

        print(make_tiny_model(args.dir))
        return 0
    if args.config == "export":
        return _export(args)
    if args.out is not None:
        raise UserError("--out is an option of `idd train export CHECKPOINT --out DIR`, not of a training run "
                        "(use --output_dir)")
    from .config import load_train_config
    from .loop import train

    overrides = list(args.overrides)
    if args.max_train_steps is not None:
        overrides.append(f"max_train_steps={args.max_train_steps}")
    if args.output_dir is not None:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_train_config(args.config, overrides)
    res = train(cfg, resume=args.resume)
    if not res.is_main:
        return 0
    rate = _clean(res.samples_per_s)
    wait = _clean(res.data_wait_fraction)
    print(json.dumps({"step": res.step, "last_loss": _clean(res.losses[-1]) if res.losses else None,
                      "steps_run": len(res.losses), "checkpoints": res.checkpoints[-1:],
                      "validation": res.validation_images[-1:], "final": res.final,
                      "skipped_samples": res.corrupt, "samples_per_s": None if rate is None else round(rate, 2),
                      "data_wait_fraction": None if wait is None else round(wait, 3)}, indent=1, allow_nan=False))
    return 0


def _rank() -> str:
    """This process's rank as the launcher set it (torchrun/accelerate: RANK; MPI: PMI_RANK...)."""
    for k in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "LOCAL_RANK"):
        if os.environ.get(k) is not None:
            return os.environ[k]
    return "0"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    p = argparse.ArgumentParser(prog="python -m trainer.train", description="train on a shard mixture")
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{_rank()} %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return run(args)
    except UserError as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
