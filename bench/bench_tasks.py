"""Benchmark: keypoint + semantic segmentation pipelines end to end on local Ray, against the JPEG
codec limit of this machine measured in the same run, and peak memory at two output sizes.

    .venv/bin/python bench/bench_tasks.py                # ~5,000 and ~20,000 samples at 512 px
    .venv/bin/python bench/bench_tasks.py --images 100   # quicker

Codec limit: per sample, decode the source JPEG and encode a 512 px target (simplejpeg, quality 95),
in as many processes as Ray gets CPUs. The pipeline does that and more (resize, drawing, the
verification decode, mask PNGs, tar and parquet writing), so the ratio says how close to the
physical limit of a CPU stage it gets. Peak memory is the resident set of the whole process tree
(driver, raylet, workers) as PSS, sampled every 250 ms; it must not grow with the number of samples.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
log = logging.getLogger("bench_tasks")


def _codec_one(path: str) -> int:
    import simplejpeg

    from instructdiffusion_data.imageio import fit_scale

    rgb = simplejpeg.decode_jpeg(Path(path).read_bytes(), colorspace="RGB")
    h, w = rgb.shape[:2]
    s = fit_scale(h, w, 512)
    tgt = np.ascontiguousarray(rgb[: round(h * s), : round(w * s)])  # a target of the written size, no resize cost
    return len(simplejpeg.encode_jpeg(tgt, quality=95, colorspace="RGB", colorsubsampling="444"))


def codec_limit(files: list[str], samples: int, procs: int) -> float:
    work = (files * (samples // len(files) + 1))[:samples]
    with mp.get_context("spawn").Pool(procs) as pool:
        pool.map(_codec_one, work[: procs * 4])  # warm up
        t0 = time.perf_counter()
        pool.map(_codec_one, work, chunksize=16)
        return samples / (time.perf_counter() - t0)


def pipeline_configs(data: Path, variants: int, records_per_shard: int = 64,
                     object_store_memory: int = 300_000_000) -> list[dict]:
    """The keypoint and semantic-segmentation pipelines over generated COCO demo data (also used by
    bench_cluster.py). The object store is capped below what even the small run here produces, so both
    runs show steady-state memory."""
    base = {"writer": {"records_per_shard": records_per_shard},
            "ray": {"num_cpus": 2, "object_store_memory": object_store_memory}}
    return [
        {"name": "bench_kp", "source": {"type": "coco_keypoints",
                                        "annotations": str(data / "coco/annotations/person_keypoints_train2017.json"),
                                        "images": str(data / "coco/train2017")},
         "stages": [{"type": "render_keypoints", "variants_per_record": variants}], **base},
        {"name": "bench_seg", "source": {"type": "coco_stuff", "images": str(data / "coco/train2017"),
                                         "annotations": [str(data / "cocostuff/annotations/stuff_train2017.json"),
                                                         str(data / "coco/annotations/instances_train2017.json")]},
         "stages": [{"type": "render_semseg", "variants_per_record": variants}], **base},
    ]


CHILD = r"""
import json, sys, time, os
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
from instructdiffusion_data.config import build, PipelineConfig
from instructdiffusion_data.runner import init_ray, run
cfgs = [build(PipelineConfig, c) for c in json.loads(sys.argv[1])]
init_ray(cfgs[0].ray)
import ray
ray.data.DataContext.get_current().enable_progress_bars = False
rows, t0 = 0, time.perf_counter()
for c in cfgs:
    s = run(c, out=sys.argv[2], use_ray=True)
    rows += sum(v["rows"] for v in s.manifest["splits"].values())
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0}))
"""


def run_measured(configs: list[dict], out: str) -> dict:
    """Run the pipelines in a child process; sample the RSS of its whole process tree."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(configs), out], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    peak = [0]

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                # PSS: shared pages (the object store, libraries) counted once across the tree, not per process
                pss = sum(c.memory_full_info().pss for c in [p, *p.children(recursive=True)])
                peak[0] = max(peak[0], pss)
            except psutil.Error:
                pass
            time.sleep(0.25)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out_text, _ = proc.communicate()
    t.join()
    if proc.returncode:
        raise SystemExit(f"pipeline run failed (exit {proc.returncode})")
    res = json.loads(out_text.strip().splitlines()[-1])
    res["peak_pss_mb"] = peak[0] / 2**20
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=480, help="demo scenes to generate (default 480: ~5,000 samples)")
    ap.add_argument("--variants", type=int, default=4, help="variants per record of the small run")
    ap.add_argument("--scale", type=int, default=4, help="the large run has this many times more samples")
    ap.add_argument("--data", default=None, help="reuse generated demo data")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from instructdiffusion_data.demo import generate_all

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data or Path(tmp) / "data")
        if not args.data:
            log.info("generating %d demo scenes ...", args.images)
            generate_all(data, n=args.images, seed=1, only=["coco"])
        files = sorted(str(p) for p in (data / "coco/train2017").glob("*.jpg"))
        small = run_measured(pipeline_configs(data, args.variants), str(Path(tmp) / "small"))
        sps = small["rows"] / small["seconds"]
        codec = codec_limit(files, max(2000, small["rows"] // 2), procs=2)
        # 4x the samples with the same shard size in rows (shards are the unit the driver holds in memory)
        large = run_measured(pipeline_configs(data, args.variants * args.scale, max(1, 64 // args.scale)),
                             str(Path(tmp) / "large"))
    print(f"machine: {os.cpu_count()} CPUs; Ray num_cpus=2; 512 px; JPEG q95 (simplejpeg)")
    print(f"pipeline (keypoints + semseg): {small['rows']} samples in {small['seconds']:.1f}s = {sps:.1f} samples/s")
    print(f"JPEG codec limit (decode src + encode tgt, 2 procs): {codec:.1f} samples/s")
    print(f"ratio pipeline / codec limit: {sps / codec:.2f}")
    print(f"large run: {large['rows']} samples in {large['seconds']:.1f}s = {large['rows'] / large['seconds']:.1f} samples/s")
    print(f"peak memory (PSS of the process tree): {small['rows']} samples {small['peak_pss_mb']:.0f} MB; "
          f"{large['rows']} samples {large['peak_pss_mb']:.0f} MB; ratio {large['peak_pss_mb'] / small['peak_pss_mb']:.2f}")


if __name__ == "__main__":
    main()
