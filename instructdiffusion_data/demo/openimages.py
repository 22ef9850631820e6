"""OpenImages-V6-format demo data (segmentation subset, ``validation`` split)::

    openimages/validation/<ImageID>.jpg
    openimages/validation-annotations-object-segmentation.csv
    openimages/validation-masks-<0-f>.zip          mask PNGs at their own (smaller) resolution
    openimages/class-descriptions-boxable.csv      V6 form, no header

The last object of the last image points to a mask PNG that is not in its zip (a broken row, as
happens in the wild), so the reader's rejected path is exercised by the demo.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from pathlib import Path

import cv2
import numpy as np

from ..imageio import encode_jpeg, encode_png
from ._objects import CLASSES, make_scene

NAME = "openimages"
SPLIT = "validation"
HEADER = ["MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax",
          "PredictedIoU", "Clicks"]
ZIP_TIME = (2020, 2, 26, 0, 0, 0)


def _image_id(seed: int, i: int) -> str:
    return hashlib.sha1(f"oi-demo-{seed}-{i}".encode()).hexdigest()[:16]


def generate(out: Path, n: int, seed: int) -> dict:
    root = Path(out) / NAME
    (root / SPLIT).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2002])
    members: dict[str, list[tuple[str, bytes]]] = {h: [] for h in "0123456789abcdef"}
    rows = []
    for i in range(n):
        image_id = _image_id(seed, i)
        h, w = (240, 320) if i % 2 else (256, 320)
        img, objects = make_scene(rng, h, w)
        (root / SPLIT / f"{image_id}.jpg").write_bytes(encode_jpeg(img, quality=92))
        # masks are published at a lower resolution than the image
        mh, mw = int(h * 0.75), int(w * 0.75)
        for k, o in enumerate(objects):
            label_name = CLASSES[o.cls][1]
            box_id = hashlib.sha1(f"{image_id}-{k}".encode()).hexdigest()[:8]
            member = f"{image_id}_{label_name.replace('/', '')}_{box_id}.png"
            small = cv2.resize(o.mask * 255, (mw, mh), interpolation=cv2.INTER_NEAREST)
            broken = i == n - 1 and k == len(objects) - 1
            if not broken:
                members[image_id[0]].append((member, encode_png(small)))
            x, y, bw, bh = o.bbox
            ys, xs = np.nonzero(o.mask)
            clicks = ";".join(f"{xs[j] / w:.5f} {ys[j] / h:.5f} 1" for j in rng.integers(0, len(xs), 3))
            rows.append([member, image_id, label_name, box_id, f"{x / w:.6f}", f"{(x + bw) / w:.6f}",
                         f"{y / h:.6f}", f"{(y + bh) / h:.6f}", f"{rng.uniform(0.6, 1.0):.5f}", clicks])
    with open(root / f"{SPLIT}-annotations-object-segmentation.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(HEADER)
        wr.writerows(rows)
    for hexd, items in members.items():
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
            for member, data in sorted(items):
                z.writestr(zipfile.ZipInfo(member, date_time=ZIP_TIME), data)
        (root / f"{SPLIT}-masks-{hexd}.zip").write_bytes(buf.getvalue())
    with open(root / "class-descriptions-boxable.csv", "w", newline="") as f:
        csv.writer(f).writerows([[mid, name] for name, mid in CLASSES])
    return {"root": str(root), "images": n, "segmentations": len(rows)}
