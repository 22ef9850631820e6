"""Benchmark: a CPU pipeline on one node vs a two-node Ray cluster of this machine, and an estimate of
the GPU cluster needed to regenerate the paper's data.

    .venv/bin/python bench/bench_cluster.py                 # 160 demo scenes, keypoints + semantic seg
    .venv/bin/python bench/bench_cluster.py --images 60     # quicker

1. One node: embedded Ray (``ray.init(num_cpus=2)``), the keypoint and COCO-Stuff pipelines.
2. Two nodes: ``ray start --head --num-cpus=1`` + ``ray start --address=... --num-cpus=1`` on this
   machine (tests/helpers_cluster.py), the same pipelines through ``idd``'s ``--address`` path.
   Same total cores, so the ratio measures the cost of the cluster (object transfer between two
   object stores, remote scheduling), not a speed-up. Both outputs are checked to be byte-identical.
3. The estimate: the slower pipeline's measured per-core rate (from 1.) and labelled assumptions for the
   GPU stages (no GPU here) give GPU-hours and the wall time on a chosen cluster for the paper's IEIW
   set (159K pairs) and the task data (section 4.1 counts). Printed, and saved to
   bench/results/cluster.json; docs/cluster.md quotes it.

Each run happens in a child process and is timed from the first record read to the manifest written
(``runner.run``), Ray start-up excluded (reported separately).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tasks import pipeline_configs, replicate_coco  # noqa: E402 (the same two pipelines as the task benchmark)
log = logging.getLogger("bench_cluster")

CHILD = r"""
import json, sys, time, os
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
from instructdiffusion_data.config import build, PipelineConfig
from instructdiffusion_data.runner import init_ray, run
cfgs = [build(PipelineConfig, c) for c in json.loads(sys.argv[1])]
address = sys.argv[3] or None
t0 = time.perf_counter()
init_ray(cfgs[0].ray, address)
import ray
ray.data.DataContext.get_current().enable_progress_bars = False
startup = time.perf_counter() - t0
res = {"startup_s": startup, "cpus": ray.cluster_resources().get("CPU", 0), "pipelines": {}}
for c in cfgs:
    s = run(c, out=sys.argv[2], use_ray=True)
    rows = sum(v["rows"] for v in s.manifest["splits"].values())
    res["pipelines"][c.name] = {"rows": rows, "seconds": s.seconds, "records": s.records}
print(json.dumps(res))
"""


def stage_rates(configs: list[dict]) -> dict:
    """Rows/s of each pipeline's stages on ONE core, in this process, without Ray: what the renderers
    cost alone, beside the pipelines' rates; the source records are read first and not timed."""
    from instructdiffusion_data.config import PipelineConfig, build
    from instructdiffusion_data.runner import build as build_pipeline
    from instructdiffusion_data.shard_tasks import run_stages_local

    out = {}
    for c in configs:
        source, stages = build_pipeline(build(PipelineConfig, c))
        records = list(source.iter_records())
        t0 = time.perf_counter()
        rows = run_stages_local(stages, records)
        out[c["name"]] = {"stages": [st.name for st in stages], "rows": len(rows),
                          "rows_per_s_one_core": round(len(rows) / (time.perf_counter() - t0), 1)}
    return out


