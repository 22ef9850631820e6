"""Benchmark: keypoint + semantic segmentation pipelines on local Ray, steady-state throughput against
the JPEG codec limit of this machine measured in the same run, and where the time goes.

    .venv/bin/python bench/bench_tasks.py                  # ~20,000 samples at 512 px
    .venv/bin/python bench/bench_tasks.py --samples 5000   # quicker

Codec limit: per sample, decode the source JPEG and encode a 512 px target (simplejpeg, quality 95),
in as many processes as Ray gets CPUs. The pipeline does that and more (resize, drawing, the
verification, mask PNGs, tar and parquet writing), so the ratio says how close to the physical limit
of a CPU stage it gets. Steady state: shards are committed by workers; the rate is the rows of every
shard but the first ones over the time from the first commit to the last. Apart: Ray start-up, the
first shards' warm-up, and the split of each annotation file into per-shard record files (one streamed
pass, done and timed before the runs so that it does not share the cores with the rendering). The generated scenes are
replicated in the annotation files (new image and annotation ids, same image files) to reach the
sample count without generating thousands of images; every record is still decoded and drawn.
Then one shard of each pipeline runs in-process under cProfile, and the time is split into decode,
encode, resize, masks, draw, verify, write, read and row handling (library calls counted under the
project function that made them).
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


def replicate_coco(data: Path, times: int) -> None:
    """Repeat every image (new ids, same file) and its annotations ``times`` times in the keypoint,
    instances and stuff annotation files."""
    for rel in ("coco/annotations/person_keypoints_train2017.json", "coco/annotations/instances_train2017.json",
                "cocostuff/annotations/stuff_train2017.json"):
        f = data / rel
        doc = json.loads(f.read_text())
        imgs, anns = doc["images"], doc["annotations"]
        id_step = max(i["id"] for i in imgs) + 1
        ann_step = max([a["id"] for a in anns] or [0]) + 1
        doc["images"] = [dict(i, id=i["id"] + k * id_step) for k in range(times) for i in imgs]
        doc["annotations"] = [dict(a, id=a["id"] + k * ann_step, image_id=a["image_id"] + k * id_step)
                              for k in range(times) for a in anns]
        f.write_text(json.dumps(doc))


CHILD = r"""
import json, sys, time, os
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
t_start = time.perf_counter()
from instructdiffusion_data.config import build, PipelineConfig
from instructdiffusion_data.runner import _split_task, build as build_pipeline, init_ray, output_root, prepare_output, run
cfgs = [build(PipelineConfig, c) for c in json.loads(sys.argv[1])]
t0 = time.perf_counter()
init_ray(cfgs[0].ray)
import ray
ray.data.DataContext.get_current().enable_progress_bars = False
ray_s = time.perf_counter() - t0
# the split of each annotation file (one streamed pass) is done and timed first, so that it does not
# share the cores with the rendering measured below; the run then finds the record files and starts
splits = []
for c in cfgs:
    root = output_root(c, sys.argv[2])
    prepare_output(c, root, False)
    splits.append(_split_task(build_pipeline(c)[0], str(root), c.writer.records_per_shard))
