"""``idd giqa build-reference IMAGES_OR_SHARDS --out DIR``: a GIQA reference (FAISS index + giqa.json)."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("idd.giqa")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("giqa", help="GIQA reference sets for the quality filter")
    gsub = p.add_subparsers(dest="giqa_command", metavar="ACTION")
    b = gsub.add_parser("build-reference", help="features of an image folder, a .tar or a shard output in a FAISS index")
    b.add_argument("images", help="image folder (recursive), a WebDataset .tar, or a shard output (its train split)")
    b.add_argument("--out", required=True, help="reference folder to write (index.faiss + giqa.json)")
    b.add_argument("--features", choices=("classical", "clip"), default="classical",
                   help="classical (weight-free, default) or clip (open_clip, the paper's setting)")
    b.add_argument("--metric", choices=("l2", "cosine"), default="l2", help="KNN distance")
    b.add_argument("--form", choices=("knn", "gmm"), default="knn",
                   help="knn (mean 1/distance of the k nearest, default) or gmm (log-likelihood)")
    b.add_argument("--components", type=int, default=16, help="GMM components (--form gmm)")
    b.add_argument("--index", default="Flat", help="FAISS factory string (--form knn): Flat (exact), IVF4096,Flat, ...")
    b.add_argument("--nprobe", type=int, default=16, help="IVF lists searched per query")
    b.add_argument("--member", choices=("src", "tgt", "both"), default="src", help="which images of a shard output")
    b.add_argument("--limit", type=int, default=None, help="at most this many images")
    b.add_argument("--clip-model", default="ViT-L-14")
    b.add_argument("--clip-pretrained", default="openai", help="pretrained tag or a local checkpoint file")
    b.add_argument("--clip-model-config", default=None, help="open_clip architecture JSON for a custom model")
    b.add_argument("--device", default=None)
    b.set_defaults(func=main)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def main(args: argparse.Namespace) -> int:
    from ..models import giqa

    if args.features == "clip":
        from ..models.clip import ClipEmbedder

        ext = giqa.clip_extractor(ClipEmbedder(args.clip_model, args.clip_pretrained, args.device,
                                               model_config=args.clip_model_config))
    else:
        ext = giqa.classical_extractor()
    ref = giqa.build_reference(args.images, ext, metric=args.metric, member=args.member, limit=args.limit,
                               progress=True, form=args.form, components=args.components, index=args.index,
                               nprobe=args.nprobe)
    out = ref.save(args.out)
    pct = ref.info.get("percentiles", {})
    print(f"GIQA reference ({args.form}): {ref.count} images, {ref.dim}-d '{ref.feature_id}' features, "
          f"{ref.metric} -> {out}")
    if ref.info.get("skipped_count"):
        print(f"  skipped {ref.info['skipped_count']} unreadable images (listed in giqa.json)")
    if pct:
        print("  scores of the reference itself (knn: leave-one-out, k=5): " +
              ", ".join(f"{k}={v:.4g}" for k, v in pct.items()))
    return 0
