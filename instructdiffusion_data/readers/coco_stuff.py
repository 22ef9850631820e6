"""COCO-Stuff (164k) semantic segmentation, in either released form:

* ``json``: ``stuff_<split>.json`` (COCO format; ``segmentation`` is a compressed RLE
  ``{"size": [h, w], "counts": str}``; category ids 92-182 plus 183 "other"), optionally together
  with ``instances_<split>.json`` for the thing classes (polygons, or RLE for crowds).
* ``pixelmap``: ``stuffthingmaps_trainval2017/<split>/<image id>.png`` single-channel PNGs holding
  ``id - 1`` (0-181) per pixel and 255 for unlabeled.

One record per image. Category names come from the bundled 182-class label list
(``instructdiffusion_data/data/cocostuff_labels.txt``); id 183 "other" is not a class and is ignored.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..config import check_path
from ..errors import ConfigError
from ..schema import Row
from ._base import RecordSource, SourceConfig
from ._coco import bad_record, clean_name, cocostuff_labels, image_index, load_json, record_row, require_keys

OTHER_ID = 183


@dataclass
class CocoStuffConfig(SourceConfig):
    images: str = ""
    annotations: list[str] = field(default_factory=list)  # json form: stuff and/or instances files
    pixelmaps: str | None = None  # pixel-map form: folder of <stem>.png label maps
    dataset: str = "cocostuff"


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

    def records(self) -> Iterator[Row]:
        if self.config.pixelmaps:
            yield from self._pixelmap_records()
        else:
            yield from self._json_records()

    def _pixelmap_records(self) -> Iterator[Row]:
        cfg = self.config
        for img in sorted(Path(cfg.images).iterdir()):
            if img.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            lm = Path(cfg.pixelmaps) / f"{img.stem}.png"
            rid = img.stem
            if not lm.is_file():
                yield bad_record(cfg.dataset, "semantic_seg", rid, "label map missing for image", str(lm.resolve()),
                                 image=str(img.resolve()))
                continue
            yield record_row(cfg.dataset, "semantic_seg", rid, {
                "file": str(img.resolve()), "image_id": rid, "labelmap": str(lm.resolve()), "label_offset": 1,
            })

    def _json_records(self) -> Iterator[Row]:
        cfg = self.config
        labels = cocostuff_labels()
        images: dict = {}
        per_image: dict = defaultdict(list)
        problems: dict = {}
        for i, path in enumerate(cfg.annotations):
            where = f"source.annotations[{i}]"
            doc = load_json(path, where)
            require_keys(doc, ("images", "annotations", "categories"), path, where)
            images.update(image_index(doc))
            file_cats = {c["id"]: c["name"] for c in doc["categories"]}
            for a in doc["annotations"]:
                cid = a.get("category_id")
                if cid == OTHER_ID:
                    continue
                if cid not in labels and cid not in file_cats:
                    problems.setdefault(a.get("image_id"), (f"unknown category id {cid}", str(Path(path).resolve())))
                    continue
                seg = a.get("segmentation")
                if isinstance(seg, dict):
                    entry = {"rle": seg}
                elif isinstance(seg, list):
                    entry = {"polygons": seg}
                else:
                    problems.setdefault(a.get("image_id"), ("annotation has no segmentation", str(Path(path).resolve())))
                    continue
                name = clean_name(labels.get(cid) or file_cats[cid])
                per_image[a.get("image_id")].append({"category_id": cid, "name": name, "annotation_id": a.get("id"), **entry})
        for image_id in sorted(set(per_image) | set(problems), key=lambda x: (str(type(x)), x)):
            img = images.get(image_id)
            if img is None:
                yield bad_record(cfg.dataset, "semantic_seg", image_id, "annotation points at an unknown image id",
                                 (problems.get(image_id) or (None, None))[1], "image_id")
                continue
            path = str((Path(cfg.images) / img["file_name"]).resolve())
            if image_id in problems:
                reason, ann_file = problems[image_id]
                yield bad_record(cfg.dataset, "semantic_seg", image_id, reason, ann_file, "category_id", image=path)
                continue
            yield record_row(cfg.dataset, "semantic_seg", image_id, {
                "file": path, "image_id": image_id, "width": img.get("width"), "height": img.get("height"),
                "segments": per_image[image_id],
            })


SOURCE = CocoStuffSource
