"""COCO-Stuff (164k) semantic segmentation, in either released form:

* ``json``: ``stuff_<split>.json`` (COCO format; ``segmentation`` is a compressed RLE
  ``{"size": [h, w], "counts": str}``; category ids 92-182 plus 183 "other"), optionally together
  with ``instances_<split>.json`` for the thing classes (polygons, or RLE for crowds).
* ``pixelmap``: ``stuffthingmaps_trainval2017/<split>/<image id>.png`` single-channel PNGs holding
  ``id - 1`` (0-181) per pixel and 255 for unlabeled.

One record per image (id: the image id; for pixel maps the file stem). Category names come from the
bundled 182-class label list (``instructdiffusion_data/data/cocostuff_labels.txt``); id 183 "other" is
not a class and is skipped (counted: ``other_segments``).

The json files are streamed, never loaded whole (``stuff_train2017.json`` is about 1 GB): the images
of every file go into a compact index, then the annotations of every file are streamed once into
temporary bucket files by image-id range (pickles on local disk, each holding about
``bucket_mb`` MB), and each bucket is grouped by image and yielded in image-id order. Memory holds the
image index plus one bucket. An annotation with a malformed field drops its whole image (a partial
label map would name a present category as absent), naming the file, annotation and field.
"""

from __future__ import annotations

import bisect
import math
import pickle
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..config import check_path, rng
from ..errors import ConfigError
from ..schema import Row
from ..storage import Location, child_path
from ._base import BAD_FIELD, EXCLUDED, UNKNOWN_IMAGE, RecordSource, SourceConfig, bad_record, record_row
from ._coco import (ImageFolder, ImageIndex, annotation_inputs, clean_name, cocostuff_labels, local_or_uri, segment_payload,
                    sort_key, valid_id)
from ._json_stream import JsonStream
from ._keypoints import UNKNOWN_CATEGORY

OTHER_ID = 183
NO_LABELMAP = "label map missing for image"
NO_SEGMENTS = "no labelled segment"
MB = 1 << 20  # unit of bucket_mb


@dataclass
class CocoStuffConfig(SourceConfig):
    images: str = ""
    annotations: list[str] = field(default_factory=list)  # json form: stuff and/or instances files
    pixelmaps: str | None = None  # pixel-map form: folder of <stem>.png label maps
    dataset: str = "cocostuff"
    image_set: str = "coco"  # what image ids number (idd overlap compares outputs of the same image set)
    bucket_mb: int = field(default=64, metadata=rng(1))  # json form: annotation bytes per grouping bucket


