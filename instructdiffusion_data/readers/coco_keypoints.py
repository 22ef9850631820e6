"""COCO person keypoints: ``annotations/person_keypoints_<split>.json`` and the image folder.

One record per person annotation, in file order, id ``<image_id>_<ann_id>``. ``keypoints`` is a
flat list of 17 (x, y, v) triples with v = 0 (not labelled), 1 (labelled, not visible), 2 (visible);
``num_keypoints`` counts v > 0. Joint names come from the file's person category
(``categories[].keypoints``) and are made readable ("left_shoulder" -> "left shoulder").

The file is streamed (the train2017 file is 238 MB): memory holds the image index and one annotation
(:mod:`._keypoints`). Crowd annotations (``iscrowd: 1``) are dropped rows (``CROWD``) unless
``include_crowd``; people with no labelled joint are dropped rows (``NO_JOINTS``); any malformed field
drops its record naming file, record and field.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._keypoints import COCO_JOINTS, CocoKeypointsBase, CocoStyleKeypoints

__all__ = ["COCO_JOINTS", "CocoKeypointsConfig", "CocoKeypointsSource", "SOURCE"]


@dataclass
class CocoKeypointsConfig(CocoKeypointsBase):
    annotations: str = ""  # person_keypoints_<split>.json
    images: str = ""  # folder holding the split's images (file_name is relative to it)
    dataset: str = "coco"
    image_set: str = "coco"  # what image_id numbers (idd overlap compares outputs of the same image set)


class CocoKeypointsSource(CocoStyleKeypoints):
    name = "coco_keypoints"
    Config = CocoKeypointsConfig
    joint_ids = COCO_JOINTS

    @property
    def image_set(self) -> str | None:  # type: ignore[override]
        return self.config.image_set or None


SOURCE = CocoKeypointsSource
