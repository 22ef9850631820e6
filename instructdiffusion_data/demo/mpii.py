"""Demo MPII: ``mpii/images/*.jpg`` and ``mpii/annotations/mpii_train.json`` in the HRNet/mmpose json
conversion (1-based coordinates, ``center``/``scale``, 16 ``joints`` and ``joints_vis``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import _figures as fig

ORDER = ["right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis", "thorax",
         "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
         "left_wrist"]


def generate(out: Path, n: int, seed: int) -> dict:
    root = Path(out) / "mpii"
    rng = np.random.default_rng([seed, 101])
    entries = []
    for i in range(n):
        name = f"{i + 1:09d}.jpg"
        h, w = 240, 320
        img, people = fig.people_scene(rng, h, w, int(rng.integers(1, 3)))
        fig.write_jpg(root / "images" / name, img)
        for p in people:
            joints, vis = [], []
            for j in ORDER:
                x, y = p["joints"][j]
                lab = 0 <= x < w and 0 <= y < h and rng.random() > 0.08
                joints.append([round(x + 1, 1), round(y + 1, 1)] if lab else [-1.0, -1.0])
                vis.append(1 if lab else 0)
            x1, y1, x2, y2 = p["box"]
            entries.append({"joints_vis": vis, "joints": joints, "image": name,
                            "scale": round(max(x2 - x1, y2 - y1) / 200.0, 3),
                            "center": [round((x1 + x2) / 2 + 1, 1), round((y1 + y2) / 2 + 1, 1)]})
    # bad input kept on purpose: a person whose image was never downloaded
    entries.append({"joints_vis": [1] * 16, "joints": [[10.0, 10.0]] * 16, "image": "999999999.jpg",
                    "scale": 1.0, "center": [100.0, 100.0]})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "mpii_train.json").write_text(json.dumps(entries))
    return {"images": n, "people": len(entries)}
