"""Demo CrowdPose: ``crowdpose/images/*.jpg`` and ``crowdpose/json/crowdpose_train.json`` (COCO format,
14 joints ending in head and neck, ``crowdIndex`` per image, ``num_keypoints`` over the first 12)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import _figures as fig

JOINTS = ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
          "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck"]
_SRC = {"head": "head_top"}


def generate(out: Path, n: int, seed: int) -> dict:
    root = Path(out) / "crowdpose"
    rng = np.random.default_rng([seed, 102])
    images, anns = [], []
    aid = 1
    for i in range(n):
        iid = 100000 + i
        h, w = 240, 360
        k = int(rng.integers(2, 4))
        img, people = fig.people_scene(rng, h, w, k)
        name = f"{iid}.jpg"
        fig.write_jpg(root / "images" / name, img)
        images.append({"file_name": name, "id": iid, "height": h, "width": w, "crowdIndex": round(float(rng.uniform(0, 1)), 2)})
        for p in people:
            kps = []
            for j in JOINTS:
                x, y = p["joints"][_SRC.get(j, j)]
                r = rng.random()
                # CrowdPose labels head and neck with flag 1
                v = 0 if r < 0.07 else (1 if j in ("head", "neck") or r < 0.2 else 2)
                kps += [round(x, 1), round(y, 1), v] if v else [0, 0, 0]
            x1, y1, x2, y2 = p["box"]
            anns.append({"num_keypoints": sum(1 for v in kps[2:36:3] if v), "iscrowd": 0, "keypoints": kps,
                         "image_id": iid, "bbox": [round(x1, 1), round(y1, 1), round(x2 - x1, 1), round(y2 - y1, 1)],
                         "category_id": 1, "id": aid})
            aid += 1
    data = {"images": images, "annotations": anns,
            "categories": [{"supercategory": "person", "id": 1, "name": "person", "keypoints": JOINTS,
                            "skeleton": [[13, 14], [14, 1], [14, 2]]}]}
    (root / "json").mkdir(parents=True, exist_ok=True)
    (root / "json" / "crowdpose_train.json").write_text(json.dumps(data))
    return {"images": n, "people": len(anns)}
