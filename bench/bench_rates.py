"""Per-core rates of the paper-scale inputs the cluster projection needs (docs/cluster.md), measured
in one process without Ray: InstructPix2Pix ingestion (pairs/s), SA-1B region reading with the region
rules (images/s and regions/s), and the COCO keypoint split (MB/s of annotation file).

    .venv/bin/python bench/bench_rates.py              # writes bench/results/rates.json
    .venv/bin/python bench/bench_rates.py --quick

Inputs are generated: InstructPix2Pix prompt folders with 512x512 JPEG pairs (the released size), an
SA-1B-like folder of 320x240 images with 100 RLE regions each (real SA-1B json files hold ~100 masks
at ~1500x2250; RLE decoding cost grows with the image, so the projection scales regions/s by area),
and a COCO person-keypoints file of ~0.9 KB per annotation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import make_coco, make_sa1b  # noqa: E402


def make_ip2p(root: Path, folders: int, seeds: int = 2) -> Path:
    from instructdiffusion_data.imageio import encode_jpeg

    base = root / "clip-filtered-dataset"
    rng = np.random.default_rng(0)
    seeds_list = []
    for f in range(folders):
        d = base / f"{f:07d}"
        d.mkdir(parents=True)
        (d / "prompt.json").write_text(json.dumps({"caption": "a photo of a cat", "edit": "make it a dog",
                                                   "output": "a photo of a dog"}))
        lines, names = [], []
        for s in range(seeds):
            img = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
            img[::2] = 128
            (d / f"{s}_0.jpg").write_bytes(encode_jpeg(img, 90))
            (d / f"{s}_1.jpg").write_bytes(encode_jpeg(255 - img, 90))
            lines.append(json.dumps({"seed": s, "p2p_threshold": 0.5, "cfg_scale": 7.5, "clip_sim_0": 0.3,
                                     "clip_sim_1": 0.3, "clip_sim_dir": 0.3, "clip_sim_image": 0.9}))
            names.append(s)
        (d / "metadata.jsonl").write_text("\n".join(lines) + "\n")
        seeds_list.append([f"{f:07d}", names])
    (base / "seeds.json").write_text(json.dumps(seeds_list))
    return base


def rate_pipeline(cfg_dict: dict, out: Path) -> tuple[int, float]:
    from instructdiffusion_data.config import PipelineConfig, build
    from instructdiffusion_data.runner import run

    t0 = time.perf_counter()
    s = run(build(PipelineConfig, cfg_dict), out=str(out), use_ray=False)
    return sum(v["rows"] for v in s.manifest["splits"].values()), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    q = args.quick
    res: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_rates_") as tmp:
        tmp = Path(tmp)
        ip2p = make_ip2p(tmp / "ip2p", 40 if q else 200)
        ip = yaml_cfg(REPO / "configs/pipelines/edit_instructpix2pix.yaml")
        ip["source"]["root"] = str(ip2p)
        rows, secs = rate_pipeline(ip, tmp / "o1")
        res["ip2p_pairs_per_s_core"] = round(rows / secs, 1)
        sa = make_sa1b(tmp / "sa", 50 if q else 300)
        from instructdiffusion_data.stage import make_source

        src = make_source({"type": "sa1b", "root": str(sa)}, 0)
        t0 = time.perf_counter()
        n = sum(1 for _ in src.iter_records())
        secs = time.perf_counter() - t0
        imgs = 50 if q else 300
        res["sa1b_images_per_s_core_320x240"] = round(imgs / secs, 1)
        res["sa1b_regions_per_s_core_320x240"] = round(n / secs, 1)
        ann, images = make_coco(tmp / "coco", 20000 if q else 100000)
        kp = make_source({"type": "coco_keypoints", "annotations": str(ann), "images": str(images)}, 0)
        t0 = time.perf_counter()
        n = sum(1 for _ in kp.iter_records())
        secs = time.perf_counter() - t0
        res["coco_keypoint_split_mb_per_s"] = round(ann.stat().st_size / 1e6 / secs, 1)
        res["coco_keypoint_records_per_s"] = round(n / secs, 1)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "rates.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


def yaml_cfg(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


if __name__ == "__main__":
    main()