class CocoStuffSource(RecordSource):
    name = "coco_stuff"
    Config = CocoStuffConfig

    def validate(self) -> None:
        cfg = self.config
        if not cfg.images:
            raise ConfigError("source.images: required")
        check_path(cfg.images, "source.images", kind="dir")
        if bool(cfg.annotations) == bool(cfg.pixelmaps):
            raise ConfigError("source: give either 'annotations' (json form) or 'pixelmaps' (PNG form)")
        for i, a in enumerate(cfg.annotations):
            check_path(a, f"source.annotations[{i}]", kind="file")
        check_path(cfg.pixelmaps, "source.pixelmaps", kind="dir")

    def input_files(self) -> list[str]:
        if self.config.pixelmaps:  # the records are the listing of the two folders
            return super().input_files()
        return annotation_inputs(self, *self.config.annotations)

    def records(self) -> Iterator[Row]:
        if self.config.pixelmaps:
            yield from self._pixelmap_records()
        else:
            yield from self._json_records()

    # -- pixel maps ---------------------------------------------------------------------------------
    def _pixelmap_records(self) -> Iterator[Row]:
        cfg = self.config
        maps = set(Location(cfg.pixelmaps).names())
        for name in sorted(Location(cfg.images).names()):
            stem, ext = Path(name).stem, Path(name).suffix.lower()
            if ext not in (".jpg", ".jpeg", ".png"):
                continue
            img = child_path(cfg.images, name)
            lm = child_path(cfg.pixelmaps, f"{stem}.png")
            iid = int(stem) if stem.isdigit() else stem  # COCO names images by their zero-padded id
            if self.excluded(iid):
                yield bad_record(cfg.dataset, "semantic_seg", stem, EXCLUDED, img, "image_id", image_id=iid)
                continue
            if f"{stem}.png" not in maps:
                yield bad_record(cfg.dataset, "semantic_seg", stem, NO_LABELMAP, lm, "pixelmaps", image=img,
                                 image_id=iid)
                continue
            yield record_row(cfg.dataset, "semantic_seg", stem, {
                "file": img, "image_id": iid, "labelmap": lm, "label_offset": 1,
                **({"image_set": cfg.image_set} if cfg.image_set else {}),
            })

    # -- json -----------------------------------------------------------------------------------
    def _json_records(self) -> Iterator[Row]:
        cfg = self.config
        labels = cocostuff_labels()
        streams = [JsonStream(p, f"source.annotations[{i}]") for i, p in enumerate(cfg.annotations)]
        files = [local_or_uri(p) for p in cfg.annotations]
        images = ImageIndex()
        file_cats: list[dict] = []
        for s in streams:
            images.load(s)  # the files list the same images: the first entry of an id wins
            cats: dict = {}
            n = 0
            for c in s.items("categories.item"):
                n += 1
                if isinstance(c, dict) and valid_id(c.get("id")) and isinstance(c.get("name"), str):
                    cats[c["id"]] = c["name"]
            if n == 0:
                s.require_list("categories", optional=True)
            file_cats.append(cats)
        self.stats["images"] = len(images)
        if images.bad:
            self.stats["images_without_id"] = images.bad

        ids = sorted(images.pos, key=sort_key)
        size = sum((Location(p).facts() or (0, 0))[0] for p in cfg.annotations)
        n_buckets = max(1, min(len(ids), math.ceil(size / (cfg.bucket_mb * MB))))
        bounds = [sort_key(ids[len(ids) * k // n_buckets]) for k in range(1, n_buckets)]
        with tempfile.TemporaryDirectory(prefix="idd-cocostuff-") as tmp:
            outs = [open(Path(tmp) / f"{b:05d}.pkl", "wb") for b in range(n_buckets)]
            try:
                for fi, s in enumerate(streams):
                    n = 0
                    for ai, ann in enumerate(s.items("annotations.item")):
                        n += 1
                        self.stats["annotations"] += 1
                        iid = ann.get("image_id") if isinstance(ann, dict) else None
                        if not valid_id(iid):
                            yield bad_record(cfg.dataset, "semantic_seg", f"annotations[{fi}][{ai}]", BAD_FIELD,
                                             files[fi], "image_id" if isinstance(ann, dict) else "annotations[]",
                                             annotation_index=ai)
                            continue
                        entry = self._segment(ann, fi, ai, labels, file_cats[fi])
                        pickle.dump((iid, entry), outs[bisect.bisect_right(bounds, sort_key(iid))], protocol=5)
                    if n == 0:
                        s.require_list("annotations")
                    if s.nonstandard:
                        self.stats["nonstandard_numbers"] += s.nonstandard
            finally:
                for fh in outs:
                    fh.close()
            for b in range(n_buckets):
                yield from self._bucket(Path(tmp) / f"{b:05d}.pkl", images, files)

    def _segment(self, ann: dict, fi: int, ai: int, labels: dict, cats: dict) -> tuple:
        """One annotation as ``("seg", file index, payload)``, ``("other", file index)`` or
        ``("bad", file index, reason, field, detail)``."""
        aid = ann.get("id") if valid_id(ann.get("id")) else None
        cid = ann.get("category_id")
        if cid == OTHER_ID:
            self.stats["other_segments"] += 1
            return ("other", fi)
        if not valid_id(cid) or (cid not in labels and cid not in cats):
            return ("bad", fi, UNKNOWN_CATEGORY, "category_id",
                    {"category_id": cid if valid_id(cid) else None, "annotation_id": aid})
        seg, reason, problem = segment_payload(ann.get("segmentation"))
        if seg is None:
            return ("bad", fi, reason, "segmentation", {"annotation_id": aid, "problem": problem})
        name = clean_name(labels.get(cid) or cats[cid])
        return ("seg", fi, {"category_id": cid, "name": name, "annotation_id": aid, **seg})

    def _bucket(self, path: Path, images: ImageIndex, files: list[str]) -> Iterator[Row]:
        cfg = self.config
        folder = ImageFolder(cfg.images)
        groups: dict[Any, list[tuple]] = defaultdict(list)
        with open(path, "rb") as fh:
            while True:
                try:
                    iid, entry = pickle.load(fh)
                except EOFError:
                    break
                groups[iid].append(entry)
        path.unlink()
        for iid in sorted(groups, key=sort_key):
            entries = groups.pop(iid)
            first_file = files[entries[0][1]]
            extra = {"image_set": cfg.image_set} if cfg.image_set else {}
            if self.excluded(iid):
                yield bad_record(cfg.dataset, "semantic_seg", iid, EXCLUDED, first_file, "image_id", image_id=iid,
                                 **extra)
                continue
            img = images.get(iid)
            if img is None:
                yield bad_record(cfg.dataset, "semantic_seg", iid, UNKNOWN_IMAGE, first_file, "image_id",
                                 image_id=iid)
                continue
            name, w, h, _, problem = img
            path_ = folder.path(name)
            if path_ is None:
                yield bad_record(cfg.dataset, "semantic_seg", iid, BAD_FIELD, first_file, "images[].file_name",
                                 detail={"file_name": name}, image_id=iid)
                continue
            if problem:
                yield bad_record(cfg.dataset, "semantic_seg", iid, problem[1], first_file, f"images[].{problem[0]}",
                                 image=path_, image_id=iid)
                continue
            bad = next((e for e in entries if e[0] == "bad"), None)
            if bad is not None:
                _, fi, reason, fld, detail = bad
                yield bad_record(cfg.dataset, "semantic_seg", iid, reason, files[fi], fld, detail=detail,
                                 image=path_, image_id=iid)
                continue
            segments = [e[2] for e in entries if e[0] == "seg"]
            if not segments:
                yield bad_record(cfg.dataset, "semantic_seg", iid, NO_SEGMENTS, first_file, "category_id",
                                 image=path_, image_id=iid)
                continue
            yield record_row(cfg.dataset, "semantic_seg", iid, {
                "file": path_, "image_id": iid, "width": _num(w), "height": _num(h), "segments": segments, **extra,
            })


def _num(v: float | None) -> int | float | None:
    return int(v) if isinstance(v, float) and v.is_integer() else v

SOURCE = CocoStuffSource
