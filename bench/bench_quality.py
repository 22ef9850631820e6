"""Quality-filter scorer throughput on this machine, beside a JPEG-decode baseline of the same run.

    .venv/bin/python bench/bench_quality.py [--n 200] [--side 512] [--real-clip]

Measures, one process (one core unless a library threads):
  baseline   simplejpeg decode of the same JPEGs (images/s)
  classical  decode + the weight-free score (models.classical_quality.measure)
  features   decode + the weight-free GIQA features
  giqa       KNN GIQA queries (k=5, exact FAISS FlatL2) against 10k and 100k reference vectors,
             and IVF1024,Flat (nprobe 16) at 100k
  stage      the quality_filter stage, weightfree profile, on removal pairs (rows/s; 2 images + mask)
  clip-tiny  a tiny open_clip (1-layer ViT) forward, images/s, through ClipEmbedder
  clip-L14   ViT-L-14 with random weights (real size; throughput does not depend on weights), CPU fp32
  mlp        the LAION aesthetic MLP head on 768-d embeddings
Each line prints images (or queries) per second and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instructdiffusion_data.imageio import decode, encode_jpeg, encode_png
from instructdiffusion_data.models import classical_quality as cq


def scene(seed: int, h: int, w: int) -> np.ndarray:
    import cv2

    r = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = r.integers(40, 200, 3)
    for _ in range(40):
        c = tuple(int(x) for x in r.integers(0, 255, 3))
        cv2.circle(img, (int(r.integers(0, w)), int(r.integers(0, h))), int(r.integers(4, w // 8)), c, -1)
    noise = r.normal(0, 4, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def rate(fn, n: int, min_s: float = 1.0) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    done = 0
    while True:
        done += fn()
        el = time.perf_counter() - t0
        if el >= min_s and done >= n:
            return done / el


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--real-clip", action="store_true", help="also ViT-L-14 (random init, ~1.7 GB) on the CPU")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    h, w = args.side * 3 // 4, args.side
    imgs = [scene(i, h, w) for i in range(32)]
    jpegs = [encode_jpeg(im, 90) for im in imgs]
    results: dict[str, float] = {}

    def dec():
        for b in jpegs:
            decode(b)
        return len(jpegs)

    base = results["baseline jpeg decode"] = rate(dec, args.n)

    def classical():
        for b in jpegs:
            cq.measure(decode(b))
        return len(jpegs)

    results["classical score (decode+measure)"] = rate(classical, args.n)

    def feats():
        for b in jpegs:
            cq.features(decode(b))
        return len(jpegs)

    results["classical GIQA features (decode+features)"] = rate(feats, args.n)

    from instructdiffusion_data.models.giqa import GiqaReference

    rng = np.random.default_rng(0)
    for size in (10_000, 100_000):
        x = rng.random((size, cq.FEATURE_DIM), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ref = GiqaReference(x, "bench", "l2", info={"percentiles": {}})
        q = x[:256] + rng.normal(0, 0.01, (256, cq.FEATURE_DIM)).astype(np.float32)
        results[f"GIQA query k=5, {size // 1000}k ref, exact Flat (queries/s)"] = rate(
            lambda ref=ref, q=q: len(ref.score(q, 5)), 1024)
        if size >= 100_000:
            ivf = GiqaReference(x, "bench", "l2", info={"percentiles": {}}, factory="IVF1024,Flat", nprobe=16)
            results[f"GIQA query k=5, {size // 1000}k ref, IVF1024 nprobe 16 (queries/s)"] = rate(
                lambda ivf=ivf, q=q: len(ivf.score(q, 5)), 1024)

    # the stage on removal pairs
    import cv2

    from instructdiffusion_data.shard_tasks import run_stages_local
    from instructdiffusion_data.schema import new_row
    from instructdiffusion_data.stages.quality_filter import QualityFilter

    rows = []
    for i, im in enumerate(imgs[:16]):
        mask = np.zeros(im.shape[:2], np.uint8)
        cv2.circle(mask, (w // 2, h // 2), h // 5, 255, -1)
        tgt = cv2.inpaint(im, mask, 3, cv2.INPAINT_TELEA)
        rows.append(new_row(key=f"k{i}", task="edit_remove", dataset="b", src=jpegs[i], tgt=encode_jpeg(tgt, 90),
                            mask=encode_png(mask), instruction="remove"))
    with tempfile.TemporaryDirectory() as td:
        for i, b in enumerate(jpegs):
            Path(td, f"{i}.jpg").write_bytes(b)
        st = QualityFilter({"giqa_reference": td, "batch_size": 16})
        results["quality_filter stage, weightfree + GIQA (pairs/s)"] = rate(
            lambda: len(run_stages_local([st], [dict(r, meta={}) for r in rows])), 32)

    try:
        import open_clip
        import torch

        from instructdiffusion_data.models.clip import ClipEmbedder

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        with tempfile.TemporaryDirectory() as td:
            cfg = Path(td, "idd-bench-tiny-clip.json")
            cfg.write_text(json.dumps({"embed_dim": 768, "vision_cfg": {"image_size": 224, "layers": 2, "width": 64,
                                                                        "patch_size": 32, "head_width": 32},
                                       "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32,
                                                    "heads": 2, "layers": 1}}))
            open_clip.add_model_config(cfg)
            emb = ClipEmbedder("idd-bench-tiny-clip", None, "cpu", batch_size=32)
            results["clip tiny (224px, 2-layer ViT) images/s"] = rate(lambda: len(emb.embed_images(imgs)), 64)
            from instructdiffusion_data.models.aesthetics import AestheticMLP

            head = AestheticMLP().eval()
            torch.save(head.state_dict(), Path(td, "head.pth"))
            from instructdiffusion_data.models.aesthetics import AestheticPredictor

            pred = AestheticPredictor(Path(td, "head.pth"), "mlp", "cpu")
            e = rng.normal(size=(1024, 768)).astype(np.float32)
            results["LAION MLP head (embeddings/s)"] = rate(lambda: len(pred.predict(e)), 4096)
        if args.real_clip:
            big = ClipEmbedder("ViT-L-14", None, "cpu", batch_size=4)
            results["clip ViT-L-14 random init, CPU fp32 (images/s)"] = rate(
                lambda: len(big.embed_images(imgs[:4])), 4, min_s=5.0)
    except ImportError as e:
        print(f"(CLIP benchmarks skipped: {e})")

    print(f"quality scorers on {os.cpu_count()} CPUs, {w}x{h} JPEG q90 images")
    for k, v in results.items():
        print(f"  {k:55s} {v:10.1f}/s   x{v / base:7.3f} of JPEG decode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
