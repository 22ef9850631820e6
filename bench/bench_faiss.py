"""Benchmark of the replacement pipeline's retrieval index and (``--gpu``) its models.

Index mode (default), on synthetic L2-normalised vectors:

* baseline: exact search (``IndexFlatIP``), the ground truth: build time, queries/s;
* the production IVF-PQ index (``models/faiss_index.py``, the ``index:`` defaults of the gallery
  config: nlist = 4 sqrt(N), PQ32x8, trained on <= 100k sampled vectors) at several ``nprobe``:
  build time, queries/s, recall@10 against exact search, speed-up over exact search in the same run;
  and the same with what ``retrieve_reference`` does: the top 64 re-scored exactly with the stored
  vectors (recall@10 after re-ranking), optionally ``IndexRefineFlat`` (``--refine``).

Vectors (L2-normalised): ``--data mixture`` (default; 1000 cluster centres, like object classes, each
with its own 8-d subspace of variation, plus small noise), ``latent`` (a 64-d Gaussian latent through a
fixed random map plus noise: no cluster structure, a hard case) or ``clusters`` (isotropic spread
around centres: near-ties inside clusters, the hardest case for PQ).

    .venv/bin/python bench/bench_faiss.py                 # 100k x 512
    .venv/bin/python bench/bench_faiss.py --million       # also 1M x 512 (several minutes, ~4.5 GB)
    .venv/bin/python bench/bench_faiss.py --gpu           # on a GPU host: model throughput (below)

GPU mode: PaintByExample (the real architecture: SD-1.x inpainting UNet with 9 input channels and
768-d cross-attention, the SD VAE, the CLIP ViT-L/14 image encoder + mapper) and open_clip ViT-L-14,
randomly initialised from configs (no weights needed; throughput does not depend on the values),
fp16 on CUDA: images/s for PaintByExample at 512 px with ``--steps`` denoising steps and for CLIP
image embedding at 224 px. ``--tiny`` runs the same code with tiny configs (a CPU smoke test).

Results are printed and written to ``bench/results/faiss.json`` (``faiss_gpu.json`` for ``--gpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic(n: int, dim: int, clusters: int, seed: int, kind: str = "latent") -> np.ndarray:
    """``mixture``: ``clusters`` centres (object classes), each with its own 8-d subspace of variation,
    plus small isotropic noise; ``latent``: a 64-d Gaussian latent mapped to ``dim`` by a fixed random matrix plus isotropic
    noise (low intrinsic dimension, like image embeddings); ``clusters``: ``clusters`` centres with
    Gaussian spread (near-ties inside a cluster: the hard case for PQ)."""
    basis = np.random.default_rng(12345)
    W = basis.normal(size=(64, dim)).astype(np.float32)
    centres = basis.normal(size=(clusters, dim)).astype(np.float32)
    if kind == "mixture":  # per cluster, an 8-d subspace of variation (scale: half the centre's norm)
        bases = (basis.normal(size=(clusters, 8, dim)) * (0.5 / np.sqrt(8))).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    step = 100_000
    for i in range(0, n, step):
        m = min(step, n - i)
        if kind == "mixture":
            c = rng.integers(0, clusters, m)
            local = np.einsum("nk,nkd->nd", rng.normal(size=(m, 8)).astype(np.float32), bases[c])
            out[i:i + m] = centres[c] + local + rng.normal(scale=0.05, size=(m, dim)).astype(np.float32)
        elif kind == "latent":
            out[i:i + m] = rng.normal(size=(m, 64)).astype(np.float32) @ W + rng.normal(size=(m, dim)).astype(np.float32)
        else:
            out[i:i + m] = centres[rng.integers(0, clusters, m)] + rng.normal(scale=0.6, size=(m, dim)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def rerank(x: np.ndarray, q: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Exact re-ranking of each query's candidates with the stored vectors (what retrieve_reference does
    with the gallery's embeddings.npy), top k."""
    out = np.empty((ids.shape[0], k), np.int64)
    for j, (qq, cand) in enumerate(zip(q, ids)):
        cand = cand[cand >= 0]
        out[j] = cand[np.argsort(-(x[cand] @ qq), kind="stable")[:k]]
    return out


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    hits = sum(len(set(f[:k]) & set(t[:k])) for f, t in zip(found, truth))
    return hits / float(truth.shape[0] * k)