rows, t0 = 0, time.perf_counter()
for c in cfgs:
    s = run(c, out=sys.argv[2], use_ray=True)
    rows += sum(v["rows"] for v in s.manifest["splits"].values())
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0, "ray_start_s": ray_s, "splits": splits}))
"""


def steady_rate(out: Path, skip: int = 2) -> tuple[float, int, float]:
    """(rows/s, rows, seconds) over the shards committed after the first ``skip`` of each output, from
    the commit times of their stats files."""
    total_rows, span = 0, 0.0
    for out_dir in sorted(p for p in out.glob("*/*") if (p / "train").is_dir()):
        shards = []
        for st in (out_dir / "train").glob("*.stats.json"):
            rej = out_dir / "rejected" / st.name
            rows = json.loads(st.read_text())["rows"] + json.loads(rej.read_text())["rows"]
            shards.append((max(st.stat().st_mtime, rej.stat().st_mtime), rows))
        shards.sort()
        if len(shards) <= skip:
            continue
        total_rows += sum(r for _, r in shards[skip:])
        span += shards[-1][0] - shards[skip - 1][0]
    return total_rows / max(span, 1e-9), total_rows, span


# Where a project function's own time goes. Functions not named here inherit from their callers (see
# attribute_phases): library calls (cv2, numpy, hashlib, json) and shared helpers count under the
# project function that made them.
PHASE_RULES: list[tuple[str, tuple[str, ...], str]] = [
    # (file ends with, function names (empty = any), phase)
    ("imageio.py", ("decode", "decode_unchanged", "decode_gray", "read_bytes", "_check", "check_pixels"), "decode"),
    ("imageio.py", ("encode", "encode_jpeg", "encode_png"), "encode"),
    ("imageio.py", ("resize", "resize_mask"), "resize"),
    ("masks.py", ("mask_png", "empty_mask_png"), "encode"),
    ("masks.py", ("resize_bool",), "resize"),
    ("masks.py", ("recover_mask", "drawn_scores", "mask_iou", "_max_channel", "_changed"), "verify"),
    ("masks.py", ("polygons_to_rle", "polygons_to_mask", "rle_string_total", "checked_rle", "rle_to_mask",
                  "segment_to_rle", "segment_labelmap", "segment_to_mask", "rle_decode", "rle_union",
                  "value_counts", "read_labelmap"), "masks"),
    ("masks.py", ("overlay", "color_contrast"), "draw"),
    ("render_semseg.py", ("_categories", "_segment_categories", "_labelmap_categories", "mask", "area"), "masks"),
    ("render_refseg.py", (), "draw"),
    ("render_semseg.py", (), "draw"),
    ("render_keypoints.py", (), "draw"),
    ("keypoints.py", ("recover_centres",), "verify"),
    ("keypoints.py", (), "draw"),
    ("common.py", ("verify_written",), "verify"),
    ("common.py", ("mask_row", "pick_mask_color", "process", "object_phrase", "encode_target"), "draw"),
    ("writer.py", (), "write"),
    ("tarblocks.py", (), "write"),
    ("shard_tasks.py", ("read_rows",), "read"),
    ("shard_tasks.py", ("write",), "write"),
    ("schema.py", ("loads_meta", "_long_number", "table_to_rows"), "read"),
    ("pycocotools/mask.py", (), "masks"),
    ("pyarrow/parquet/core.py", ("write_table",), "write"),
    ("pyarrow/parquet/core.py", ("read", "read_table"), "read"),
]
PHASES = ("decode", "encode", "resize", "masks", "draw", "verify", "write", "read", "rows")


def _own_phase(file: str, func: str) -> str | None:
    """The phase of a function's own code, or None to inherit its callers'."""
    for suffix, funcs, phase in PHASE_RULES:
        if file.endswith(suffix) and (not funcs or func in funcs):
            return phase
    if "instructdiffusion_data" in file and not file.endswith(("storage.py", "contracts.py", "roots.py")):
        return "rows"  # the engine's own row handling: stage calls, meta, keys, records
    return None


def attribute_phases(stats) -> dict[str, float]:
    """Seconds per phase from a ``pstats.Stats``: each function's self time goes to its own phase, or,
    for library calls and shared helpers, to its callers' phases in proportion to the time each caller
    spent in it (recursively). Time no project function reached is "other"."""
    raw = stats.stats  # {func: (cc, nc, tt, ct, callers)}, callers: {caller: (cc, nc, tt, ct)}
    memo: dict = {}

    def shares(func, seen: frozenset) -> dict[str, float]:
        if func in memo:
            return memo[func]
        file, _, name = func
        own = _own_phase(file, name)
        if own:
            out = {own: 1.0}
        else:
            callers = {c: v for c, v in raw[func][4].items() if c not in seen and c in raw}
            weight = sum(v[3] or v[1] for v in callers.values())
            out: dict[str, float] = {}
            for c, v in callers.items():
                for ph, f in shares(c, seen | {func}).items():
                    out[ph] = out.get(ph, 0.0) + f * (v[3] or v[1]) / weight
            out = out or {"other": 1.0}
        if not seen:
            memo[func] = out
        return out

    phases = dict.fromkeys((*PHASES, "other"), 0.0)
    for func, (_, _, tt, _, _) in raw.items():
        for ph, f in shares(func, frozenset()).items():
            phases[ph] += tt * f
    return phases


def profile_one_shard(configs: list[dict], out: Path) -> dict:
    """Run one shard of each pipeline in-process (no Ray) under cProfile; seconds per phase
    (:func:`attribute_phases`) and their total."""
    import cProfile
    import pstats
    import shutil

    from instructdiffusion_data.config import PipelineConfig, build
    from instructdiffusion_data.runner import run

    prof = cProfile.Profile()
    for c in configs:
        c = dict(c, source=dict(c["source"], limit=c["writer"]["records_per_shard"]), name=c["name"] + "_prof")
        cfg = build(PipelineConfig, c)
        run(cfg, out=str(out), use_ray=False)  # splits the annotation file (not profiled) and writes the shard
        root = out / cfg.name / cfg.version
        for split in ("train", "rejected"):
            shutil.rmtree(root / split)
        prof.enable()
        run(cfg, out=str(out), use_ray=False)  # the same shard again from its record file: read, stages, write
        prof.disable()
    phases = attribute_phases(pstats.Stats(prof))
    phases["total"] = sum(phases.values())
    return phases


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
    ap.add_argument("--images", type=int, default=240, help="demo scenes to generate")
    ap.add_argument("--samples", type=int, default=20000, help="approximate samples to produce")
    ap.add_argument("--variants", type=int, default=2, help="variants per record")
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
        # samples per image and variant, measured on the generated data, sets the replication
        probe = run_measured(pipeline_configs(data, 1), str(Path(tmp) / "probe"))
        times = max(1, round(args.samples / max(1, probe["rows"] * args.variants)))
        if times > 1:
            replicate_coco(data, times)
        # the codec limit before and after the run: its mean is the baseline, the two apart show the load
        codec_before = codec_limit(files, 4000, procs=2)
        res = run_measured(pipeline_configs(data, args.variants), str(Path(tmp) / "run"))
        rate, steady_rows, span = steady_rate(Path(tmp) / "run")
        codec_after = codec_limit(files, 4000, procs=2)
        codec = (codec_before + codec_after) / 2
        phases = profile_one_shard(pipeline_configs(data, args.variants), Path(tmp) / "prof")
    print(f"machine: {os.cpu_count()} CPUs; Ray num_cpus=2; 512 px; JPEG q95 (simplejpeg)")
    print(f"pipelines (keypoints + semseg): {res['rows']} samples in {res['seconds']:.1f}s end to end "
          f"(apart: Ray start-up {res['ray_start_s']:.1f}s; the annotation files' splits, done before: "
          + ", ".join(f"{s.get('seconds', 0):.1f}s" for s in res["splits"]) + ")")
    print(f"steady state: {steady_rows} samples in {span:.1f}s = {rate:.1f} samples/s")
    print(f"JPEG codec limit (decode src + encode tgt, 2 procs): {codec:.1f} samples/s "
          f"(before the run {codec_before:.1f}, after {codec_after:.1f})")
    print(f"ratio steady state / codec limit: {rate / codec:.2f} (goal >= 0.6)")
    print(f"peak memory (PSS of the process tree): {res['peak_pss_mb']:.0f} MB")
    tot = phases.pop("total")
    print("where the time goes (one shard per pipeline in-process, cProfile; library calls counted under the "
          "project function that made them): " + ", ".join(
              f"{k} {100 * v / tot:.0f}%" for k, v in sorted(phases.items(), key=lambda kv: -kv[1])))
    print("  decode = source images; encode = targets, re-encoded sources, mask PNGs; resize = sources and "
          "masks to 512 px; masks = segments to region codes and masks; draw = overlays, colour choice; verify = "
          "recovering what was drawn; write = tar, parquet, hashes; read = record files; rows = the engine's "
          "row handling")


if __name__ == "__main__":
    main()
