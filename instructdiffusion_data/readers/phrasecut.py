"""VGPhraseCut reader: one record row per referring task, with region selection.

On-disk layout of the public release (``VGPhraseCut_v0/``)::

    refer_{train,val,test,miniv}.json   list of tasks: task_id, image_id, ann_ids, instance_boxes [[x,y,w,h]],
                                        Polygons [instance][polygon][[x,y], ...], phrase,
                                        phrase_structure {name, attributes, relation_ids,
                                        relation_descriptions, type}; older files also carry ``iob``
    image_data_split.json               list of {image_id, width, height, url, split, coco_id, flickr_id}
    images/<image_id>.jpg

The region a task refers to is the union of all its polygons (every instance, every part).

Region selection happens here rather than in a stage because one of its rules needs the whole image:
"at most N tasks per image" is only deterministic when every task of the image is seen together,
and a stage only ever sees one batch. Everything selection needs (polygons, image size) is in the
annotations, so no pixel is read. Selected-out tasks are still yielded, dropped with their reason
class (``region too small``, ``region too large``, ``region cut by the image border``, ``too many regions
on the image``) and the measured values as details (``area=0.003, min=0.01``, ``eligible=5, max=3``),
so auditors see them in ``rejected/``. A malformed task is a dropped row naming file, record and field
(``bad field``, ``not a finite number``, ...). ``source.exclude_image_ids`` lists Visual Genome image ids.
The json files are read whole (one split at a time): the per-image cap needs every task of an image.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..config import check_path
from ..errors import ConfigError
from ..imageio import pixel_limit
from ..schema import Row, drop
from ..storage import exists, is_uri, join
from ._base import (BAD_FIELD, EXCLUDED, NO_IMAGE_FILE, NOT_FINITE, UNKNOWN_IMAGE, RecordSource, SourceConfig,
                    bad_record, image_path, load_json, record_row)
from ._coco import DUPLICATE_ID, annotation_inputs

log = logging.getLogger(__name__)

DATASET = "phrasecut"
SPLITS = ("train", "val", "test", "miniv")
_SUBPIXEL_SHIFT = 3  # cv2.fillPoly fixed-point bits: polygon coordinates are floats in PhraseCut
MAX_COORD = 1e6  # |coordinate| beyond this is no image's pixel (and would overflow the rasteriser)

# Reason classes of this reader (the per-record values are details: area=, min=, eligible=, ...)
NO_POLYGON = "no valid polygon"
TOO_SMALL = "region too small"
TOO_LARGE = "region too large"
AT_BORDER = "region cut by the image border"
TOO_MANY = "too many regions on the image"
TOO_LARGE_IMAGE = "image too large"  # the same class as imageio's limit on decoded images


@dataclass
class PhraseCutConfig(SourceConfig):
    root: str = "demo_data/phrasecut"  # folder holding refer_*.json, image_data_split.json, images/
    splits: list[str] = field(default_factory=lambda: ["train"])  # which refer_{split}.json files, in order
    images_dir: str | None = None  # default: <root>/images
    min_area_frac: float = 0.01  # region area / image area below this: dropped (too small to see the edit)
    max_area_frac: float = 0.5  # above this: dropped (inpainting half the image invents a new image)
    max_border_frac: float = 0.2  # max fraction of the region's outline on the image border (cut-off objects)
    max_per_image: int | None = 3  # at most this many tasks per image (deterministic choice); None: all
    check_images: bool = True  # stat each image file on the driver: missing ones dropped up front


def _file(root: str, name: str) -> str:
    return str(join(root, name)) if is_uri(root) else str((Path(root) / name).resolve())


class PhraseCutSource(RecordSource):
    name = "phrasecut"
    Config = PhraseCutConfig

    def validate(self) -> None:
        c = self.config
        check_path(c.root, "source.root", kind="dir")
        for s in c.splits:
            if s not in SPLITS:
                raise ConfigError(f"source.splits: unknown split {s!r} (one of {', '.join(SPLITS)})")
            check_path(str(join(c.root, f"refer_{s}.json")), f"source.splits[{s}]", kind="file")
        check_path(str(join(c.root, "image_data_split.json")), "source.root", kind="file")
        if c.images_dir is not None:
            check_path(c.images_dir, "source.images_dir", kind="dir")
        if not 0.0 <= c.min_area_frac < c.max_area_frac <= 1.0:
            raise ConfigError(f"source.min_area_frac/max_area_frac: need 0 <= min < max <= 1, got "
                              f"{c.min_area_frac}, {c.max_area_frac}")
        if not 0.0 <= c.max_border_frac <= 1.0:
            raise ConfigError(f"source.max_border_frac: must be in [0, 1], got {c.max_border_frac}")
        if c.max_per_image is not None and c.max_per_image < 1:
            raise ConfigError(f"source.max_per_image: must be >= 1 or null, got {c.max_per_image}")

    def input_files(self) -> list[str]:
        c = self.config
        return annotation_inputs(self, *[_file(c.root, f"refer_{s}.json") for s in c.splits],
                                 _file(c.root, "image_data_split.json"))

    # -----------------------------------------------------------------------------------------
    def _image_info(self) -> dict[str, dict]:
        path = _file(self.config.root, "image_data_split.json")
        data = load_json(path, "source.root")
        if not isinstance(data, list):
            raise ConfigError(f"source.root: {path}: expected a list of images, got {type(data).__name__}")
        info = {}
        for item in data:
            if isinstance(item, dict) and isinstance(item.get("image_id"), (int, str)) \
                    and not isinstance(item.get("image_id"), bool):
                info[str(item["image_id"])] = item
            else:
                self.stats["images_without_id"] += 1
        return info

    def records(self) -> Iterator[Row]:
        c = self.config
        images = self._image_info()
        images_dir = c.images_dir or str(join(c.root, "images"))
        exists_cache: dict[str, bool] = {}
        seen: set[str] = set()
        for split in c.splits:
            path = _file(c.root, f"refer_{split}.json")
            tasks = load_json(path, f"source.splits[{split}]")
            if not isinstance(tasks, list):
                raise ConfigError(f"source.splits[{split}]: {path}: expected a list of tasks, got {type(tasks).__name__}")
            rows = []
            for i, task in enumerate(tasks):
                row = self._task_row(task, i, split, path, images, images_dir, exists_cache)
                rid = row["meta"]["record_id"]
                if rid in seen:  # a repeated task id would give two rows one key
                    self.stats["duplicate_ids"] += 1
                    row = bad_record(DATASET, "edit_remove", f"{rid}#{split}-{i}", DUPLICATE_ID, path, "task_id",
                                     split=split, annotation_file=path, task_index=i)
                seen.add(rid)
                rows.append(row)
            del tasks
            self._select(rows)
            for row in rows:
                self.stats["tasks"] += 1
                self.stats["kept" if row["keep"] else "dropped"] += 1
                yield row

    def _task_row(self, task: Any, index: int, split: str, path: str, images: dict, images_dir: str,
                  exists_cache: dict[str, bool]) -> Row:
        tid = task.get("task_id") if isinstance(task, dict) else None
        tid = str(tid) if isinstance(tid, (int, str)) and not isinstance(tid, bool) and tid != "" else f"{split}-{index}"

        def bad(reason: str, field: str | None, at: str = path, detail: dict | None = None, **meta: Any) -> Row:
            return bad_record(DATASET, "edit_remove", tid, reason, at, field, detail=detail, split=split,
                              annotation_file=path, task_index=index, **meta)

        if not isinstance(task, dict):
            return bad(BAD_FIELD, "task", detail={"problem": "not an object"})
        missing = [k for k in ("task_id", "image_id", "Polygons", "phrase") if k not in task]
        if missing:
            return bad(BAD_FIELD, missing[0], detail={"problem": "missing"})
        raw_id = task["image_id"]
        if isinstance(raw_id, bool) or not isinstance(raw_id, (int, str)):
            return bad(BAD_FIELD, "image_id")
        image_id = str(raw_id)
        file = image_path(images_dir, f"{image_id}.jpg")
        if file is None:
            return bad(BAD_FIELD, "image_id", image_id=image_id)
        if self.excluded(image_id):
            return bad(EXCLUDED, "image_id", image_id=image_id, image=file)
        img = images.get(image_id)
        if img is None:
            return bad(UNKNOWN_IMAGE, "image_id", image_id=image_id, image=file)
        info = _file(self.config.root, "image_data_split.json")
        w, h = img.get("width"), img.get("height")
        for name, v in (("width", w), ("height", h)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return bad(BAD_FIELD, name, at=info, image_id=image_id, image=file)
            if not math.isfinite(v):
                return bad(NOT_FINITE, name, at=info, image_id=image_id, image=file)
            if v <= 0 or not float(v).is_integer():
                return bad(BAD_FIELD, name, at=info, detail={"value": v}, image_id=image_id, image=file)
        w, h = int(w), int(h)
        limit = pixel_limit()
        if limit and w * h > limit:  # the selection rasterises the region at this size
            return bad(TOO_LARGE_IMAGE, "width", at=info, detail={"width": w, "height": h, "limit": limit},
                       image_id=image_id, image=file)
        phrase = task["phrase"]
        if not isinstance(phrase, str) or not phrase.strip():
            return bad(BAD_FIELD, "phrase", detail={"problem": "empty" if isinstance(phrase, str) else "not text"},
                       image_id=image_id, image=file)
        polys, skipped, err = parse_polygons(task["Polygons"])
        if err:
            return bad(NOT_FINITE if "non-finite" in err else BAD_FIELD, "Polygons", detail={"problem": err},
                       image_id=image_id, image=file)
        if not polys:
            return bad(NO_POLYGON, "Polygons", detail={"skipped": skipped}, image_id=image_id, image=file)
        structure = task.get("phrase_structure") if isinstance(task.get("phrase_structure"), dict) else {}
        ann_ids = task.get("ann_ids") if isinstance(task.get("ann_ids"), list) else []
        boxes = task.get("instance_boxes") if isinstance(task.get("instance_boxes"), list) else []
        mask = polygons_to_mask(polys, h, w)
        area = float(np.count_nonzero(mask)) / (h * w)
        border = border_fraction(mask)
        ys, xs = np.nonzero(mask)
        row = record_row(DATASET, "edit_remove", tid, {
            "file": file, "split": split, "annotation_file": path, "image_id": image_id, "image_set": "vg",
            "width": w, "height": h, "phrase": " ".join(phrase.split()), "phrase_structure": structure,
            "ann_ids": ann_ids, "instance_boxes": boxes, "polygons": polys,
            "coco_id": img.get("coco_id"), "flickr_id": img.get("flickr_id"),
            "region": {"area_frac": round(area, 6), "border_frac": round(border, 6),
                       "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
                       if len(xs) else [0, 0, 0, 0]},
        })
        if skipped:
            row["meta"]["skipped_polygons"] = skipped
        if self.config.check_images:
            ok = exists_cache.get(image_id)
            if ok is None:
                ok = exists_cache[image_id] = exists(file, "file")
            if not ok:
                return drop(row, NO_IMAGE_FILE, file=file, record=tid, field="image_id")
        return row

    def _select(self, rows: list[Row]) -> None:
        """Area and border rules per task, then at most ``max_per_image`` eligible tasks per image,
        chosen by a hash of (seed, task id): stable whatever the file order or the other images."""
        c = self.config
        per_image: dict[str, list[Row]] = defaultdict(list)
        for row in rows:
            if not row["keep"]:
                continue
            reg, tid, at = row["meta"]["region"], row["meta"]["record_id"], row["meta"]["annotation_file"]
            if reg["area_frac"] < c.min_area_frac:
                drop(row, TOO_SMALL, file=at, record=tid, field="Polygons", area=reg["area_frac"], min=c.min_area_frac)
            elif reg["area_frac"] > c.max_area_frac:
                drop(row, TOO_LARGE, file=at, record=tid, field="Polygons", area=reg["area_frac"], max=c.max_area_frac)
            elif reg["border_frac"] > c.max_border_frac:
                drop(row, AT_BORDER, file=at, record=tid, field="Polygons", border=reg["border_frac"],
                     max=c.max_border_frac)
            else:
                per_image[row["meta"]["image_id"]].append(row)
        if c.max_per_image is None:
            return
        for image_id, group in per_image.items():
            if len(group) <= c.max_per_image:
                continue
            ranked = sorted(group, key=lambda r: _priority(self.seed, r["meta"]["record_id"]))
            for row in ranked[c.max_per_image:]:
                drop(row, TOO_MANY, file=row["meta"]["annotation_file"], record=row["meta"]["record_id"],
                     field="image_id", image=image_id, eligible=len(group), max=c.max_per_image)


def _priority(seed: int, task_id: str) -> str:
    return hashlib.sha1(f"{seed}\x00{task_id}".encode()).hexdigest()


# -- geometry shared with the inpainting stage --------------------------------------------------

def parse_polygons(raw: Any) -> tuple[list[list[list[list[float]]]], int, str | None]:
    """Validate PhraseCut ``Polygons`` ([instance][polygon][[x, y]]).

    Returns (polygons, number of degenerate polygons skipped, error). Degenerate polygons (fewer than
    three points, zero area) are skipped and counted, as the release has a few; a structure that is
    not numbers at all is an error that drops the task.
    """
    if not isinstance(raw, list):
        return [], 0, "expected a list of instances"
    out: list = []
    skipped = 0
    for ii, inst in enumerate(raw):
        if not isinstance(inst, list):
            return [], 0, f"instance {ii} is not a list of polygons"
        keep = []
        for pi, poly in enumerate(inst):
            if not isinstance(poly, list):
                return [], 0, f"instance {ii} polygon {pi} is not a list of points"
            pts = []
            for pt in poly:
                if (not isinstance(pt, (list, tuple)) or len(pt) != 2
                        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pt)):
                    return [], 0, f"instance {ii} polygon {pi} has a point that is not [x, y] numbers: {pt!r}"
                if not all(math.isfinite(v) for v in pt):
                    return [], 0, f"instance {ii} polygon {pi} has a non-finite point: {pt!r}"
                if not all(abs(v) <= MAX_COORD for v in pt):
                    return [], 0, f"instance {ii} polygon {pi} has a point far outside any image: {pt!r}"
                pts.append([float(pt[0]), float(pt[1])])
            if len(pts) < 3 or abs(_shoelace(pts)) < 1e-6:
                skipped += 1
                continue
            keep.append(pts)
        if keep:
            out.append(keep)
    return out, skipped, None


def _shoelace(pts: list[list[float]]) -> float:
    a = np.asarray(pts, dtype=np.float64)
    x, y = a[:, 0], a[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def polygons_to_mask(polygons: list, height: int, width: int, scale: float = 1.0) -> np.ndarray:
    """Union of all polygons of all instances as a ``uint8`` mask (0/255) of ``height x width``;
    ``scale`` maps annotation coordinates to the mask's pixels (for resized images)."""
    mask = np.zeros((height, width), np.uint8)
    f = (1 << _SUBPIXEL_SHIFT) * scale
    pts = [np.round(np.asarray(p, np.float64) * f).astype(np.int32) for inst in polygons for p in inst]
    for p in pts:  # one call per polygon: a single fillPoly call would XOR overlapping polygons
        cv2.fillPoly(mask, [p], 255, lineType=cv2.LINE_8, shift=_SUBPIXEL_SHIFT)
    return mask


def border_fraction(mask: np.ndarray) -> float:
    """Fraction of the region's outline that lies on the image border: an object cut in half by the
    frame scores ~0.4, one that merely touches it ~0.01, a region filling a corner ~0.5."""
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    outline = (padded > 0) & (cv2.erode(padded, np.ones((3, 3), np.uint8)) == 0)
    outline = outline[1:-1, 1:-1]
    total = int(np.count_nonzero(outline))
    if total == 0:
        return 0.0
    on_edge = (int(np.count_nonzero(outline[0])) + int(np.count_nonzero(outline[-1]))
               + int(np.count_nonzero(outline[1:-1, 0])) + int(np.count_nonzero(outline[1:-1, -1])))
    return on_edge / total


def dilate_mask(mask: np.ndarray, px: int) -> np.ndarray:
    """Grow a 0/255 mask by ``px`` pixels (elliptical kernel): inpainting needs the edge covered."""
    if px <= 0:
        return mask
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask, k)


SOURCE = PhraseCutSource
