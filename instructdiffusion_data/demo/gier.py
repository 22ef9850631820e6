"""Demo GIER: ``gier/GIER.json`` (a list of entries with ``input``, ``output``, ``request``,
``detailed_request``, ``operator``, ``expert_summary``, ``amateur_summary``; empty fields written
as bare ``NaN`` tokens like the real file) and ``gier/images/``. Two entries have a NaN request."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import _figures as fig

SIZE = 256
_OPS = {"replace": "color", "recolor": "hue", "remove": "inpaint_obj", "add": "paste_obj"}


def generate(out: Path, n: int, seed: int) -> dict:
    root = Path(out) / "gier"
    rng = np.random.default_rng([seed, 303])
    entries = []
    count = max(4, n // 4)
    for i in range(count):
        e = fig.edit_pair(rng, SIZE, SIZE)
        stem = f"{1000 + i:06d}"
        fig.write_jpg(root / "images" / f"{stem}_in.jpg", e["src"])
        fig.write_jpg(root / "images" / f"{stem}_out.jpg", e["tgt"])
        nan_request = i in (1, count - 2)
        entries.append({
            "id": stem, "input": f"{stem}_in.jpg", "output": f"{stem}_out.jpg",
            "request": float("nan") if nan_request else f"could you please {e['instruction']}?",
            "detailed_request": f"{e['instruction']} and keep the rest of the picture as it is",
            "operator": {_OPS[e["kind"]]: {"mask": "object", "local": True}},
            "expert_summary": [e["instruction"]], "amateur_summary": float("nan") if i % 3 == 0 else [e["instruction"]],
            "valid": True,
        })
    root.mkdir(parents=True, exist_ok=True)
    text = json.dumps(entries, indent=1)  # allow_nan (the default) writes bare NaN tokens, as the real file has
    assert "NaN" in text
    (root / "GIER.json").write_text(text)
    return {"entries": count}
