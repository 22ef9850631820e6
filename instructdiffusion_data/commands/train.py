"""``idd train CONFIG``: stream a shard mixture into an InstructPix2Pix-style UNet (the ``trainer`` package).

``idd train export CHECKPOINT --out DIR [--dtype fp32|fp16|bf16]`` turns a checkpoint into a diffusers
model folder; ``idd train make-tiny-model DIR`` writes a tiny random SD-1.5-layout model for CPU runs and
tests. Several processes (same arguments): ``torchrun --nproc_per_node N -m trainer.train CONFIG`` or
``accelerate launch --multi_gpu --num_processes N -m trainer.train CONFIG`` (docs/trainer.md).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from trainer.train import add_arguments

    p = sub.add_parser("train", help="train on a shard mixture (idd train CONFIG | idd train export CHECKPOINT --out DIR | "
                            "idd train make-tiny-model DIR)")
    add_arguments(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from trainer.train import run

    return run(args)
