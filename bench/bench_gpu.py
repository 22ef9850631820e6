"""GPU benchmark of the project's models at their real size (random weights, nothing downloaded), ready for
the first GPU host (issue 19).

Per model (bench/bench_gpu_models.py; configs in configs/models/): build from the repository's config, warm
up, time batches in each precision (fp16, bf16; torch.compile too where it works), record peak GPU memory.
Then the trainer: optimisation steps/s and samples/s of ``configs/trainer/sd15-256.yaml`` (SD-1.5-size UNet,
256 px, bf16, EMA) with the real loader (trainer.data MixtureDataset / make_loader) reading demo shards
that the bench writes first from the bundled demo generator, and the loader's data-wait fraction.
Results (JSON + Markdown table) are rewritten after every measurement, so a run cut by a time limit keeps
what it measured; every model has its own time cap, and the whole run one too.

  make gpu-wheels                                  # where PyPI is reachable: the wheels, 30 MiB, ignored
  make bench-gpu                                   # on the GPU host: torch preinstalled + those wheels
  PYTHONPATH=/tmp/idd-gpu-site:. python3 bench/bench_gpu.py [--models ...] [--cap 90] [--compile both]
  .venv/bin/python bench/bench_gpu.py --tiny       # the same code with tiny configs on the CPU (tests)
  .venv/bin/python bench/bench_gpu.py --count-params   # real-size parameter counts on the meta device
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

log = logging.getLogger("bench_gpu")

FORMAT = "instructdiffusion-data/bench-gpu/1"
# Published figures to hold ours against (issue 19).
PUBLISHED = {
    "sd15": {"s_per_image": {"eager": 1.03, "compiled": 0.67}, "source": "SD-1.5 on an A100, batch 16, SDPA, 512 px, "
             "50 steps with classifier-free guidance (2 UNet passes per step); 0.67 s compiled"},
    "clip": {"items_per_s": 312.0, "source": "CLIP ViT-L/14 image embeddings per A100 (clip-retrieval)"},
    "blip2": {"items_per_s": 17.5, "source": "BLIP-2 captions per A100"},
    "train": {"items_per_s": 13.9, "source": "InstructPix2Pix training samples/s per A100 at 256 px"},
}
# Counts from the paper (InstructDiffusion, sections 3.2 and 4.1):
# IEIW = 159K pairs: VGPhraseCut object removal (LaMa) 85K, our generated replacement (PaintByExample) 51K,
# internal real editing 23K (not generated, not projected).
IEIW = {"removal_pairs": 85_000, "replacement_pairs": 51_000, "internal_pairs": 23_000}
# Per replacement pair: one 50-step PaintByExample sample (CFG), source + target captions, CLIP embeddings of
# the query patch and of source + target (aesthetic score). Per removal pair: one LaMa inpainting.
REPLACEMENT_CALLS = {"pbe_samples": 1, "blip2_captions": 2, "clip_images": 3}
# Dataset sizes of the task mixture: the paper's text (4.1) where it states them; the keypoint sets from the
# comments of configs/mixtures/instructdiffusion.yaml (the paper text we hold lost those numbers). The weights
# are read from that mixture config. The segmentation sets have no count there: left out, and said so.
PAPER_SAMPLES = {
    "keypoints_coco": 149_000, "keypoints_crowdpose": 35_000, "keypoints_mpii": 22_000, "keypoints_aic": 378_000,
    "deblur_gopro": 2_103, "deblur_reds": 24_000, "denoise_sidd": 320, "dewatermark_clwd": 60_000,
    "edit_instructpix2pix": 561_000, "edit_magicbrush": 8_000, "edit_gier": 5_000, "edit_gqa_inpaint": 131_000,
    "ieiw_removal": 85_000, "ieiw_replacement": 51_000,
}
DIFFUSION_STEPS = 50


class CapReached(BaseException):
    """A model's time cap (BaseException, like KeyboardInterrupt: library code's ``except Exception`` must
    not swallow it)."""


@contextmanager
def time_cap(seconds: float, what: str):
    """Raise CapReached in the main thread once ``seconds`` have passed (SIGALRM; 0 or less: no cap)."""
    import signal

    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum, frame):
        raise CapReached(f"{what}: time cap of {seconds:g} s reached")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Results:
    """The run's JSON document, rewritten (atomically) with the table after every change."""

    def __init__(self, out: Path, stem: str, head: dict):
        self.json_path, self.md_path = out / f"{stem}.json", out / f"{stem}.md"
        out.mkdir(parents=True, exist_ok=True)
        self.doc = {"format": FORMAT, **head, "complete": False, "models": [], "trainer": None,
                    "projections": None}

    def model(self, name: str, **kw) -> dict:
        entry = {"name": name, "status": "running", "rows": [], **kw}
        self.doc["models"].append(entry)
        self.save()
        return entry

    def save(self) -> None:
        from bench_gpu_report import sd15_sampling, table

        self.doc["sd15_sampling"] = sd15_sampling(self.doc, DIFFUSION_STEPS)

        for path, text in ((self.json_path, json.dumps(self.doc, indent=1)), (self.md_path, table(self.doc))):
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text + "\n")
            os.replace(tmp, path)


