"""The on-disk layout of a patch gallery: file names, part names, table schemas, and the atomic
writes every gallery module uses. On disk (``DIR`` = ``--out`` of ``idd gallery build``)::

    DIR/gallery.json        manifest: config, embedder and index description, counts, code version
    DIR/gallery.parquet     one row per patch, row i = gallery id i: key, dataset, image_id, region_id,
                            label, label_id, file, bbox [x,y,w,h], area_frac, crop [x,y,w,h],
                            tar, offset, size (the PNG's bytes in the tar), patch_w, patch_h
    DIR/rejected.parquet    regions that did not enter the gallery: key, dataset, record_id, drop_class, drop_reason
    DIR/patches/SSSSSS[-KKK].tar  <key>.png, RGBA: the region crop with ``context`` around it, alpha = mask
                            (work shard SSSSSS; KKK counts its further tars of ``patches_per_shard``)
    DIR/embeddings.npy      float32 [N, D], L2-normalised, row i = gallery id i
    DIR/index.faiss         inner-product index over the embeddings (models/faiss_index.py)

While a build runs, ``DIR/parts/`` holds each work shard's pieces and ``DIR/build.json`` what they
were made with (see :mod:`.gallery`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

MANIFEST = "gallery.json"
TABLE = "gallery.parquet"
REJECTED = "rejected.parquet"
EMBEDDINGS = "embeddings.npy"
INDEX = "index.faiss"
FORMAT = "instructdiffusion-data/gallery/1"

PARTS = "parts"  # per-shard pieces while a build runs; removed once the gallery is assembled
BUILD = "build.json"  # what the parts were made with (a build whose config differs starts over)

# one gallery row (gallery.parquet adds gallery_id in front); typed, so every part has the same schema
ROW_SCHEMA = pa.schema([
    ("key", pa.string()), ("dataset", pa.string()), ("record_id", pa.string()), ("image_id", pa.string()),
    ("region_id", pa.string()), ("label", pa.string()), ("label_id", pa.string()), ("file", pa.string()),
    ("bbox", pa.list_(pa.int64())), ("area_frac", pa.float64()), ("crop", pa.list_(pa.int64())),
    ("tar", pa.string()), ("offset", pa.int64()), ("size", pa.int64()), ("patch_w", pa.int64()),
    ("patch_h", pa.int64())])
TABLE_SCHEMA = pa.schema([pa.field("gallery_id", pa.int64()), *ROW_SCHEMA])
REJECTED_SCHEMA = pa.schema([("key", pa.string()), ("dataset", pa.string()), ("record_id", pa.string()),
                             ("drop_class", pa.string()), ("drop_reason", pa.string())])


def tmp_name(path: Path) -> Path:
    """The temporary name ``path`` is written under before it is renamed into place."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def write_json(path: Path, obj: Any) -> None:
    tmp_name(path).write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    tmp_name(path).replace(path)


def part_path(root: Path, shard: int, what: str) -> Path:
    """``root/parts/<shard>.<what>``: one piece of a work shard's output."""
    return Path(root) / PARTS / f"{shard:06d}.{what}"
