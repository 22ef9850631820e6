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
(``region too small (area=0.30%, min=1.00%, ...)``, ``region cut by the image border (...)``,
``too many regions on the image (eligible=5, max=3, ...)``), so auditors see them in ``rejected/``.
"""

from __future__ import annotations

import hashlib
import json
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
from ..schema import Row, drop, make_key, new_row
from ._base import RecordSource, SourceConfig

log = logging.getLogger(__name__)

DATASET = "phrasecut"
SPLITS = ("train", "val", "test", "miniv")
_SUBPIXEL_SHIFT = 3  # cv2.fillPoly fixed-point bits: polygon coordinates are floats in PhraseCut


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


class PhraseCutSource(RecordSource):
    name = "phrasecut"
    Config = PhraseCutConfig

    def validate(self) -> None:
        c = self.config
        check_path(c.root, "source.root", kind="dir")
        for s in c.splits:
            if s not in SPLITS:
                raise ConfigError(f"source.splits: unknown split {s!r} (one of {', '.join(SPLITS)})")
            check_path(str(Path(c.root) / f"refer_{s}.json"), f"source.splits[{s}]", kind="file")
        check_path(str(Path(c.root) / "image_data_split.json"), "source.root", kind="file")
        if c.images_dir is not None:
            check_path(c.images_dir, "source.images_dir", kind="dir")
        if not 0.0 <= c.min_area_frac < c.max_area_frac <= 1.0:
            raise ConfigError(f"source.min_area_frac/max_area_frac: need 0 <= min < max <= 1, got "
                              f"{c.min_area_frac}, {c.max_area_frac}")
        if not 0.0 <= c.max_border_frac <= 1.0:
            raise ConfigError(f"source.max_border_frac: must be in [0, 1], got {c.max_border_frac}")
        if c.max_per_image is not None and c.max_per_image < 1:
            raise ConfigError(f"source.max_per_image: must be >= 1 or null, got {c.max_per_image}")

    # -----------------------------------------------------------------------------------------
    def _image_info(self) -> dict[str, dict]:
        path = Path(self.config.root) / "image_data_split.json"
        data = _load_json(path)
        if not isinstance(data, list):
            raise ConfigError(f"{path}: expected a list of images")
        info = {}
        for item in data:
            if isinstance(item, dict) and "image_id" in item:
                info[str(item["image_id"])] = item
        return info

    def records(self) -> Iterator[Row]:
        c = self.config
        images = self._image_info()
        images_dir = Path(c.images_dir) if c.images_dir else Path(c.root) / "images"
        self.stats = defaultdict(int)
        exists_cache: dict[str, bool] = {}
        for split in c.splits:
            path = Path(c.root) / f"refer_{split}.json"
            tasks = _load_json(path)
            if not isinstance(tasks, list):
                raise ConfigError(f"{path}: expected a list of tasks")
            rows = []
            for i, task in enumerate(tasks):
                row = self._task_row(task, i, split, path, images, images_dir, exists_cache)
                rows.append(row)
            self._select(rows)
            for row in rows:
                self.stats["tasks"] += 1
                self.stats["kept" if row["keep"] else "dropped"] += 1
                yield row
        self.stats = dict(self.stats)

    def _task_row(self, task: Any, index: int, split: str, path: Path, images: dict, images_dir: Path,
                  exists_cache: dict[str, bool]) -> Row:
        tid = str(task.get("task_id", f"{split}-{index}")) if isinstance(task, dict) else f"{split}-{index}"
        row = new_row(key=make_key(DATASET, tid, "rec"), task="edit_remove", dataset=DATASET,
                      meta={"file": None, "record_id": tid, "split": split, "annotation_file": str(path.resolve())})
        if not isinstance(task, dict):
            return drop(row, f"task is not an object (file={path.name}, record={tid})")
        where = f"file={path.name}, record={tid}"
        missing = [k for k in ("task_id", "image_id", "Polygons", "phrase") if k not in task]
        if missing:
            return drop(row, f"task lacks field '{missing[0]}' ({where})")
        image_id = str(task["image_id"])
        img = images.get(image_id)
        row["meta"]["image_id"] = image_id
        file = images_dir / f"{image_id}.jpg"
        row["meta"]["file"] = str(file.resolve())
        if img is None:
            return drop(row, f"image not in image_data_split.json ({where}, field=image_id)")
        try:
            w, h = int(img["width"]), int(img["height"])
        except (KeyError, TypeError, ValueError):
            return drop(row, f"image size missing in image_data_split.json ({where}, field=width)")
        if w <= 0 or h <= 0:
            return drop(row, f"image size {w}x{h} invalid ({where}, field=width)")
        phrase = task["phrase"]
        if not isinstance(phrase, str) or not phrase.strip():
            return drop(row, f"empty phrase ({where}, field=phrase)")
        polys, skipped, err = parse_polygons(task["Polygons"])
        if err:
            return drop(row, f"bad polygons: {err} ({where}, field=Polygons)")
        structure = task.get("phrase_structure") if isinstance(task.get("phrase_structure"), dict) else {}
        row["meta"].update({
            "width": w, "height": h, "phrase": " ".join(phrase.split()),
            "phrase_structure": structure,
            "ann_ids": list(task.get("ann_ids") or []),
            "instance_boxes": task.get("instance_boxes") or [],
            "polygons": polys,
            "coco_id": img.get("coco_id"), "flickr_id": img.get("flickr_id"),
        })
        if skipped:
            row["meta"]["skipped_polygons"] = skipped
        if not polys:
            return drop(row, f"no valid polygon ({where}, field=Polygons)")
        mask = polygons_to_mask(polys, h, w)
        area = float(np.count_nonzero(mask)) / (h * w)
        border = border_fraction(mask)
        ys, xs = np.nonzero(mask)
        row["meta"]["region"] = {
            "area_frac": round(area, 6), "border_frac": round(border, 6),
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            if len(xs) else [0, 0, 0, 0],
        }
        if self.config.check_images:
            ok = exists_cache.get(image_id)
            if ok is None:
                ok = exists_cache[image_id] = file.is_file()
            if not ok:
                return drop(row, f"image file missing (file={file}, record={tid})")
        return row

    def _select(self, rows: list[Row]) -> None:
        """Area and border rules per task, then at most ``max_per_image`` eligible tasks per image,
        chosen by a hash of (seed, task id): stable whatever the file order or the other images."""
        c = self.config
        per_image: dict[str, list[Row]] = defaultdict(list)
        for row in rows:
            if not row["keep"]:
                continue
            reg, tid = row["meta"]["region"], row["meta"]["record_id"]
            if reg["area_frac"] < c.min_area_frac:
                drop(row, f"region too small (area={100 * reg['area_frac']:.2f}%, min={100 * c.min_area_frac:.2f}%, "
                          f"record={tid})")
            elif reg["area_frac"] > c.max_area_frac:
                drop(row, f"region too large (area={100 * reg['area_frac']:.1f}%, max={100 * c.max_area_frac:.1f}%, "
                          f"record={tid})")
            elif reg["border_frac"] > c.max_border_frac:
                drop(row, f"region cut by the image border (border={100 * reg['border_frac']:.0f}% of its outline, "
                          f"max={100 * c.max_border_frac:.0f}%, record={tid})")
            else:
                per_image[row["meta"]["image_id"]].append(row)
        if c.max_per_image is None:
            return
        for image_id, group in per_image.items():
            if len(group) <= c.max_per_image:
                continue
            ranked = sorted(group, key=lambda r: _priority(self.seed, r["meta"]["record_id"]))
            for row in ranked[c.max_per_image:]:
                drop(row, f"too many regions on the image (eligible={len(group)}, max={c.max_per_image}, "
                          f"record={row['meta']['record_id']}, image={image_id})")


def _priority(seed: int, task_id: str) -> str:
    return hashlib.sha1(f"{seed}\x00{task_id}".encode()).hexdigest()


def _load_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON (line {e.lineno}: {e.msg})") from None


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
                        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pt)):
                    return [], 0, f"instance {ii} polygon {pi} has a point that is not [x, y] numbers: {pt!r}"
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
