"""``idd eval MODEL BENCHMARK``: CLIP-Sim and aesthetic score of a model's edits (paper Table 5)."""

from __future__ import annotations

import argparse
import os

AESTHETIC_ENV = "IDD_AESTHETIC_WEIGHTS"


def add_editor_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the InstructPix2Pix run, shared by ``idd eval`` and ``idd align candidates``."""
    p.add_argument("model", help="InstructPix2Pix-compatible diffusers model: a folder (runs/<name>/final) or a hub id "
                                 "in the Hugging Face cache (timbrooks/instruct-pix2pix)")
    p.add_argument("benchmark", help="benchmark output written by `idd benchmark build`")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples of each category")
    p.add_argument("--steps", type=int, default=100, help="denoising steps (default 100)")
    p.add_argument("--resolution", type=int, default=512,
                   help="longer side of the edit in pixels, a multiple of 64 (default 512)")
    p.add_argument("--batch-size", type=int, default=8, help="images per pipeline call (default 8)")
    p.add_argument("--seed", type=int, default=0, help="run seed; each sample's noise is seeded from it and its key")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=("auto", "fp16", "bf16", "fp32"), default="auto",
                   help="auto: fp16 on a GPU, fp32 on a CPU")
    p.add_argument("--scheduler", choices=("euler_ancestral", "model"), default="euler_ancestral",
                   help="sampler: Euler ancestral (InstructPix2Pix's), or the one saved with the model")
    p.add_argument("--local-files-only", action="store_true", help="never reach the hub (offline hosts)")


def editor_config(args: argparse.Namespace):
    from ..evaluation.editor import EditorConfig

    return EditorConfig(model=args.model, steps=args.steps, resolution=args.resolution, batch_size=args.batch_size,
                        seed=args.seed, device=args.device, dtype=args.dtype, scheduler=args.scheduler,
                        local_files_only=args.local_files_only)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="edit a benchmark with a model; CLIP-Sim and aesthetic score per category")
    add_editor_arguments(p)
    p.add_argument("--split", choices=("eval", "align", "all"), default="eval",
                   help="benchmark half to edit: eval (held out, default), align, or all")
    p.add_argument("--text-guidance", type=float, default=5.0, help="text classifier-free guidance (default 5.0)")
    p.add_argument("--image-guidance", type=float, default=1.25, help="image classifier-free guidance (default 1.25)")
    p.add_argument("--out", default=None, help="folder for metrics.json and the grids "
                                               "(default runs/eval/<model>/<benchmark>-<split>-t<T>-i<I>)")
    p.add_argument("--grid-rows", type=int, default=8, help="samples per category grid (default 8)")
    p.add_argument("--save-images", action="store_true", help="also write every edit to <out>/edited/<key>.png")
    p.add_argument("--clip-model", default="ViT-L-14", help="open_clip architecture (default ViT-L-14)")
    p.add_argument("--clip-pretrained", default="openai", help="open_clip tag or a local checkpoint (default openai)")
    p.add_argument("--clip-model-config", default=None, help="open_clip architecture JSON for a custom model")
    p.add_argument("--clip-batch-size", type=int, default=32)
    p.add_argument("--aesthetic-weights", default=None,
                   help=f"sac+logos+ava1-l14-linearMSE.pth state_dict (default: ${AESTHETIC_ENV})")
    p.add_argument("--aesthetic-head", choices=("mlp", "linear"), default="mlp",
                   help="mlp: the improved predictor (default); linear: LAION-Aesthetics V1")
    p.add_argument("--no-aesthetic", action="store_true", help="report CLIP-Sim only")
    p.add_argument("--json", action="store_true", help="print the report (without per-sample rows) as JSON")
    p.set_defaults(func=main)


def eval_config(args: argparse.Namespace):
    from ..errors import UserError
    from ..evaluation.metrics import MetricConfig
    from ..evaluation.run import EvalConfig

    weights = None
    if not args.no_aesthetic:
        weights = args.aesthetic_weights or os.environ.get(AESTHETIC_ENV)
        if not weights:
            raise UserError(f"--aesthetic-weights: required for AP (the sac+logos+ava1-l14-linearMSE.pth file; or set "
                            f"${AESTHETIC_ENV}), or pass --no-aesthetic")
    metrics = MetricConfig(clip_model=args.clip_model, clip_pretrained=args.clip_pretrained or None,
                           clip_model_config=args.clip_model_config, aesthetic_weights=weights,
                           aesthetic_head=args.aesthetic_head, device=args.device, batch_size=args.clip_batch_size)
    return EvalConfig(model=args.model, benchmark=args.benchmark, out=args.out, split=args.split, limit=args.limit,
                      text_guidance=args.text_guidance, image_guidance=args.image_guidance, grid_rows=args.grid_rows,
                      save_images=args.save_images, editor=editor_config(args), metrics=metrics)


def main(args: argparse.Namespace) -> int:
    import json

    from ..evaluation.run import METRICS_FILE, evaluate

    report = evaluate(eval_config(args))
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k not in ("samples", "table")}, indent=1))
    else:
        print(report["table"])
        print(f"\n{report['out']}/{METRICS_FILE}  grids: {', '.join(report['grids'].values()) or '-'}")
    return 0
