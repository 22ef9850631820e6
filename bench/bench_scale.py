"""Benchmark: the driver's memory and time to the first committed shard do not grow with the input.

    .venv/bin/python bench/bench_scale.py                 # COCO keypoints at 20k and 200k people
    .venv/bin/python bench/bench_scale.py --mode sa1b     # SA-1B-like folder at 200 and 2,000 images
    .venv/bin/python bench/bench_scale.py --small 2000 --factor 10 --mode coco   # quicker

Each size runs ``idd run`` (embedded Ray) as a subprocess on a generated input, samples the RSS of
that process alone (the driver: Ray's own daemons and workers are other processes) every 100 ms,
and stops the run once the first train shard is committed plus a few seconds of steady state. It
prints, per size: driver peak RSS, seconds to the first committed train shard, and the split of the
big annotation file (seconds, MB/s, peak RSS of the splitting worker) apart; then the ratios
large/small, which the scale rule wants <= 1.2 (memory) and <= 1.5 (time to first shard).

COCO inputs are realistic in size (~0.9 KB per annotation: 17 keypoints, a polygon of ~40 points,
bbox, area, ids), images drawn from a small pool of real JPEG files. SA-1B inputs are one json +
jpg per image with ~100 RLE regions each, most of them rejected by the region rules.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

JOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
          "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
          "right_knee", "left_ankle", "right_ankle"]


def _pool_images(folder: Path, n: int = 24, w: int = 320, h: int = 240) -> list[str]:
    from instructdiffusion_data.imageio import encode_jpeg

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        img = np.full((h, w, 3), rng.integers(40, 200, 3), np.uint8)
        img[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = rng.integers(0, 255, 3)
        name = f"{i:012d}.jpg"
        (folder / name).write_bytes(encode_jpeg(img, 90))
        names.append(name)
    return names


def make_coco(root: Path, people: int, per_image: int = 3) -> tuple[Path, Path]:
    """A COCO person_keypoints file of ``people`` annotations (~0.9 KB each), written streamed."""
    images_dir = root / "images"
    pool = _pool_images(images_dir)
    ann = root / f"person_keypoints_{people}.json"
    rng = np.random.default_rng(1)
    n_images = (people + per_image - 1) // per_image
    with open(ann, "w") as fh:
        fh.write('{"info": {"description": "bench"}, "licenses": [], "images": [')
        for i in range(n_images):
            fh.write(("," if i else "") + json.dumps({"id": i + 1, "file_name": pool[i % len(pool)], "width": 320,
                                                      "height": 240, "license": 1, "coco_url": "", "flickr_url": "",
                                                      "date_captured": "2013-11-14 16:28:13"}))
        fh.write('], "annotations": [')
        for a in range(people):
            x0, y0 = float(rng.uniform(20, 200)), float(rng.uniform(20, 120))
            kps = []
            for _ in JOINTS:
                kps += [round(x0 + float(rng.uniform(0, 90)), 2), round(y0 + float(rng.uniform(0, 100)), 2), 2]
            poly = [round(float(v), 2) for v in rng.uniform(20, 230, 80)]
            fh.write(("," if a else "") + json.dumps({
                "segmentation": [poly], "num_keypoints": 17, "area": 5123.5, "iscrowd": 0, "keypoints": kps,
                "image_id": a // per_image + 1, "bbox": [round(x0, 2), round(y0, 2), 90.0, 100.0], "category_id": 1,
                "id": 100000 + a}))
        fh.write('], "categories": [{"supercategory": "person", "id": 1, "name": "person", "keypoints": '
                 + json.dumps(JOINTS) + ', "skeleton": [[16, 14], [14, 12]]}]}')
    return ann, images_dir


def make_sa1b(root: Path, images: int, regions: int = 100) -> Path:
    """A folder of ``sa_N.jpg`` + ``sa_N.json`` with ``regions`` RLE regions each (most too small)."""
    from pycocotools import mask as mask_util

    from instructdiffusion_data.imageio import encode_jpeg

    d = root / "sa1b"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    w, h = 320, 240
    jpg = encode_jpeg(np.full((h, w, 3), 128, np.uint8), 90)
    rles = []
    for k in range(16):  # a pool of masks of varied size: most small (rejected), some large enough
        m = np.zeros((h, w), np.uint8, order="F")
        s = 4 + (k * 9 if k % 5 == 0 else k)
        m[20 + k: 20 + k + s, 30 + k: 30 + k + s] = 1
        r = mask_util.encode(m)
        rles.append(({"size": [h, w], "counts": r["counts"].decode()}, int(m.sum()), [30 + k, 20 + k, s, s]))
    for i in range(1, images + 1):
        anns = []
        for j in range(regions):
            rle, area, bbox = rles[int(rng.integers(0, len(rles)))]
            anns.append({"id": j, "segmentation": rle, "area": area, "bbox": bbox, "predicted_iou": 0.9,
                         "stability_score": 0.95, "point_coords": [[bbox[0] + 1, bbox[1] + 1]], "crop_box": [0, 0, w, h]})
        (d / f"sa_{i}.json").write_text(json.dumps({"image": {"image_id": i, "width": w, "height": h,
                                                              "file_name": f"sa_{i}.jpg"}, "annotations": anns}))
        (d / f"sa_{i}.jpg").write_bytes(jpg)
    return d


def watch(cmd: list[str], out_root: Path, settle: float, timeout: float, env: dict) -> dict:
    """Run ``cmd``, sample its own RSS, stop after the first train shard + ``settle`` seconds."""
    t0 = time.perf_counter()
    log_path = out_root.parent / f"{out_root.name}.log"
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    ps = psutil.Process(proc.pid)
    peak, first = 0, None
    try:
        while proc.poll() is None:
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.Error:
                break
            now = time.perf_counter() - t0
            if first is None and any(out_root.glob("*/*/train/*.stats.json")):
                first = now
            if (first is not None and now - first > settle) or now > timeout:
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            try:  # the embedded Ray (GCS, raylet, workers) runs in child processes of other sessions
                family = ps.children(recursive=True)
            except psutil.Error:
                family = []
            os.killpg(proc.pid, 9)
            for c in family:
                try:
                    c.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(family, timeout=30)
        proc.wait()
    text = log_path.read_text()
    split = {}
    m = re.search(r"split: (\d+) records into (\d+) shards, ([\d.]+) MB in ([\d.]+)s \(([\d.]+) MB/s, worker peak "
                  r"RSS (\d+) MB, first record file after ([\d.]+|None)s\)", text)
    if m:
        split = {"records": int(m[1]), "shards": int(m[2]), "mb": float(m[3]), "seconds": float(m[4]),
                 "mb_per_s": float(m[5]), "worker_peak_mb": int(m[6]),
                 "first_file_s": float(m[7]) if m[7] != "None" else None}
    m = re.search(r"first wave: \d+ shards after ([\d.]+)s of splitting", text)
    if m and not split.get("first_file_s"):  # the run was stopped before the split's summary line
        split["first_file_s"] = float(m[1])
    if first is None:
        sys.stderr.write(text[-3000:])
    return {"driver_peak_mb": peak / 2**20, "first_shard_s": first, "split": split}


def run_size(mode: str, size: int, tmp: Path, settle: float, timeout: float) -> dict:
    work = tmp / f"{mode}_{size}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if mode == "coco":
        ann, images = make_coco(work, size)
        cfg, sets = REPO / "configs/pipelines/keypoints_coco.yaml", [
            f"source.annotations={ann}", f"source.images={images}", "writer.records_per_shard=256"]
        input_mb = ann.stat().st_size / 1e6
    else:
        folder = make_sa1b(work, size)
        cfg, sets = REPO / "configs/pipelines/ieiw_replacement_gallery.yaml", []
        cfg = _sa1b_config(work, folder)
        input_mb = sum(p.stat().st_size for p in folder.glob("*.json")) / 1e6
    gen_s = time.perf_counter() - t0
    out = work / "out"
    cmd = [str(REPO / ".venv/bin/idd"), "run", str(cfg), "--out", str(out), "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    res = watch(cmd, out, settle, timeout, env)
    res.update(size=size, input_mb=round(input_mb, 1), generate_s=round(gen_s, 1))
    return res


def _sa1b_config(work: Path, folder: Path) -> Path:
    """A pipeline that reads SA-1B regions and renders a region mask for the kept ones (CPU only)."""
    cfg = work / "sa1b_regions.yaml"
    cfg.write_text(f"""name: sa1b_regions
