"""Small shard outputs, a hand-written mixture manifest and a tiny model for the trainer tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from instructdiffusion_data.imageio import encode_jpeg, encode_png
from instructdiffusion_data.schema import make_key, new_row
from instructdiffusion_data.writer import ShardWriter


def make_output(root: Path, name: str, n: int, *, shards: int = 2, seed: int = 0, corrupt: int = 0,
                size: tuple[int, int] = (40, 48), task: str = "edit") -> Path:
    """Write ``n`` kept rows of dataset ``name`` in ``shards`` shards under ``root/name/v1``; the first
    ``corrupt`` rows get a source that is not an image."""
    rng = np.random.default_rng(seed)
    out = root / name / "v1"
    w = ShardWriter(out)
    rows = []
    for i in range(n):
        img = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        src = b"this is not an image" if i < corrupt else (encode_jpeg(img) if i % 2 else encode_png(img))
        rows.append(new_row(key=make_key(name, i, "v0"), task=task, dataset=name, src=src, tgt=encode_png(255 - img),
                            instruction=f"invert the colours of picture {i}", meta={"record_id": i}))
    per = (n + shards - 1) // shards
    for s in range(shards):
        w.write_shard(s, rows[s * per:(s + 1) * per])
    w.write_manifest(config={"name": name}, extra={"name": name, "version": "v1", "mixture_weight": 1.0})
    return out


def write_mixture(path: Path, outputs: dict[str, tuple[Path, float]], seed: int = 0) -> Path:
    """A mixture manifest in the documented format; shard paths relative to the mixture's folder."""
    datasets = []
    for name, (out, weight) in outputs.items():
        man = json.loads((out / "manifest.json").read_text())
        train = man["splits"]["train"]
        shards = [str((out / s["tar"]).relative_to(path.parent)) if (out / s["tar"]).is_relative_to(path.parent)
                  else str(out / s["tar"]) for s in train["shards"]]
        datasets.append({"name": name, "output": str(out), "tasks": train["tasks"], "samples": train["rows"],
                         "weight": weight, "shards": shards, "effective_per_epoch": train["rows"] * weight})
    doc = {"format": "instructdiffusion-data/mixture/1", "seed": seed, "datasets": datasets,
           "tasks": {}}
    path.write_text(json.dumps(doc, indent=1))
    return path


def take_batches(loader, state, n: int) -> list[tuple[list[str], object]]:
    """The first ``n`` batches of ``loader`` as (keys, source tensor), advancing ``state`` as the training
    loop does (what a resume test compares)."""
    out = []
    for b in loader:
        state.update(b)
        out.append((list(b["key"]), b["src"].clone()))
        if len(out) == n:
            break
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions: one intra-op thread is fastest, and far faster on a loaded shared machine. A test
    module that imports this fixture runs with it."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
