"""Demo VGPhraseCut: procedural scenes written in the release's on-disk layout.

``out/phrasecut/`` gets ``images/<image_id>.jpg``, ``image_data_split.json`` and
``refer_{train,val,test,miniv}.json``. Each scene is a textured background (sky gradient, noisy
ground) with 3-5 objects of several categories (car, ball, tree, house, sign, umbrella, kite, box,
clouds) drawn with OpenCV from the very polygons written as annotations. Each object (or the group
of clouds) is one referring task whose phrase uses the name, attributes (colour, size) and a relation
to another object ("small red car to the left of the tree"), with the matching ``phrase_structure``.
Sizes vary so that some regions fall under the default minimum area and some touch the border:
the reader's selection rules have something to select. Deterministic: same (n, seed), same bytes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from ..imageio import encode_jpeg

NAME = "phrasecut"

COLOURS = {
    "red": (200, 30, 35), "blue": (35, 70, 200), "green": (40, 150, 50), "yellow": (235, 200, 30),
    "white": (240, 240, 240), "black": (25, 25, 25), "orange": (240, 130, 20), "purple": (120, 50, 160),
    "pink": (240, 130, 180), "brown": (120, 75, 35),
}
SIZES = [(320, 240), (256, 256), (300, 224), (240, 320), (288, 216)]
CATEGORIES = ["car", "ball", "tree", "house", "sign", "umbrella", "kite", "box"]


def _circle(cx: float, cy: float, r: float, n: int = 20, ry: float | None = None) -> list[list[float]]:
    ry = r if ry is None else ry
    return [[round(cx + r * math.cos(2 * math.pi * k / n), 1), round(cy + ry * math.sin(2 * math.pi * k / n), 1)]
            for k in range(n)]


def _rect(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]


def _shape(cat: str, cx: float, cy: float, s: float, rng: np.random.Generator) -> list[tuple[list, str | None]]:
    """Polygons of one instance as (points, part colour or None for the instance colour)."""
    if cat == "car":
        w, h = 2.0 * s, 0.7 * s
        x, y = cx - w / 2, cy - h / 2
        body = [[x, y + 0.45 * h], [x + 0.25 * w, y + 0.45 * h], [x + 0.35 * w, y], [x + 0.7 * w, y],
                [x + 0.8 * w, y + 0.45 * h], [x + w, y + 0.5 * h], [x + w, y + h], [x, y + h]]
        return [(body, None), (_circle(x + 0.25 * w, y + h, 0.18 * s, 12), "black"),
                (_circle(x + 0.75 * w, y + h, 0.18 * s, 12), "black")]
    if cat == "ball":
        return [(_circle(cx, cy, 0.5 * s), None)]
    if cat == "tree":
        return [(_rect(cx - 0.12 * s, cy, 0.24 * s, 0.9 * s), "brown"), (_circle(cx, cy - 0.2 * s, 0.6 * s, 18, 0.55 * s), None)]
    if cat == "house":
        w = 1.4 * s
        return [(_rect(cx - w / 2, cy - 0.2 * s, w, 0.9 * s), None),
                ([[cx - 0.6 * w, cy - 0.2 * s], [cx, cy - 0.85 * s], [cx + 0.6 * w, cy - 0.2 * s]], "brown")]
    if cat == "sign":
        return [(_rect(cx - 0.05 * s, cy, 0.1 * s, 0.9 * s), "black"), (_circle(cx, cy - 0.1 * s, 0.4 * s, 8), None)]
    if cat == "umbrella":
        half = [[round(cx + 0.7 * s * math.cos(math.pi + math.pi * k / 12), 1),
                 round(cy + 0.5 * s * math.sin(math.pi + math.pi * k / 12), 1)] for k in range(13)]
        return [(half, None), (_rect(cx - 0.04 * s, cy, 0.08 * s, 0.8 * s), "black")]
    if cat == "kite":
        a = float(rng.uniform(-0.3, 0.3))
        pts = [(0, -0.7), (0.45, 0), (0, 0.7), (-0.45, 0)]
        return [([[round(cx + s * (px * math.cos(a) - py * math.sin(a)), 1),
                   round(cy + s * (px * math.sin(a) + py * math.cos(a)), 1)] for px, py in pts], None)]
    # box: a slightly rotated square
    a = float(rng.uniform(0, math.pi / 2))
    return [([[round(cx + 0.5 * s * math.sqrt(2) * math.cos(a + k * math.pi / 2), 1),
               round(cy + 0.5 * s * math.sqrt(2) * math.sin(a + k * math.pi / 2), 1)] for k in range(4)], None)]


def _background(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    horizon = int(h * rng.uniform(0.35, 0.55))
    img = np.zeros((h, w, 3), np.float32)
    top = np.array(rng.choice([(110, 160, 230), (150, 190, 240), (190, 200, 215)]), np.float32)
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
    img[:horizon] = top * (1 - 0.35 * t) + 60 * t
    ground = np.array(rng.choice([(70, 130, 60), (180, 160, 110), (110, 110, 115)]), np.float32)
    img[horizon:] = ground
    for scale, amp in ((8, 30.0), (32, 14.0), (w, 6.0)):  # multi-scale noise texture
        small = rng.standard_normal((max(2, h // max(1, h // scale)), max(2, w // max(1, w // scale)), 1)).astype(np.float32)
        noise = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
        img[horizon:] += amp * noise[horizon:]
        img[:horizon] += 0.3 * amp * noise[:horizon]
    return np.clip(img, 0, 255), horizon


def _draw(img: np.ndarray, polys: list[tuple[list, str | None]], colour: str, rng: np.random.Generator) -> None:
    for pts, part in polys:
        c = np.array(COLOURS[part or colour], np.float32)
        arr = np.round(np.asarray(pts) * 8).astype(np.int32)
        layer = np.zeros(img.shape[:2], np.uint8)
        cv2.fillPoly(layer, [arr], 255, lineType=cv2.LINE_8, shift=3)
        m = layer > 0
        # shading: a vertical gradient and a little noise, so the object is not a flat colour
        ys = np.nonzero(m)[0]
        if ys.size:
            shade = 1.0 - 0.25 * (ys - ys.min()) / max(1, ys.max() - ys.min())
            img[m] = np.clip(c[None] * shade[:, None] + rng.normal(0, 4, (ys.size, 3)), 0, 255)
        cv2.polylines(img, [arr], True, tuple(float(v) * 0.6 for v in c), 1, lineType=cv2.LINE_8, shift=3)


def _relation(a: dict, b: dict) -> str:
    dx, dy = b["cx"] - a["cx"], b["cy"] - a["cy"]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def generate(out: Path, n: int = 48, seed: int = 0) -> dict:
    root = Path(out) / NAME
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 4242])
    images, refer = [], {s: [] for s in ("train", "val", "test", "miniv")}
    ann_id = 5000
    n_tasks = 0
    for i in range(n):
        image_id = 2400000 + i
        w, h = SIZES[int(rng.integers(len(SIZES)))]
        img, horizon = _background(h, w, rng)
        objects = []
        k = int(rng.integers(3, 6))
        cats = list(rng.choice(CATEGORIES, size=k, replace=True))
        for j, cat in enumerate(cats):
            size_word = None
            s = float(rng.uniform(0.12, 0.3)) * min(w, h)
            if rng.random() < 0.15:
                s *= 0.3  # a small object: under the default min area
                size_word = "small"
            elif s > 0.25 * min(w, h):
                size_word = "large"
            cx = float(rng.uniform(0.1, 0.9)) * w
            cy = float(rng.uniform(horizon / h, 0.85)) * h if cat not in ("kite",) else float(rng.uniform(0.1, 0.4)) * h
            if rng.random() < 0.1:
                cx = float(rng.choice([0.0, w]))  # cut off by the image border
            colour = str(rng.choice(list(COLOURS)))
            if cat == "tree":
                colour = "green"
            polys = _shape(cat, round(cx, 1), round(cy, 1), s, rng)
            _draw(img, polys, colour, rng)
            objects.append({"cat": str(cat), "colour": colour, "size": size_word, "cx": cx, "cy": cy,
                            "polys": [[[round(x, 1), round(y, 1)] for x, y in p] for p, _ in polys], "ann_id": ann_id})
            ann_id += 1
        clouds = []
        if rng.random() < 0.5:  # several instances behind one plural phrase
            for _ in range(int(rng.integers(2, 4))):
                cx, cy, r = float(rng.uniform(0.1, 0.9)) * w, float(rng.uniform(0.08, 0.25)) * h, float(rng.uniform(0.06, 0.1)) * w
                poly = _circle(round(cx, 1), round(cy, 1), r, 18, 0.5 * r)
                _draw(img, [(poly, None)], "white", rng)
                clouds.append({"poly": [[round(x, 1), round(y, 1)] for x, y in poly], "ann_id": ann_id,
                               "box": [round(cx - r, 1), round(cy - 0.5 * r, 1), round(2 * r, 1), round(r, 1)]})
                ann_id += 1
        (root / "images" / f"{image_id}.jpg").write_bytes(encode_jpeg(img.astype(np.uint8), quality=90))

        split = "train" if i % 8 < 6 else ("val" if i % 8 == 6 else "test")
        images.append({"image_id": image_id, "width": w, "height": h,
                       "url": f"https://cs.stanford.edu/people/rak248/VG_100K/{image_id}.jpg",
                       "split": split, "coco_id": None, "flickr_id": None})
        tasks = []
        # Objects drawn later may cover earlier ones; the annotation keeps the full polygon, as
        # PhraseCut's does for occluded instances.
        for j, ob in enumerate(objects):
            other = objects[(j + 1 + int(rng.integers(len(objects) - 1))) % len(objects)] if len(objects) > 1 else None
            kind = str(rng.choice(["name", "attribute", "relation"], p=[0.2, 0.45, 0.35]))
            attrs = [a for a in (ob["size"], ob["colour"]) if a] if kind != "name" else []
            if kind == "attribute" and not attrs:
                attrs = [ob["colour"]]
            rel = []
            if kind == "relation" and other is not None and other["cat"] != ob["cat"]:
                rel = [[_relation(ob, other), other["cat"]]]
                attrs = attrs[-1:]
            else:
                kind = "attribute" if attrs else "name"
            phrase = " ".join(attrs + [ob["cat"]] + ([f"{rel[0][0]} the {rel[0][1]}"] if rel else []))
            xs = [p[0] for poly in ob["polys"] for p in poly]
            ys = [p[1] for poly in ob["polys"] for p in poly]
            tasks.append({
                "task_id": f"{image_id}__{len(tasks)}", "image_id": image_id, "ann_ids": [ob["ann_id"]],
                "instance_boxes": [[round(min(xs), 1), round(min(ys), 1), round(max(xs) - min(xs), 1), round(max(ys) - min(ys), 1)]],
                "Polygons": [ob["polys"]], "phrase": phrase,
                "phrase_structure": {"type": kind, "name": ob["cat"], "attributes": attrs,
                                     "relation_ids": [other["ann_id"]] if rel else [], "relation_descriptions": rel},
            })
        if clouds:
            tasks.append({
                "task_id": f"{image_id}__{len(tasks)}", "image_id": image_id, "ann_ids": [c["ann_id"] for c in clouds],
                "instance_boxes": [c["box"] for c in clouds], "Polygons": [[c["poly"]] for c in clouds],
                "phrase": "white clouds",
                "phrase_structure": {"type": "attribute", "name": "clouds", "attributes": ["white"],
                                     "relation_ids": [], "relation_descriptions": []},
            })
        refer[split].extend(tasks)
        if split == "val" and len(refer["miniv"]) < 20:
            refer["miniv"].extend(tasks)
        n_tasks += len(tasks)
    (root / "image_data_split.json").write_text(json.dumps(images))
    for split, tasks in refer.items():
        (root / f"refer_{split}.json").write_text(json.dumps(tasks))
    return {"root": str(root), "images": n, "tasks": n_tasks,
            "splits": {s: len(t) for s, t in refer.items()}}