def first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:limit] if text else ''}"


def sync_fn(device: str):
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def time_batches(step, sync, warmup: int, iters: int, max_s: float) -> dict:
    """Warm-up calls (the first one, with compilation, timed apart), then up to ``iters`` timed batches or
    ``max_s`` seconds (at least one)."""
    t = time.perf_counter()
    step()
    sync()
    first_s = time.perf_counter() - t
    for _ in range(max(0, warmup - 1)):
        step()
    sync()
    times: list[float] = []
    end = time.perf_counter() + max_s
    while len(times) < iters and (not times or time.perf_counter() < end):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    return {"first_call_s": first_s, "timed_batches": len(times), "median_batch_s": times[len(times) // 2],
            "min_batch_s": times[0]}


def run_workload(w, args, res: Results, budget: float) -> None:
    import torch

    from bench_gpu_models import DTYPES

    entry = res.model(w.name, item=w.item, note=w.note, published=w.published, **w.extra)
    if w.name == "lama" and not w.extra.get("available"):
        entry["status"] = "not built"
        res.save()
        return
    sync = sync_fn(args.device)
    variants = [(p, False) for p in args.precisions]
    if w.compile_ok and args.compile in ("on", "both") and w.name in args.compile_models:
        variants.append((args.precisions[0], True))
        if args.compile == "on":
            variants = [v for v in variants if v[1]]
    t0 = time.perf_counter()
    try:
        with time_cap(min(args.cap_for.get(w.name, args.cap), budget), w.name):
            for prec, compiled in variants:
                row = {"model": w.name, "batch": w.batch, "precision": prec, "compiled": compiled}
                try:
                    step, params = w.make(DTYPES[prec], compiled)
                    entry["params"] = params
                    free(args.device)
                    peak_reset(args.device)  # from here: the weights in this precision + what the batches need
                    m = time_batches(step, sync, args.warmup, args.iters, args.batch_seconds)
                except Exception as e:  # noqa: BLE001 - a failed variant (compile, dtype, memory) is a row, not a stop
                    row["status"] = f"failed: {first_line(e, 200)}"
                    log.warning("%s %s%s: %s", w.name, prec, " compiled" if compiled else "", row["status"])
                    entry["rows"].append(row)
                    free(args.device)
                    res.save()
                    continue
                finally:
                    step = None
                    if args.compile != "off":
                        torch._dynamo.reset()
                per_item = m["median_batch_s"] / w.batch
                row.update(status="ok", items_per_s=1.0 / per_item, ms_per_item=1000 * per_item,
                           ms_per_batch=1000 * m["median_batch_s"], peak_mem_gib=peak_gib(args.device), **m)
                pub = (w.published or {}).get("items_per_s")
                row["ratio_to_published"] = row["items_per_s"] / pub if pub else None
                entry["rows"].append(row)
                free(args.device)
                res.save()
        ok = [r for r in entry["rows"] if r.get("status") == "ok"]
        entry["status"] = "ok" if ok else "failed"
        if not ok:
            entry["error"] = "every variant failed"
    except CapReached as e:
        entry["status"] = "cut"
        entry["cut"] = str(e)
        log.warning("%s", e)
    except Exception as e:  # noqa: BLE001 - a model that fails is recorded and the run goes on
        entry["status"] = "failed"
        entry["error"] = first_line(e)
        log.exception("%s failed", w.name)
    entry["seconds"] = time.perf_counter() - t0
    free(args.device)
    res.save()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (the test suite's run)")
    p.add_argument("--count-params", action="store_true", help="print the real-size parameter counts (meta device)")
    p.add_argument("--models", default="all", help="comma list of sd15_unet_ip2p, sd15_vae_decode, pbe_unet, "
                   "clip_vit_l14, blip2_opt27b, lama, trainer (default: all)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu (--tiny: cpu)")
    p.add_argument("--precisions", default=None, help="comma list of fp16, bf16, fp32 (default: fp16,bf16 on a "
                   "GPU, fp32 on the CPU)")
    p.add_argument("--compile", choices=["off", "on", "both"], default=None,
                   help="torch.compile: off, on (compiled only), both (eager and compiled; default on a GPU)")
    p.add_argument("--compile-models", default="sd15_unet_ip2p,clip_vit_l14",
                   help="models compiled when --compile is on/both (each compile costs about a minute)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (eager: trace only, for CPU checks)")
    p.add_argument("--image-batch", type=int, default=None, help="images per diffusion batch (GPU 16, tiny 1)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=None, help="timed batches per variant (GPU 10, tiny 2)")
    p.add_argument("--batch-seconds", type=float, default=20.0, help="stop timing a variant after this long")
    p.add_argument("--cap", type=float, default=None, help="seconds per model (GPU 90; 150 for the compiled "
                   "sd15_unet_ip2p and the trainer, 120 for clip_vit_l14; tiny 60)")
    p.add_argument("--cap-for", action="append", default=[], metavar="NAME=SECONDS", help="a model's own cap")
    p.add_argument("--total-cap", type=float, default=None,
                   help="seconds for the whole run: a model's cap never reaches past it, and none starts with "
                   "under 10 s left (GPU 500, to end inside a 600 s host limit with the wheel install; tiny 300)")
    p.add_argument("--train-steps", type=int, default=None, help="timed optimisation steps (GPU 20, tiny 3)")
    p.add_argument("--train-samples", type=int, default=None, help="demo pairs written for the trainer")
    p.add_argument("--lama", default=os.environ.get("LAMA_MODEL"), help="big-lama TorchScript file (optional)")
    p.add_argument("--out", default="bench/results", help="folder of bench_gpu[_tiny].json and .md")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (tiny default 1)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from bench_gpu_models import build_on_meta, n_params, workloads
    from bench_gpu_report import projections, table
    from bench_gpu_train import train_bench

    if args.count_params:
        for name in ("sd15_unet_ip2p", "pbe_unet", "sd15_vae", "sd15_text_encoder", "clip_vit_l14", "blip2_opt27b"):
            print(f"{name:18s} {n_params(build_on_meta(name, args.tiny)) / 1e6:10.1f} M parameters")
        return 0
    gpu = torch.cuda.is_available() and not args.tiny
    args.device = args.device or ("cuda" if gpu else "cpu")
    gpu = args.device.startswith("cuda")
    args.precisions = (args.precisions or ("fp16,bf16" if gpu else "fp32")).split(",")
    args.compile = args.compile or ("both" if gpu else "off")
    args.compile_models = args.compile_models.split(",")
    args.image_batch = args.image_batch or (16 if gpu else 1)
    args.iters = args.iters or (10 if gpu else 2)
    caps = {"sd15_unet_ip2p": 150.0, "clip_vit_l14": 120.0, "trainer": 150.0} if gpu and args.cap is None else {}
    args.cap = args.cap if args.cap is not None else (90.0 if gpu else 60.0)
    args.cap_for = {**caps, **{k: float(v) for k, v in (c.split("=", 1) for c in args.cap_for)}}
    args.total_cap = args.total_cap if args.total_cap is not None else (500.0 if gpu else 300.0)
    if args.threads or args.tiny:
        torch.set_num_threads(args.threads or 1)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    dev_name = torch.cuda.get_device_name() if gpu else f"cpu ({os.cpu_count()} cores)"
    res = Results(Path(args.out), "bench_gpu_tiny" if args.tiny else "bench_gpu", {
        "tiny": args.tiny, "device": dev_name, "torch": torch.__version__, "python": sys.version.split()[0],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "precisions": args.precisions, "compile": args.compile,
        "compile_backend": args.compile_backend,
        "published": PUBLISHED, "ieiw": IEIW, "replacement_calls": REPLACEMENT_CALLS})
    want = None if args.models == "all" else set(args.models.split(","))
    t_run = time.perf_counter()
    for w in workloads(args.tiny, args.device, lama=args.lama, image_batch=args.image_batch, published=PUBLISHED,
                       compile_backend=args.compile_backend):
        if want is not None and w.name not in want:
            continue
        left = args.total_cap - (time.perf_counter() - t_run)
        if left < 10:
            res.model(w.name, item=w.item, note=w.note).update(status="skipped", cut="total cap reached")
            res.save()
            continue
        log.info("== %s", w.name)
        run_workload(w, args, res, left)
    if want is None or "trainer" in want:
        left = args.total_cap - (time.perf_counter() - t_run)
        if left < 10:
            res.doc["trainer"] = {"status": "skipped", "cut": "total cap reached"}
        else:
            log.info("== trainer")
            res.doc["trainer"] = {"status": "running"}
            res.save()
            res.doc["trainer"] = train_bench(args, left, time_cap, CapReached)
    res.doc["projections"] = projections(res.doc, PAPER_SAMPLES, IEIW, REPLACEMENT_CALLS, DIFFUSION_STEPS)
    res.doc["complete"] = True
    res.doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    res.doc["seconds"] = time.perf_counter() - t_run
    res.save()
    print(table(res.doc))
    print(f"\nwrote {res.json_path} and {res.md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
