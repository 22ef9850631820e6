"""Small synthetic outputs written by the real shard writer, for the card and takedown tests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def encode(fmt: str, seed: int, size: tuple[int, int] = (24, 16), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    arr = rng.integers(0, 255, shape, dtype=np.uint8)
    if mode == "L":
        arr = np.where(arr > 127, 255, 0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format=fmt)
    return buf.getvalue()


def row(dataset: str, image_id: int, variant: int = 0, *, fmt: str = "JPEG", mask: bool = False, keep: bool = True,
        task: str = "keypoint", file_root: str = "{source.images}", provenance: dict | None = None,
        **meta_extra) -> dict:
    from instructdiffusion_data.schema import drop, make_key, new_row

    rid = f"{image_id}_{variant}"
    meta = {"record_id": rid, "image_id": image_id, "file": f"{file_root}/{image_id:012d}.jpg", "variant": variant}
    if provenance:
        meta["provenance"] = provenance
    meta.update(meta_extra)
    seed = image_id * 10 + variant
    r = new_row(key=make_key(dataset, rid, variant), task=task, dataset=dataset, instruction=f"do {rid}", meta=meta,
                src=encode(fmt, seed), tgt=encode(fmt, seed + 1), mask=encode("PNG", seed, mode="L") if mask else None)
    if not keep:
        drop(r, "too small", record=rid)
    return r


def write_output(root: Path, name: str, version: str, shards: list[list[dict]], *, roots: dict | None = None) -> Path:
    """An output ``root/name/version`` with one shard per list of rows and its manifest."""
    from instructdiffusion_data.writer import ShardWriter

    out = root / name / version
    w = ShardWriter(out, output=name, version=version)
    for i, rows in enumerate(shards):
        w.write_shard(i, rows, {"records": len(rows), "inputs": {"label": f"records {i}"}, "reader": {}})
    w.write_manifest(config={"name": name, "version": version}, extra={
        "name": name, "version": version, "roots": roots or {"source.images": "/data/coco/train2017"},
        "complete": True, "failed_shards": {}})
    return out


def manifest(out: Path) -> dict:
    from instructdiffusion_data.generations import current

    return current(out).manifest


def sidecar_rows(out: Path, split: str = "train") -> list[dict]:
    import pyarrow.parquet as pq

    from instructdiffusion_data.generations import current

    gen = current(out)
    rows = []
    for s in gen.manifest["splits"][split]["shards"]:
        for r in pq.read_table(Path(gen.path) / s["parquet"]).to_pylist():
            r["meta"] = json.loads(r["meta"])
            rows.append(r)
    return rows
