"""SA-1B (Segment Anything 1B) regions as object-replacement queries.

Layout (as extracted from the ``sa_000000.tar`` … archives): folders holding, per image,
``sa_<id>.jpg`` and ``sa_<id>.json``::

    {"image": {"image_id": 1, "width": 1500, "height": 2250, "file_name": "sa_1.jpg"},
     "annotations": [{"id": 7, "segmentation": {"size": [h, w], "counts": "<compressed RLE>"},
                      "area": 1234, "bbox": [x, y, w, h], "predicted_iou": 0.93,
                      "stability_score": 0.96, "point_coords": [[x, y]], "crop_box": [x, y, w, h]}]}

An *item* is one image: ``[sa_<id>.json, sa_<id>.jpg]``, listed by name under ``root`` (path or URI,
searched recursively), never opened on the driver; the worker reads the json. One record per
annotation (``record_id = "<image_id>:<ann id>"``); masks stay as RLE in
``meta["region"]["mask"]["rle"]`` and are decoded with pycocotools where pixels are needed. SA-1B
masks carry no class: ``label`` is None (a captioner names them).

Every annotation ends in a row. Regions failing
:class:`~instructdiffusion_data.replace.regions.RegionSelect` are dropped with the rule; an
annotation with a missing, mistyped or non-finite field is dropped naming the field; an image-level
fault (image missing, bad ``image`` fields, excluded id) drops each of its annotations with that
fault; a json that cannot be read (or a jpg without json) is one dropped row named after the file.
Dropped rows keep ids, file and reason, never the RLE.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..config import check_path
from ..replace.regions import RegionSelect
from ..schema import Row
from ..storage import Location, child_path, exists, read_bytes
from . import _pairs, _regions
from ._base import BAD_FIELD, EXCLUDED, NO_IMAGE_FILE, NOT_FINITE, FileGroupSource, SourceConfig, finite, image_path
from ._edit import DUPLICATE_ID, unique_id

log = logging.getLogger(__name__)

DATASET = "sa1b"
NO_ANNOTATIONS = "annotation file missing"
BAD_JSON = "annotation file is not valid JSON"


@dataclass
class Sa1bConfig(SourceConfig):
    root: str = "demo_data/sa1b"  # folder with sa_<id>.json + sa_<id>.jpg (searched recursively)
    pattern: str = "sa_*.json"
    select: RegionSelect = field(default_factory=RegionSelect)


def _natural(stem: str) -> tuple:
    tail = stem.split("_")[-1]
    return (int(tail) if tail.isdigit() else -1, stem)


def _number(v: Any, field_name: str, *, optional: bool = False) -> tuple | None:
    """The fault of a numeric field (None when fine)."""
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return BAD_FIELD, field_name
    return None if finite(v) else (NOT_FINITE, field_name)


def _region(a: Any, width: int, height: int) -> tuple[dict | None, tuple | None]:
    """(region dict, fault) of one annotation."""
    if not isinstance(a, dict):
        return None, (BAD_FIELD, "annotation")
    seg = a.get("segmentation")
    if not isinstance(seg, dict):
        return None, (BAD_FIELD, "segmentation")
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in size)
            and size == [height, width]):
        return None, (BAD_FIELD, "segmentation.size")
    counts = seg.get("counts")
    if not (isinstance(counts, str) and counts) and not (
            isinstance(counts, list) and counts and all(isinstance(v, int) and not isinstance(v, bool) for v in counts)):
        return None, (BAD_FIELD, "segmentation.counts")
    box = a.get("bbox")
    if not (isinstance(box, list) and len(box) == 4):
        return None, (BAD_FIELD, "bbox")
    for fault in (*(_number(v, "bbox") for v in box), _number(a.get("area"), "area"),
                  _number(a.get("predicted_iou"), "predicted_iou", optional=True),
                  _number(a.get("stability_score"), "stability_score", optional=True)):
        if fault:
            return None, fault
    if a["area"] < 0:
        return None, (BAD_FIELD, "area")
    x, y, w, h = (float(v) for v in box)
    piou, stab = a.get("predicted_iou"), a.get("stability_score")
    return {
        "label": None, "label_id": None,
        "bbox": [round(x), round(y), round(w), round(h)],
        "area_frac": float(a["area"]) / float(width * height),
        "predicted_iou": float(piou) if piou is not None else None,
        "stability_score": float(stab) if stab is not None else None,
        "mask": {"rle": {"size": list(size), "counts": counts}},
    }, None


class Sa1bSource(FileGroupSource):
    name = "sa1b"
    Config = Sa1bConfig

    def validate(self) -> None:
        check_path(self.config.root, "source.root", kind="dir")

    # -- listing (driver) -------------------------------------------------------------------------
    def _folders(self, folder: str) -> Iterator[str]:
        yield folder
        for d in Location(folder).dirs():
            yield from self._folders(child_path(folder, d))

    def items(self) -> Iterator[list[str]]:
        pattern = self.config.pattern
        for folder in self._folders(self.config.root):
            names = set(Location(folder).names())
            stems = {n[:-5] for n in names if n.endswith(".json") and fnmatch.fnmatch(n, pattern)}
            stems |= {n[:-4] for n in names if n.endswith(".jpg") and fnmatch.fnmatch(n[:-4] + ".json", pattern)}
            for stem in sorted(stems, key=_natural):
                yield [child_path(folder, f"{stem}{ext}") for ext in (".json", ".jpg") if f"{stem}{ext}" in names]

    # -- one image (worker) -----------------------------------------------------------------------
    def read_item(self, item: list[str]) -> Iterator[Row]:
        jf = next((p for p in item if p.endswith(".json")), None)
        stem = _pairs.stem(item[0])
        if jf is None:
            self.stats["images_without_json"] += 1
            yield _regions.bad_region(DATASET, stem, NO_ANNOTATIONS, item[0], "json")
            return
        try:
            doc = json.loads(read_bytes(jf))
        except FileNotFoundError:
            yield _regions.bad_region(DATASET, stem, NO_ANNOTATIONS, jf, "json")
            return
        except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            yield _regions.bad_region(DATASET, stem, BAD_JSON, jf)
            return
        anns = doc.get("annotations") if isinstance(doc, dict) else None
        if not isinstance(anns, list):
            yield _regions.bad_region(DATASET, stem, BAD_FIELD, jf, "annotations" if isinstance(doc, dict) else "document")
            return
        folder = jf.rsplit("/", 1)[0]
        img = doc.get("image")
        fault, image_id, width, height, image_file = None, stem, 0, 0, None
        if not isinstance(img, dict):
            fault = (BAD_FIELD, "image")
        else:
            iid = img.get("image_id")
            if isinstance(iid, (int, str)) and not isinstance(iid, bool) and str(iid).strip():
                image_id = str(iid)
            else:
                fault = (BAD_FIELD, "image.image_id")
            for key in ("width", "height"):
                v = img.get(key)
                if fault is None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                    fault = (NOT_FINITE if isinstance(v, float) and not finite(v) else BAD_FIELD, f"image.{key}")
            if fault is None:
                width, height = img["width"], img["height"]
                image_file = image_path(folder, img.get("file_name", f"{stem}.jpg"))
                if image_file is None:
                    fault = (BAD_FIELD, "image.file_name")
                elif not exists(image_file, "file"):
                    fault = (NO_IMAGE_FILE, "image.file_name")
                elif self.excluded(image_id):
                    self.stats["excluded"] += len(anns)
                    fault = (EXCLUDED, "image.image_id")
        base = {"file": image_file or jf, "width": width, "height": height, "image_id": image_id,
                "annotation_file": jf}
        if fault is None:
            self.stats["images"] += 1
        entries: list[tuple[str, dict | None, tuple | None, dict]] = []
        seen: set[str] = set()
        for i, a in enumerate(anns):
            aid = a.get("id") if isinstance(a, dict) else None
            ok_id = isinstance(aid, (int, str)) and not isinstance(aid, bool) and str(aid).strip()
            rid, dup = unique_id(f"{image_id}:{aid}" if ok_id else f"{image_id}:#{i}", seen, i)
            row_fault = fault or ((DUPLICATE_ID, "id") if dup else None)
            if row_fault is None and not ok_id:
                row_fault = (BAD_FIELD, "id")
            reg = None
            if row_fault is None:
                reg, row_fault = _region(a, width, height)
            if row_fault is not None and row_fault[1] != "image.file_name":
                row_fault = (*row_fault[:2], {"file": jf})  # the fault is in the json
            self.stats["regions"] += 1
            entries.append((rid, {"id": str(aid), **reg} if reg else None, row_fault, {"annotation": i}))
        yield from _regions.region_rows(DATASET, entries, width, height, self.config.select, base)


SOURCE = Sa1bSource
