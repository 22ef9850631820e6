"""Assembling a gallery from its shards' parts, in shard order and in bounded memory (no process
holds every row or every vector): gallery id = position (prefix sums of the shards' patch counts, so
the order is a single process's); ``gallery.parquet`` and ``rejected.parquet`` streamed with a
``ParquetWriter``, ``embeddings.npy`` filled part by part through a memory map, the index trained on
a seeded sample of at most ``index.train_sample`` vectors and filled in batches. The manifest and the
removal of the parts are the driver's (:func:`.gallery.build_gallery`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import faults
from ..models.faiss_index import IndexConfig
from .gallery_layout import EMBEDDINGS, INDEX, REJECTED, REJECTED_SCHEMA, TABLE, TABLE_SCHEMA, part_path, tmp_name

CHUNK = 65_536  # rows per batch when the parts are assembled (tables, embeddings, index)


def _concat_parts(dest: Path, files: list[Path], schema: pa.Schema, with_ids: bool) -> int:
    """Stream part tables into one parquet file (memory: about ``CHUNK`` rows); ``with_ids`` adds
    ``gallery_id`` = the row's position. Returns the row count."""
    n = 0
    buf: list[pa.RecordBatch] = []
    nbuf = 0
    with pq.ParquetWriter(tmp_name(dest), schema) as w:
        def flush() -> None:
            nonlocal nbuf
            if buf:
                w.write_table(pa.Table.from_batches(buf, schema=schema), row_group_size=CHUNK)
                buf.clear()
                nbuf = 0

        for f in files:
            for b in pq.ParquetFile(f).iter_batches(batch_size=CHUNK):
                if with_ids:
                    b = pa.RecordBatch.from_arrays([pa.array(np.arange(n, n + b.num_rows, dtype=np.int64)),
                                                    *b.columns], schema=schema)
                else:
                    b = pa.RecordBatch.from_arrays(b.columns, schema=schema)
                n += b.num_rows
                buf.append(b)
                nbuf += b.num_rows
                if nbuf >= CHUNK:
                    flush()
        flush()
    tmp_name(dest).replace(dest)
    return n


def assemble_parts(root: Path, shards: list[int], patches: dict[int, int], rejected: int, tars: set[str],
                   dim: int, index_cfg: IndexConfig) -> tuple[int, dict]:
    """Assemble the parts of ``shards`` (in this order) under ``root`` into the gallery's tables,
    ``embeddings.npy`` and index, checked against the markers' counts (``patches`` per shard,
    ``rejected`` in all); remove the patch tars not in ``tars``. Returns the rejected row count and
    the index's description."""
    from ..models.faiss_index import build_index_streamed, save_index, training_ids

    n = sum(patches.values())
    rows_n = _concat_parts(root / TABLE, [part_path(root, s, "rows.parquet") for s in shards], TABLE_SCHEMA, True)
    rej_n = _concat_parts(root / REJECTED, [part_path(root, s, "rejected.parquet") for s in shards],
                          REJECTED_SCHEMA, False)
    if rows_n != n or rej_n != rejected:
        raise RuntimeError(f"gallery: the parts hold {rows_n} patches / {rej_n} rejected, their markers "
                           f"{n} / {rejected}")
    faults.point("gallery.tables")
    emb = np.lib.format.open_memmap(tmp_name(root / EMBEDDINGS), mode="w+", dtype=np.float32, shape=(n, dim))
    at = 0
    for s in shards:
        k = patches[s]
        if not k:
            continue
        part = np.load(part_path(root, s, "emb.npy"), mmap_mode="r")
        if part.shape != (k, dim):
            raise RuntimeError(f"gallery: {part_path(root, s, 'emb.npy')} has shape {part.shape}, expected {(k, dim)}")
        for i in range(0, k, CHUNK):
            emb[at + i: at + min(k, i + CHUNK)] = part[i: i + CHUNK]
        at += k
        del part
    emb.flush()
    del emb
    tmp_name(root / EMBEDDINGS).replace(root / EMBEDDINGS)
    faults.point("gallery.embeddings")
    vecs = np.load(root / EMBEDDINGS, mmap_mode="r")

    def sample() -> np.ndarray:  # only an index that needs training asks: at most train_sample rows
        ids = training_ids(n, index_cfg)
        return np.asarray(vecs if ids is None else vecs[ids])

    index, info = build_index_streamed((vecs[i: i + CHUNK] for i in range(0, n, CHUNK)), n, dim, index_cfg, sample)
    save_index(index, root / INDEX)
    del index
    faults.point("gallery.index")
    for p in (root / "patches").iterdir():  # tars of shards the plan no longer has, leftovers of killed workers
        if p.name not in tars:
            p.unlink()
    return rej_n, info