version: v1
source:
  type: sa1b
  root: {folder}
stages: []
writer:
  records_per_shard: 20
""")
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["coco", "sa1b"], default="coco")
    ap.add_argument("--small", type=int, default=None, help="people (coco) or images (sa1b) of the small run")
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds of sampling after the first shard")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    small = args.small or (20000 if args.mode == "coco" else 200)
    with tempfile.TemporaryDirectory(prefix="bench_scale_", ignore_cleanup_errors=True) as tmp:
        rows = [run_size(args.mode, n, Path(tmp), args.settle, args.timeout) for n in (small, small * args.factor)]
    unit = "people" if args.mode == "coco" else "images"
    print(f"\nbench_scale ({args.mode}): driver = the idd process alone; split = the worker streaming the annotation file")
    print(f"{unit:>9} {'input MB':>9} {'driver peak MB':>15} {'first shard s':>14} {'split s':>8} {'split MB/s':>10} "
          f"{'split worker MB':>16} {'1st record file s':>18}")
    for r in rows:
        sp = r["split"]
        print(f"{r['size']:>9} {r['input_mb']:>9.1f} {r['driver_peak_mb']:>15.0f} {r['first_shard_s'] or float('nan'):>14.1f} "
              f"{sp.get('seconds', float('nan')):>8.1f} {sp.get('mb_per_s', float('nan')):>10.1f} "
              f"{sp.get('worker_peak_mb', float('nan')):>16.0f} {sp.get('first_file_s') or float('nan'):>18.1f}")
    a, b = rows
    mem_ratio = b["driver_peak_mb"] / a["driver_peak_mb"]
    t_ratio = (b["first_shard_s"] or float("inf")) / (a["first_shard_s"] or float("nan"))

    def after_pass(r: dict) -> float:  # the reader's one full pass before its first record, reported apart
        return (r["first_shard_s"] or float("inf")) - (r["split"].get("first_file_s") or 0.0)

    t2_ratio = after_pass(b) / after_pass(a)
    print(f"ratio {args.factor}x/1x: driver peak RSS {mem_ratio:.2f} (goal <= 1.2); time to first shard "
          f"{t_ratio:.2f} end to end, {t2_ratio:.2f} without the reader's full pass before its first record "
          f"(goal <= 1.5; passes: {a['split'].get('first_file_s')}s and {b['split'].get('first_file_s')}s)")
    print(json.dumps({"mode": args.mode, "rows": rows, "mem_ratio": round(mem_ratio, 3), "time_ratio": round(t_ratio, 3),
                      "time_ratio_after_pass": round(t2_ratio, 3)}))


if __name__ == "__main__":
    main()
