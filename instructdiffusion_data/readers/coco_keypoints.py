"""COCO person keypoints: ``annotations/person_keypoints_<split>.json`` and the image folder.

One record per person annotation. ``keypoints`` is a flat list of 17 (x, y, v) triples with
v = 0 (not labelled), 1 (labelled, not visible), 2 (visible); ``num_keypoints`` counts v > 0.
Joint names come from the file's person category (``categories[].keypoints``) and are made readable
("left_shoulder" -> "left shoulder").
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..config import check_path
from ..storage import child_path, is_uri
from ..schema import Row
from ._base import RecordSource, SourceConfig
from ._coco import bad_record, image_index, load_json, record_row, require_keys

COCO_JOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
               "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
               "right_knee", "left_ankle", "right_ankle"]


@dataclass
class CocoKeypointsConfig(SourceConfig):
    annotations: str = ""  # person_keypoints_<split>.json
    images: str = ""  # folder holding the split's images (file_name is relative to it)
    dataset: str = "coco"
    include_crowd: bool = False


def readable(joint: str) -> str:
    return joint.replace("_", " ").strip()


class CocoKeypointsSource(RecordSource):
    name = "coco_keypoints"
    Config = CocoKeypointsConfig

    def validate(self) -> None:
        check_path(self.config.annotations or None, "source.annotations", kind="file")
        check_path(self.config.images or None, "source.images", kind="dir")
        if not self.config.annotations or not self.config.images:
            from ..errors import ConfigError

            raise ConfigError("source: 'annotations' and 'images' are required")

    def records(self) -> Iterator[Row]:
        cfg = self.config
        doc = load_json(cfg.annotations, "source.annotations")
        require_keys(doc, ("images", "annotations", "categories"), cfg.annotations, "source.annotations")
        images = image_index(doc)
        cats = {c["id"]: c for c in doc["categories"]}
        people: dict[int, list] = defaultdict(list)
        for a in doc["annotations"]:
            if a.get("category_id") in cats and a.get("bbox") and (cfg.include_crowd or not a.get("iscrowd")):
                people[a["image_id"]].append(a["bbox"])
        ann_file = cfg.annotations if is_uri(cfg.annotations) else str(Path(cfg.annotations).resolve())
        for a in sorted(doc["annotations"], key=lambda a: (a.get("image_id", -1), a.get("id", -1))):
            rid = f"{a.get('image_id')}_{a.get('id')}"
            if a.get("iscrowd") and not cfg.include_crowd:
                continue
            img = images.get(a.get("image_id"))
            if img is None:
                yield bad_record(cfg.dataset, "keypoint", rid, "annotation points at an unknown image id",
                                 ann_file, "image_id")
                continue
            path = child_path(cfg.images, img["file_name"])
            cat = cats.get(a.get("category_id"))
            if cat is None:
                yield bad_record(cfg.dataset, "keypoint", rid, f"unknown category id {a.get('category_id')}",
                                 ann_file, "category_id", image=path)
                continue
            names = cat.get("keypoints") or COCO_JOINTS
            kps = a.get("keypoints") or []
            if len(kps) != 3 * len(names):
                yield bad_record(cfg.dataset, "keypoint", rid, f"keypoints has {len(kps)} values, expected {3 * len(names)}",
                                 ann_file, "keypoints", image=path)
                continue
            joints = [{"name": readable(names[i]), "x": float(kps[3 * i]), "y": float(kps[3 * i + 1]), "v": int(kps[3 * i + 2])}
                      for i in range(len(names))]
            if not any(j["v"] > 0 for j in joints):
                yield bad_record(cfg.dataset, "keypoint", rid, "person has no labelled joints", ann_file,
                                 "num_keypoints", image=path)
                continue
            yield record_row(cfg.dataset, "keypoint", rid, {
                "file": path, "annotation_file": ann_file, "image_id": img["id"], "annotation_id": a.get("id"),
                "width": img.get("width"), "height": img.get("height"), "joints": joints, "bbox": a.get("bbox"),
                "people": people.get(img["id"], []),
            })


SOURCE = CocoKeypointsSource
