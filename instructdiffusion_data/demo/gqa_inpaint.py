"""Demo GQA-Inpaint: ``gqa_inpaint/images/<image_id>.jpg``, ``images_inpainted/<image_id>/<object_id>.jpg``
(the object removed), ``masks/<image_id>/<object_id>.jpg`` and ``train_scenes.json`` (objects with
name, attributes, relations, bbox, ``bidirected``; ``image_relative_positions``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import _figures as fig

SIZE = 256


def _region(box, w: int) -> str:
    cx = (box[0] + box[2]) / 2
    return "to the left" if cx < w / 3 else "to the right" if cx > 2 * w / 3 else "to the center"


def generate(out: Path, n: int, seed: int) -> dict:
    root = Path(out) / "gqa_inpaint"
    rng = np.random.default_rng([seed, 304])
    scenes = {}
    pairs = 0
    for i in range(max(3, n // 6)):
        image_id = str(2300000 + i * 7)
        base = fig.background(rng, SIZE, SIZE)
        img = base.copy()
        k = int(rng.integers(2, 4))
        names = list(rng.permutation(fig.OBJECTS))[:k]
        slot = SIZE // k
        objs = []
        for j, name in enumerate(names):
            s = int(slot * rng.uniform(0.5, 0.85))
            x0 = j * slot + int(rng.integers(0, max(1, slot - s)))
            y0 = int(rng.integers(0, SIZE - s))
            objs.append((str(1000 + j * 13 + i), str(name), (x0, y0, x0 + s, y0 + s)))
        masks = {oid: fig.draw_object(img, name, box) for oid, name, box in objs}
        fig.write_jpg(root / "images" / f"{image_id}.jpg", img)
        objects, positions = {}, {}
        for j, (oid, name, box) in enumerate(objs):
            bidirected = not (j == k - 1 and i % 2 == 1)  # some objects were never inpainted
            rel = []
            if j > 0:
                rel.append({"name": "to the right of", "object": objs[j - 1][0]})
            if j < k - 1:
                rel.append({"name": "to the left of", "object": objs[j + 1][0]})
            color, noun = name.split()
            objects[oid] = {"name": noun, "attributes": [color], "relations": rel, "bbox": list(box),
                            "bidirected": bidirected}
            positions[oid] = _region(box, SIZE)
            if bidirected:
                inpainted = base.copy()
                for oid2, name2, box2 in objs:
                    if oid2 != oid:
                        fig.draw_object(inpainted, name2, box2)
                fig.write_jpg(root / "images_inpainted" / image_id / f"{oid}.jpg", inpainted)
                fig.write_jpg(root / "masks" / image_id / f"{oid}.jpg", np.stack([masks[oid]] * 3, -1))
                pairs += 1
        scenes[image_id] = {"width": SIZE, "height": SIZE, "objects": objects, "image_relative_positions": positions}
    (root / "train_scenes.json").write_text(json.dumps(scenes))
    return {"images": len(scenes), "pairs": pairs}
