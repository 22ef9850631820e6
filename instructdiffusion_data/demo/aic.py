"""Demo AI Challenger keypoints: ``aic/keypoint_train_images_20170902/<image_id>.jpg`` with the original
``aic/keypoint_train_annotations_20170909.json`` (humanN: 42 ints, visibility 1/2/3) and the same
people converted to COCO format in ``aic/annotations/aic_train.json`` (mmpose's conversion)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from . import _figures as fig

JOINTS = ["right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist", "right_hip",
          "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top", "neck"]
AIC_TO_COCO = {1: 2, 2: 1, 3: 0}


def generate(out: Path, n: int, seed: int) -> dict:
    root = Path(out) / "aic"
    rng = np.random.default_rng([seed, 103])
    original, images, anns = [], [], []
    aid = 1
    for i in range(n):
        image_id = hashlib.sha1(f"aic-demo-{seed}-{i}".encode()).hexdigest()
        h, w = 240, 320
        img, people = fig.people_scene(rng, h, w, int(rng.integers(1, 3)))
        fig.write_jpg(root / "keypoint_train_images_20170902" / f"{image_id}.jpg", img)
        kpa, hba = {}, {}
        images.append({"file_name": f"{image_id}.jpg", "id": i + 1, "height": h, "width": w})
        for k, p in enumerate(people, start=1):
            vals, coco = [], []
            for j in JOINTS:
                x, y = p["joints"][j]
                r = rng.random()
                v = 3 if r < 0.08 else 2 if r < 0.25 else 1
                vals += [0, 0, 3] if v == 3 else [int(round(x)), int(round(y)), v]
                cv = AIC_TO_COCO[v]
                coco += [int(round(x)), int(round(y)), cv] if cv else [0, 0, 0]
            box = [int(round(c)) for c in p["box"]]
            kpa[f"human{k}"], hba[f"human{k}"] = vals, box
            anns.append({"image_id": i + 1, "id": aid, "category_id": 1, "iscrowd": 0, "keypoints": coco,
                         "num_keypoints": sum(1 for v in coco[2::3] if v), "area": float((box[2] - box[0]) * (box[3] - box[1])),
                         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
            aid += 1
        original.append({"url": f"http://www.sogou.com/demo/{image_id}.jpg", "image_id": image_id,
                         "keypoint_annotations": kpa, "human_annotations": hba})
    root.mkdir(parents=True, exist_ok=True)
    (root / "keypoint_train_annotations_20170909.json").write_text(json.dumps(original))
    coco_doc = {"images": images, "annotations": anns,
                "categories": [{"supercategory": "person", "id": 1, "name": "person", "keypoints": JOINTS}]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "aic_train.json").write_text(json.dumps(coco_doc))
    return {"images": n, "people": len(anns)}