def run_child(configs: list[dict], out: Path, address: str = "", env: dict | None = None) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(configs), str(out), address], cwd=REPO,
                         capture_output=True, text=True, env=env or dict(os.environ, PYTHONPATH=str(REPO)),
                         timeout=1800)
    if res.returncode:
        raise SystemExit(f"pipeline run failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.suffix in (".tar", ".parquet"):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def rate(res: dict) -> tuple[int, float]:
    rows = sum(p["rows"] for p in res["pipelines"].values())
    secs = sum(p["seconds"] for p in res["pipelines"].values())
    return rows, rows / secs


# -- the estimate -------------------------------------------------------------------------------------

# Samples to produce, from the paper's text (section 3.2 and 4.1). Table 1's effective-sample figures are
# sampling weights applied to these outputs (configs/mixtures/instructdiffusion.yaml), not more rendering.
IEIW = {
    # PhraseCut removal + addition pairs: 85K samples; an addition is the swapped removal pair, so
    # ~42.5K LaMa inpaintings make them (we count 85K inpaintings: the removal rejects are regenerated).
    "phrasecut_removal_addition": 85_000,
    "replacement_generated": 51_000,  # PaintByExample pairs kept after the quality filter
    "web_crawl": 23_000,  # Photoshop requests: ingested as they are, nothing to generate
}
TASKS = {  # rows the CPU renderers write (one variant per record; more variants multiply)
    "keypoints (COCO 149K + CrowdPose 35K + MPII 22K + AIC 378K people)": 584_000,
    "semantic seg (COCO-Stuff 118K images)": 118_000,
    "referring seg (RefCOCO 142K + gRefCOCO 278K expressions; standard dataset sizes)": 420_000,
    "enhancement (GoPro 2.1K + REDS 24K + SIDD 320 + CLWD 60K pairs)": 86_400,
    "editing sets ingested (IP2P 561K + MagicBrush 8K + GIER 5K + GQA-Inpaint 131K)": 705_000,
}
# GPU stages: ASSUMED images/s per GPU (A100/H100-class, fp16, batch 8-32, 512 px); no GPU on this machine.
# Re-measure on a GPU host with bench/bench_faiss.py --gpu (PaintByExample, CLIP) and replace.
GPU_ASSUMED = {
    "lama_inpaint (big-lama, 512 px)": 20.0,
    "paint_by_example (50 DDIM steps, 512 px)": 0.8,
    "blip2_caption (OPT-2.7B, 2 captions per pair)": 12.0,
    "clip_vitl14 (aesthetics + GIQA, 2 images per pair)": 400.0,
}
REPLACEMENT_KEEP_RATE = 0.5  # ASSUMED share of PaintByExample pairs that pass the quality filter
LLM_ASSUMED_PER_S = 10.0  # ASSUMED instructions/s from an LLM endpoint (API or a vLLM server)
CPU_SLOWDOWN_REAL_IMAGES = 2.0  # ASSUMED: real images are larger and busier than the 512 px demo scenes


def estimate(cpu_rate_per_core: float, gpus: int, cpu_cores: int) -> dict:
    """GPU-hours per stage and wall hours on ``gpus`` GPUs + ``cpu_cores`` cores."""
    gpu_s: dict[str, float] = {}
    n_inpaint = IEIW["phrasecut_removal_addition"]
    n_pbe = IEIW["replacement_generated"] / REPLACEMENT_KEEP_RATE
    gpu_s["lama_inpaint (big-lama, 512 px)"] = n_inpaint / GPU_ASSUMED["lama_inpaint (big-lama, 512 px)"]
    gpu_s["paint_by_example (50 DDIM steps, 512 px)"] = n_pbe / GPU_ASSUMED["paint_by_example (50 DDIM steps, 512 px)"]
    gpu_s["blip2_caption (OPT-2.7B, 2 captions per pair)"] = 2 * n_pbe / GPU_ASSUMED["blip2_caption (OPT-2.7B, 2 captions per pair)"]
    gpu_s["clip_vitl14 (aesthetics + GIQA, 2 images per pair)"] = (
        2 * (n_inpaint + n_pbe) / GPU_ASSUMED["clip_vitl14 (aesthetics + GIQA, 2 images per pair)"])
    gpu_hours = {k: v / 3600 for k, v in gpu_s.items()}
    total_gpu_h = sum(gpu_hours.values())
    llm_h = n_pbe / LLM_ASSUMED_PER_S / 3600
    per_core = cpu_rate_per_core / CPU_SLOWDOWN_REAL_IMAGES
    task_rows = sum(TASKS.values())
    ieiw_cpu_rows = n_inpaint + n_pbe + IEIW["web_crawl"]  # masks, codecs, writer: like a renderer
    cpu_core_h = (task_rows + ieiw_cpu_rows) / per_core / 3600
    return {
        "ieiw_pairs_target": sum(IEIW.values()),
        "gpu_hours": {k: round(v, 1) for k, v in gpu_hours.items()},
        "gpu_hours_total": round(total_gpu_h, 1),
        "llm_hours_one_endpoint": round(llm_h, 1),
        "cpu_core_hours": round(cpu_core_h, 1),
        "cluster": {"gpus": gpus, "cpu_cores": cpu_cores},
        "wall_hours_ieiw": round(max(total_gpu_h / gpus, llm_h), 1),
        "wall_hours_task_data": round(task_rows / per_core / cpu_cores / 3600, 2),
        "assumptions": {"gpu_images_per_s": GPU_ASSUMED, "replacement_keep_rate": REPLACEMENT_KEEP_RATE,
                        "llm_instructions_per_s_per_endpoint": LLM_ASSUMED_PER_S,
                        "cpu_slowdown_real_images": CPU_SLOWDOWN_REAL_IMAGES,
                        "measured_cpu_rows_per_s_per_core": round(cpu_rate_per_core, 1)},
    }


def print_estimate(est: dict) -> None:
    c = est["cluster"]
    print(f"\nEstimate: regenerate IEIW ({est['ieiw_pairs_target']:,} pairs) and the task data on "
          f"{c['gpus']} GPUs + {c['cpu_cores']} CPU cores")
    for k, v in est["gpu_hours"].items():
        print(f"  GPU   {k:50s} {v:8.1f} GPU-h   (ASSUMED rate {GPU_ASSUMED[k]} img/s/GPU)")
    print(f"  GPU   {'total':50s} {est['gpu_hours_total']:8.1f} GPU-h")
    print(f"  LLM   instructions for replacement pairs               {est['llm_hours_one_endpoint']:8.1f} h "
          f"on one endpoint (ASSUMED {LLM_ASSUMED_PER_S}/s)")
    print(f"  CPU   renderers, codecs, writer (measured {est['assumptions']['measured_cpu_rows_per_s_per_core']} "
          f"rows/s/core here, /{CPU_SLOWDOWN_REAL_IMAGES} for real images)\n"
          f"        {'':50s} {est['cpu_core_hours']:8.1f} core-h")
    print(f"  wall: IEIW ~{est['wall_hours_ieiw']} h (GPU-bound), task data ~{est['wall_hours_task_data']} h "
          f"(CPU-bound, alongside)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=160, help="demo scenes to generate (default 160)")
    ap.add_argument("--variants", type=int, default=2)
    ap.add_argument("--data", default=None, help="reuse generated demo data")
    ap.add_argument("--gpus", type=int, default=8, help="GPUs of the cluster in the estimate")
    ap.add_argument("--cpu-cores", type=int, default=64, help="CPU cores of the cluster in the estimate")
    ap.add_argument("--repeats", type=int, default=3, help="runs per setting; the median is compared")
    ap.add_argument("--replicate", type=int, default=6,
                    help="repeat each annotated image this many times (new ids, same files) for a longer run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from instructdiffusion_data.demo import generate_all
    from tests.helpers_cluster import LocalCluster, cluster_env

    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        tmp = Path(tmp)
        data = Path(args.data) if args.data else tmp / "data"
        if not args.data:
            t0 = time.perf_counter()
            generate_all(data, n=args.images, seed=0, only=["coco"])
            log.info("demo data: %d scenes in %.1fs", args.images, time.perf_counter() - t0)
        if args.replicate > 1:  # more records over the same images: fixed costs (start-up, split) amortised
            replicate_coco(data, args.replicate)
        configs = pipeline_configs(data, args.variants, records_per_shard=64, object_store_memory=400_000_000)

        stages = stage_rates(configs)
        for name, v in stages.items():
            print(f"stage alone, one core, no Ray: {name:10s} ({'+'.join(v['stages'])}) "
                  f"{v['rows_per_s_one_core']:7.1f} rows/s", flush=True)
        ones = [run_child(configs, tmp / f"one{i}") for i in range(args.repeats)]
        one = sorted(ones, key=lambda r: rate(r)[1])[len(ones) // 2]  # the median run
        rows1, r1 = rate(one)
        print(f"one node, 2 CPUs (embedded Ray):   {rows1} rows  {r1:7.1f} rows/s   (Ray start {one['startup_s']:.1f}s)",
              flush=True)
        cluster = LocalCluster()
        try:
            t0 = time.perf_counter()
            cluster.start()
            up = time.perf_counter() - t0
            twos = [run_child(configs, tmp / f"two{i}", cluster.address, env=cluster_env())
                    for i in range(args.repeats)]
            two = sorted(twos, key=lambda r: rate(r)[1])[len(twos) // 2]
        finally:
            cluster.stop()
        rows2, r2 = rate(two)
        print(f"two nodes x 1 CPU (ray start x2):  {rows2} rows  {r2:7.1f} rows/s   (cluster start {up:.1f}s, "
              f"driver connect {two['startup_s']:.1f}s)")
        same = all(digest(tmp / f"one{i}" / c["name"] / "v1") == digest(tmp / f"two{j}" / c["name"] / "v1")
                   for c in configs for i in range(args.repeats) for j in range(args.repeats))
        print(f"ratio two-node / one-node (median of {args.repeats}): {r2 / r1:.2f} (goal >= 0.9; same total "
              "cores: this is the cluster's overhead); "
              f"outputs byte-identical: {same}")
        per_pipe = {name: {"one_node_rows_per_s": round(p["rows"] / p["seconds"], 1),
                           "two_node_rows_per_s": round(two["pipelines"][name]["rows"] / two["pipelines"][name]["seconds"], 1)}
                    for name, p in one["pipelines"].items()}
        for name, v in per_pipe.items():
            print(f"  {name:10s} one node {v['one_node_rows_per_s']:7.1f} rows/s   two nodes {v['two_node_rows_per_s']:7.1f} rows/s")

    # per core: the slower pipeline's one-node rate over the CPUs that Ray had, so reading, decoding,
    # encoding and writing in the Ray workers count, not the renderer alone
    est = estimate(min(v["one_node_rows_per_s"] for v in per_pipe.values()) / one["cpus"],
                   args.gpus, args.cpu_cores)
    print_estimate(est)
    results = {"images": args.images, "variants": args.variants, "stage_alone": stages, "one_node": one,
               "two_nodes": two,
               "ratio_two_over_one": round(r2 / r1, 3), "byte_identical": same, "per_pipeline": per_pipe,
               "estimate": est}
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster.json").write_text(json.dumps(results, indent=1))
    print(f"\nsaved {out / 'cluster.json'}")


if __name__ == "__main__":
    main()
