"""``retrieve_reference``: pick the reference patch of an object replacement (paper 3.2).

Input: region records of the ``sa1b`` / ``openimages`` readers (``meta["region"]``). The query
vector is the region's own gallery embedding when the region is in the gallery (built from the same
sources by ``idd gallery build``), else the region is cropped and embedded with the gallery's own
embedder (same model and settings, read from ``gallery.json``).

The index returns ``search_k`` neighbours; excluded are: any patch of the same source image
(``dataset`` + ``image_id``, and the same file), near-duplicates (similarity above
``dup_threshold``), patches below ``min_similarity``, and, with ``label_rule: different``, patches
of the same label (with ``require_label``, unlabelled patches). Of the ``k`` best that remain one is
chosen with the row's seeded generator (uniformly, or weighted by similarity with
``choose: weighted``). A row with no candidate left is dropped (``retrieve_reference: no reference
after exclusions``).

Output ``meta["reference"]``::

    {"gallery": abs dir, "gallery_id", "key", "dataset", "image_id", "region_id", "label", "label_id",
     "file": the reference's source image, "bbox": its region in that image, "crop": the patch box,
     "patch": {"tar": path relative to the gallery, "offset", "size"},   # PNG RGBA, alpha = mask
     "patch_png_b64": downscaled copy of the patch (max side ``embed_patch_max_side``; 0 = omitted),
     "similarity", "rank"}

and ``meta["retrieval"]`` = ``{"k", "search_k", "dup_threshold", "candidates": [[gallery_id,
similarity], ...] (the k kept, best first), "excluded": {"same_image", "near_duplicate", "label",
"low_similarity"}, "query": "gallery"|"embedded", "embedder": …, "index": factory}``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from ..config import check_path, rng
from ..contracts import PatchLocation, ReferencePatch
from ..errors import ConfigError, RecordError
from ..replace.gallery_patches import make_embedder, region_patch
from ..replace.gallery_read import Gallery
from ..schema import Row, drop
from ..stage import Stage, StageConfig

log = logging.getLogger(__name__)


@dataclass
class RetrieveReferenceConfig(StageConfig):
    gallery: str = "shards/ieiw_gallery"  # folder written by `idd gallery build`
    k: int = field(default=5, metadata=rng(1))  # candidates kept after exclusions; the reference is drawn among them
    search_k: int = field(default=64, metadata=rng(1))  # neighbours fetched from the index before exclusions
    # cosine similarity above which a patch counts as a near-duplicate of the query
    dup_threshold: float = field(default=0.985, metadata=rng(-1, 1))
    min_similarity: float = field(default=-1.0, metadata=rng(-1, 1))  # candidates less similar are excluded
    label_rule: Literal["any", "different"] = "any"  # different: never replace an object by its own class
    require_label: bool = False  # only labelled patches (weight-free profile: the instruction needs a name)
    choose: Literal["uniform", "weighted"] = "uniform"
    nprobe: int | None = field(default=None, metadata=rng(1))  # IVF-PQ galleries: override the saved nprobe
    # copy of the reference patch in meta, base64 PNG; 0 = location only
    embed_patch_max_side: int = field(default=128, metadata=rng(0))
    batch_size: int = 64


_GALLERIES: dict[tuple, Gallery] = {}


def open_gallery(path: str, nprobe: int | None) -> Gallery:
    """One open gallery per worker process and (folder, build, nprobe): Ray reuses worker processes
    across tasks, so the index and the table are read once, not once per batch."""
    from pathlib import Path

    mf = Path(path) / "gallery.json"
    key = (str(Path(path).resolve()), mf.stat().st_mtime_ns if mf.is_file() else 0, nprobe)
    if key not in _GALLERIES:
        _GALLERIES.clear()
        _GALLERIES[key] = Gallery(path, nprobe=nprobe)
    return _GALLERIES[key]


class RetrieveReferenceStage(Stage):
    name = "retrieve_reference"
    Config = RetrieveReferenceConfig

    def validate(self) -> None:
        c = self.config
        check_path(c.gallery, f"stages({self.name}).gallery", kind="dir")
        if c.search_k < c.k:
            raise ConfigError(f"stages({self.name}).search_k: must be >= k ({c.k}), got {c.search_k}")

    def setup(self) -> None:
        self.gallery = open_gallery(self.config.gallery, self.config.nprobe)
        self._embedder = None

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = make_embedder(self.gallery.embedder_config())
        return self._embedder

    def _query_vectors(self, rows: list[Row]) -> tuple[np.ndarray, list[str]]:
        g = self.gallery
        vecs = np.zeros((len(rows), g.embeddings.shape[1]), np.float32)
        how, todo, patches = [], [], []
        for i, r in enumerate(rows):
            m = r["meta"]
            reg = m.get("region")
            if not isinstance(reg, dict):
                raise RecordError("row has no region (meta.region)", record=str(m.get("record_id")))
            gid = g.lookup(r["dataset"], str(m.get("image_id")), str(reg.get("id")))
            if gid is not None:
                vecs[i] = g.embeddings[gid]
                how.append("gallery")
            else:
                patch, _ = region_patch(m, g.patch_config())
                todo.append(i)
                patches.append(patch)
                how.append("embedded")
        if todo:
            for i, v in zip(todo, self.embedder.embed_patches(patches)):
                vecs[i] = v
        return vecs, how

    def process(self, rows: list[Row]) -> list[Row]:
        from ..models.faiss_index import search

        c = self.config
        g = self.gallery
        vecs, how = self._query_vectors(rows)
        _, ids = search(g.index, vecs, c.search_k)
        out = []
        for r, q, i_row, q_how in zip(rows, vecs, ids, how):
            # exact similarities from the stored vectors (an IVF-PQ index returns approximate ones),
            # so that the near-duplicate and similarity thresholds mean what they say
            i_row = i_row[i_row >= 0]
            s_row = np.asarray(g.embeddings[np.sort(i_row)], np.float32) @ q
            s_row = s_row[np.argsort(np.argsort(i_row))]  # back to the index's order
            order = np.argsort(-s_row, kind="stable")
            i_row, s_row = i_row[order], s_row[order]
            m = r["meta"]
            reg = m["region"]
            excluded = {"same_image": 0, "near_duplicate": 0, "label": 0, "low_similarity": 0}
            cands: list[tuple[int, float]] = []
            for s, gid in zip(s_row, i_row):
                if gid < 0:
                    continue
                cand = g.table[int(gid)]
                if (cand["dataset"] == r["dataset"] and cand["image_id"] == str(m.get("image_id"))) \
                        or cand["file"] == m.get("file"):
                    excluded["same_image"] += 1
                elif s > c.dup_threshold:
                    excluded["near_duplicate"] += 1
                elif s < c.min_similarity:
                    excluded["low_similarity"] += 1
                elif (c.require_label and not cand["label"]) or (
                        c.label_rule == "different" and cand["label"] and cand["label"] == reg.get("label")):
                    excluded["label"] += 1
                else:
                    cands.append((int(gid), float(s)))
                    if len(cands) >= c.k:
                        break
            m["retrieval"] = {"k": c.k, "search_k": c.search_k, "dup_threshold": c.dup_threshold,
                              "candidates": [[gid, round(s, 6)] for gid, s in cands], "excluded": excluded,
                              "query": q_how, "embedder": g.manifest["embedder"].get("type"),
                              "index": g.manifest["index"].get("factory"), "label_rule": c.label_rule}
            if not cands:
                out.append(drop(r, f"{self.name}: no reference after exclusions", record=m.get("record_id"),
                                **{f"excluded_{k}": v for k, v in excluded.items() if v}))
                continue
            rng = self.rng(r["key"])
            if c.choose == "weighted":
                w = np.maximum(np.array([s for _, s in cands]), 1e-6)
                pick = int(rng.choice(len(cands), p=w / w.sum()))
            else:
                pick = int(rng.integers(len(cands)))
            gid, sim = cands[pick]
            ref = self._reference(gid, sim, pick)
            m["reference"] = ref.to_meta()
            m["ref_label"] = ref.label
            out.append(r)
        return out

    def _reference(self, gid: int, sim: float, rank: int) -> ReferencePatch:
        g = self.gallery
        t = g.table[gid]
        ref = ReferencePatch(
            gallery=str(g.root), gallery_id=gid, key=t["key"], dataset=t["dataset"], image_id=t["image_id"],
            region_id=t["region_id"], label=t["label"], label_id=t["label_id"], file=t["file"],
            bbox=list(t["bbox"]), crop=list(t["crop"]),
            patch=PatchLocation(t["tar"], int(t["offset"]), int(t["size"])), similarity=round(sim, 6), rank=rank)
        side = self.config.embed_patch_max_side
        if side > 0:
            patch = g.patch(gid)
            scale = min(1.0, side / max(patch.shape[:2]))
            if scale < 1.0:
                patch = cv2.resize(patch, (max(1, round(patch.shape[1] * scale)), max(1, round(patch.shape[0] * scale))),
                                   interpolation=cv2.INTER_AREA)
            ref.patch_png_b64 = ReferencePatch.encode_patch(patch)
        return ref


STAGE = RetrieveReferenceStage
