"""Demo editing benchmark (paper 4.4) in the layout ``idd benchmark build`` reads:

```
editbench/images/<image_id:06d>.jpg
editbench/benchmark.jsonl      {"image" (relative to the JSONL's folder), "instruction", "category", "caption", "object"[, "target_object"]}
```
One line per scene, the categories in turn (remove, add, replace). ``caption`` is the scene's first
caption (the weight-free profile's source caption); ``object`` is a thing the caption names (removed or
replaced) or a new one (added); ``target_object`` what a replaced thing becomes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import imageio
from .scenes import COLOURS, THINGS, make_scene, scene_captions

CATEGORIES = ("remove", "add", "replace")


def _other(rng: np.random.Generator, not_in: set[str]) -> str:
    """A thing with a colour ("green cat") whose category is not among ``not_in``."""
    cats = [c for c in THINGS if c not in not_in]
    return f"{list(COLOURS)[int(rng.integers(len(COLOURS)))]} {cats[int(rng.integers(len(cats)))]}"


def generate(out: Path, n: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, 4404])
    root = out / "editbench"
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    counts = {c: 0 for c in CATEGORIES}
    for k in range(n):
        image_id = 500 + k
        scene = make_scene(image_id, rng, size=(240, 320))
        name = f"{image_id:06d}.jpg"
        (root / "images" / name).write_bytes(imageio.encode_jpeg(scene.rgb, 90))
        caption = scene_captions(scene)[0]
        things = [i for i in scene.instances if i.kind == "thing"][:3]
        named = [f"{t.colour} {t.category}" for t in things if f"{t.colour} {t.category}" in caption.lower()]
        category = CATEGORIES[k % 3] if named else "add"
        present = {t.category for t in things}
        entry: dict = {"image": f"images/{name}", "category": category, "caption": caption}
        if category == "remove":
            entry.update(object=named[0], instruction=f"Remove the {named[0]}.")
        elif category == "replace":
            new = _other(rng, present)
            entry.update(object=named[0], target_object=new, instruction=f"Change the {named[0]} to a {new}.")
        else:
            new = _other(rng, present)
            art = "an" if new[0] in "aeiou" else "a"
            entry.update(object=new, instruction=f"Add {art} {new}.")
        counts[category] += 1
        lines.append(json.dumps(entry, sort_keys=True))
    (root / "benchmark.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"samples": n, **counts}