def timed_search(index, q: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    index.search(q[:10], k)  # warm-up
    t0 = time.perf_counter()
    _, ids = index.search(q, k)
    return q.shape[0] / (time.perf_counter() - t0), ids


def bench_index(n: int, dim: int, n_queries: int, clusters: int, nprobes: list[int], refine: int,
                kind: str = "latent") -> dict:
    import faiss

    from instructdiffusion_data.models.faiss_index import IndexConfig, build_index

    print(f"\n== {n:,} x {dim} vectors, {n_queries} queries (faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads) ==", flush=True)
    x = synthetic(n, dim, clusters, seed=0, kind=kind)
    q = synthetic(n_queries, dim, clusters, seed=1, kind=kind)
    res: dict = {"n": n, "dim": dim, "queries": n_queries, "data": kind, "runs": []}

    t0 = time.perf_counter()
    flat, info = build_index(x, IndexConfig(type="flat"))
    build_s = time.perf_counter() - t0
    qps_exact, truth = timed_search(flat, q, 10)
    res["runs"].append({"index": "Flat (exact, baseline)", "build_s": round(build_s, 2), "qps": round(qps_exact, 1),
                        "recall@10": 1.0, "speedup": 1.0})
    print(f"  {'Flat (exact, baseline)':34s} build {build_s:7.2f}s  {qps_exact:9.0f} q/s  recall@10 1.000", flush=True)
    del flat

    for ref in ([0, refine] if refine else [0]):
        cfg = IndexConfig(type="ivfpq", nprobe=nprobes[0], refine=ref)
        t0 = time.perf_counter()
        index, info = build_index(x, cfg)
        build_s = time.perf_counter() - t0
        for nprobe in nprobes:
            from instructdiffusion_data.models.faiss_index import set_nprobe

            set_nprobe(index, nprobe)
            qps, ids = timed_search(index, q, 10)
            rec = recall_at(ids, truth)
            t0 = time.perf_counter()
            _, ids64 = index.search(q, 64)
            rr = rerank(x, q, ids64, 10)
            qps_rr = q.shape[0] / (time.perf_counter() - t0)
            rec_rr = recall_at(rr, truth)
            name = f"{info['factory']}{',refine' + str(ref) if ref else ''} nprobe={nprobe}"
            res["runs"].append({"index": name, "build_s": round(build_s, 2), "qps": round(qps, 1),
                                "recall@10": round(rec, 4), "speedup": round(qps / qps_exact, 2),
                                "rerank64_qps": round(qps_rr, 1), "rerank64_recall@10": round(rec_rr, 4)})
            print(f"  {name:34s} build {build_s:7.2f}s  {qps:9.0f} q/s  recall@10 {rec:.3f}  "
                  f"x{qps / qps_exact:.1f} vs exact | top-64 + exact re-rank: {qps_rr:7.0f} q/s "
                  f"recall@10 {rec_rr:.3f}", flush=True)
        del index
    return res


def bench_models(tiny: bool, steps: int, batch: int, device: str | None) -> dict:
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    out: dict = {"device": device, "dtype": str(dtype), "tiny": tiny,
                 "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None}

    # -- PaintByExample, real architecture, random weights, through the production editor ------------
    import tempfile

    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from diffusers.pipelines.deprecated.paint_by_example import (
        PaintByExampleImageEncoder,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    from instructdiffusion_data.models.paint_by_example import PaintByExampleEditor

    res = 64 if tiny else 512
    if tiny:
        unet_kw = {"block_out_channels": (16, 32), "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
                       "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 32,
                       "attention_head_dim": 4, "norm_num_groups": 8, "layers_per_block": 1}
        vae_kw = {"block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
                      "up_block_types": ["UpDecoderBlock2D"] * 2, "norm_num_groups": 8, "layers_per_block": 1}
        enc_cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=4, num_attention_heads=4,
                                   image_size=32, patch_size=8, projection_dim=32)
        proj = 32
    else:  # Stable Diffusion 1.x inpainting UNet + SD VAE + CLIP ViT-L/14 vision tower (PaintByExample)
        unet_kw = {"block_out_channels": (320, 640, 1280, 1280),
                       "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                       "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "cross_attention_dim": 768,
                       "attention_head_dim": 8, "layers_per_block": 2}
        vae_kw = {"block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
                      "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2}
        enc_cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                   num_attention_heads=16, image_size=224, patch_size=14, projection_dim=768)
        proj = 768
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        UNet2DConditionModel(in_channels=9, out_channels=4, sample_size=res // 8, **unet_kw).save_pretrained(root / "unet")
        AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=res, **vae_kw).save_pretrained(
            root / "vae")
        PaintByExampleImageEncoder(enc_cfg, proj_size=proj).save_pretrained(root / "image_encoder")
        PNDMScheduler(skip_prk_steps=True).save_pretrained(root / "scheduler")
        size = enc_cfg.image_size
        CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
            root / "feature_extractor")
        (root / "model_index.json").write_text(json.dumps({
            "_class_name": "PaintByExamplePipeline", "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "image_encoder": ["paint_by_example", "PaintByExampleImageEncoder"], "safety_checker": [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}))
        ed = PaintByExampleEditor(str(root), device=device, steps=steps, guidance_scale=5.0, resolution=res)
    n_params = sum(p.numel() for p in ed.pipe.unet.parameters()) / 1e6
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (res, res, 3), dtype=np.uint8) for _ in range(batch)]
    masks = [np.pad(np.ones((res // 2, res // 2), np.uint8), res // 4) for _ in range(batch)]
    refs = [rng.integers(0, 255, (200, 160, 3), dtype=np.uint8) for _ in range(batch)]
    ed.edit(imgs[:1], masks[:1], refs[:1], [0])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ed.edit(imgs, masks, refs, list(range(batch)))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out["paint_by_example"] = {"unet_params_M": round(n_params, 1), "resolution": res, "steps": steps,
                               "batch": batch, "seconds": round(dt, 3), "images_per_s": round(batch / dt, 3)}
    print(f"PaintByExample ({n_params:.0f}M-param UNet, {res}px, {steps} steps, batch {batch}, {device}): "
          f"{batch / dt:.3f} images/s", flush=True)
    del ed
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    # -- CLIP image embeddings (open_clip ViT-L-14 random init) through the gallery embedder ------------

    from instructdiffusion_data.models.clip import ClipEmbedder

    name = "ViT-L-14"
    model_config = None
    if tiny:
        cfgfile = Path(tempfile.mkdtemp()) / "idd-bench-tiny-clip.json"
        cfgfile.write_text(json.dumps({"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64,
                                                                       "patch_size": 8, "head_width": 32},
                                       "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32,
                                                    "heads": 2, "layers": 1}}))
        name, model_config = cfgfile.stem, str(cfgfile)
    clip_batch = 8 if tiny else 128
    emb = ClipEmbedder(name, None, device, model_config=model_config, batch_size=clip_batch)
    n_img = clip_batch * (2 if tiny else 8)
    pics = [rng.integers(0, 255, (256, 256, 3), dtype=np.uint8) for _ in range(n_img)]
    emb.embed_images(pics[:clip_batch])  # warm-up
    t0 = time.perf_counter()
    emb.embed_images(pics)
    dt = time.perf_counter() - t0
    n_params = sum(p.numel() for p in emb.model.visual.parameters()) / 1e6
    out["clip"] = {"model": name, "visual_params_M": round(n_params, 1), "images": n_img, "batch": clip_batch,
                   "seconds": round(dt, 3), "images_per_s": round(n_img / dt, 1),
                   "note": "includes the PIL preprocessing (resize, crop, normalise) on the host"}
    print(f"CLIP {name} ({n_params:.0f}M visual params, {device}): {n_img / dt:.1f} images/s "
          f"(batch {clip_batch}, preprocessing included)", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 64])
    ap.add_argument("--refine", type=int, default=0, help="also IVF-PQ + IndexRefineFlat(k_factor) (0: skip)")
    ap.add_argument("--data", choices=["mixture", "latent", "clusters"], default="mixture")
    ap.add_argument("--million", action="store_true", help="also 1,000,000 vectors (minutes; ~4.5 GB RAM)")
    ap.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads (default: faiss' own)")
    ap.add_argument("--gpu", action="store_true", help="model throughput instead (PaintByExample, CLIP)")
    ap.add_argument("--tiny", action="store_true", help="--gpu with tiny configs (smoke test on a CPU)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    info = {"machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}
    if args.gpu:
        r = bench_models(args.tiny, args.steps, args.batch, args.device)
        (RESULTS / ("faiss_gpu_tiny.json" if args.tiny else "faiss_gpu.json")).write_text(
            json.dumps({**info, **r}, indent=1))
        return 0
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    from instructdiffusion_data.models.faiss_index import gpu_available

    info["faiss_gpu"] = gpu_available()
    results = [bench_index(args.n, args.dim, args.queries, args.clusters, args.nprobe, args.refine, args.data)]
    if args.million:
        results.append(bench_index(1_000_000, args.dim, args.queries, args.clusters, args.nprobe, args.refine,
                                   args.data))
    (RESULTS / "faiss.json").write_text(json.dumps({**info, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
