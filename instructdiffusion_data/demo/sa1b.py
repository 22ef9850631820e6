"""SA-1B-format demo data: ``sa1b/sa_000000/sa_<id>.jpg`` + ``sa_<id>.json`` (as extracted from the
release tar ``sa_000000.tar``), masks as COCO compressed RLE written with pycocotools.

Per image the annotations are the objects of a procedural scene, a sub-part of some objects (a
small mask, like SAM's part-level masks), and one large background segment, with predicted_iou
and stability_score drawn so that region selection has real work to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from ..imageio import encode_jpeg
from ..replace.regions import encode_rle, mask_bbox
from ._objects import make_scene

NAME = "sa1b"


def _ann(ann_id: int, m: np.ndarray, rng: np.random.Generator, h: int, w: int) -> dict:
    ys, xs = np.nonzero(m)
    k = int(rng.integers(0, len(xs)))
    return {
        "id": ann_id,
        "segmentation": encode_rle(m),
        "area": int(m.sum()),
        "bbox": [float(v) for v in mask_bbox(m)],
        "predicted_iou": round(float(rng.uniform(0.8, 1.02)), 6),
        "point_coords": [[float(xs[k]), float(ys[k])]],
        "stability_score": round(float(rng.uniform(0.85, 1.0)), 6),
        "crop_box": [0.0, 0.0, float(w), float(h)],
    }


def generate(out: Path, n: int, seed: int) -> dict:
    folder = Path(out) / NAME / "sa_000000"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1001])
    n_ann = 0
    for i in range(n):
        image_id = 1 + 3 * i
        h, w = (240, 320) if i % 3 else (256, 256)
        img, objects = make_scene(rng, h, w)
        anns = []
        occupied = np.zeros((h, w), np.uint8)
        for o in objects:
            anns.append(_ann(1000 * image_id + len(anns), o.mask, rng, h, w))
            occupied |= o.mask
            if rng.random() < 0.4:  # a part-level mask: the top half of the object
                part = o.mask.copy()
                _x, y, _bw, bh = o.bbox
                part[y + bh // 2:, :] = 0
                if part.any():
                    anns.append(_ann(1000 * image_id + len(anns), part, rng, h, w))
        background = (1 - cv2.dilate(occupied, np.ones((5, 5), np.uint8))).astype(np.uint8)
        anns.append(_ann(1000 * image_id + len(anns), background, rng, h, w))
        name = f"sa_{image_id}"
        (folder / f"{name}.jpg").write_bytes(encode_jpeg(img, quality=92))
        doc = {"image": {"image_id": image_id, "width": w, "height": h, "file_name": f"{name}.jpg"},
               "annotations": anns}
        (folder / f"{name}.json").write_text(json.dumps(doc))
        n_ann += len(anns)
    return {"root": str(Path(out) / NAME), "images": n, "annotations": n_ann}
