"""AI Challenger human keypoints (AIC), in its original format or converted to COCO format.

Original (``keypoint_train_annotations_20170909.json``): a list of
``{"image_id": "<sha1>", "url": ..., "keypoint_annotations": {"human1": [x, y, v] * 14},
"human_annotations": {"human1": [x1, y1, x2, y2]}}``, images at ``<images>/<image_id>.jpg``.
Visibility: 1 = visible, 2 = not visible (occluded), 3 = not labelled -> COCO 2, 1, 0.
Record id ``<image_id>_<human>``; the list is streamed one entry at a time.

COCO-converted (mmpose's ``aic_train.json``): ``images``/``annotations``/``categories`` with the
same 14 joints and COCO's visibility convention already; read by the COCO-style keypoint parser
shared with COCO and CrowdPose (:mod:`._keypoints`, record id ``<image_id>_<ann_id>``).

``format: auto`` tells them apart by the file's first character (``[``: the original list, ``{``: the
COCO form). Joint order: right shoulder, right elbow, right wrist, left shoulder, left elbow,
left wrist, right hip, right knee, right ankle, left hip, left knee, left ankle, top of the head, neck.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Literal

from ..errors import ConfigError, RecordError
from ..schema import Row
from ._base import BAD_FIELD, EXCLUDED, NO_IMAGE_FILE, bad_record, image_path
from ._coco import DUPLICATE_ID, Repeats, local_or_uri
from ._json_stream import JsonStream
from ._keypoints import (BAD_VISIBILITY, KEYPOINT_COUNT, UNREADABLE_IMAGE, CocoKeypointsBase, CocoStyleKeypoints, clip_box,
                         image_size, joints_bbox, number_problem, person_row, readable)

AIC_JOINTS = ["right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
              "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top", "neck"]
AIC_TO_COCO_V = {1: 2, 2: 1, 3: 0}


@dataclass
class AICConfig(CocoKeypointsBase):
    annotations: str = ""  # original json list, or the COCO-converted json
    images: str = ""  # folder of the images
    format: Literal["auto", "original", "coco"] = "auto"
    image_ext: str = ".jpg"  # original format: image file = <images>/<image_id><image_ext>
    dataset: str = "aic"


def _human_order(name: str) -> tuple:
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else 1 << 30, name)


class AICSource(CocoStyleKeypoints):
    name = "aic"
    Config = AICConfig
    joint_ids = AIC_JOINTS

    def visibility(self, v: Any) -> int | None:
        return int(v) if v in (0, 1, 2) else None

    def records(self) -> Iterator[Row]:
        stream = JsonStream(self.config.annotations, "source.annotations")
        fmt = self.config.format
        first = stream.first_char()
        if fmt == "auto":
            fmt = "original" if first == "[" else "coco" if first == "{" else ""
        if fmt == "coco":
            if first != "{":
                raise ConfigError(f"source.annotations: {self.config.annotations}: not a COCO-format file "
                                  f"(format: coco expects a JSON object)")
            yield from super().records()
        elif fmt == "original":
            if first != "[":
                raise ConfigError(f"source.annotations: {self.config.annotations}: expected a list (format: original)")
            yield from self._original(stream)
        else:
            raise ConfigError(f"source.annotations: {self.config.annotations}: neither AIC's original list nor "
                              f"COCO format")

    def _original(self, stream: JsonStream) -> Iterator[Row]:
        cfg = self.config
        ann_file = local_or_uri(cfg.annotations)
        names = [readable(j) for j in AIC_JOINTS]
        repeats = Repeats()
        for image_id in stream.items("item.image_id"):
            if isinstance(image_id, str) and image_id:
                repeats.note(image_id)
        repeats.freeze()
        for idx, ent in enumerate(stream.items("item")):
            self.stats["entries"] += 1
            yield from self._entry(ent, idx, ann_file, names, repeats)
        if stream.nonstandard:
            self.stats["nonstandard_numbers"] = stream.nonstandard

    def _entry(self, ent: Any, idx: int, ann_file: str, names: list[str], repeats: Repeats) -> Iterator[Row]:
        cfg, ds = self.config, self.dataset
        image_id = ent.get("image_id") if isinstance(ent, dict) else None
        if not isinstance(image_id, str) or not image_id:
            yield bad_record(ds, "keypoint", f"entries[{idx}]", BAD_FIELD, ann_file,
                             "image_id" if isinstance(ent, dict) else "entry", entry=idx)
            return
        kpa, boxes = ent.get("keypoint_annotations"), ent.get("human_annotations", {})
        if not isinstance(kpa, dict) or not isinstance(boxes, (dict, type(None))):
            yield bad_record(ds, "keypoint", image_id, BAD_FIELD, ann_file,
                             "keypoint_annotations" if not isinstance(kpa, dict) else "human_annotations",
                             image_id=image_id, entry=idx)
            return
        boxes = boxes or {}
        humans = sorted(set(kpa) | set(boxes), key=_human_order)
        if not humans:
            yield bad_record(ds, "keypoint", image_id, BAD_FIELD, ann_file, "keypoint_annotations",
                             detail={"problem": "no people"}, image_id=image_id, entry=idx)
            return
        file = image_path(cfg.images, f"{image_id}{cfg.image_ext}")

        def bad(hn: str, reason: str, field: str | None, at: str = ann_file, **detail: Any) -> Row:
            return bad_record(ds, "keypoint", f"{image_id}_{hn}", reason, at, field, detail=detail,
                              image_id=image_id, human=hn, entry=idx, image=file)

        if repeats.repeat(image_id):  # a second entry of the same image: its ids would repeat
            self.stats["duplicate_ids"] += 1
            for hn in humans:
                yield bad_record(ds, "keypoint", f"{image_id}_{hn}#entries[{idx}]", DUPLICATE_ID, ann_file, "image_id",
                                 image_id=image_id, human=hn, entry=idx)
            return
        if self.excluded(image_id):
            for hn in humans:
                yield bad(hn, EXCLUDED, "image_id")
            return
        if file is None:
            for hn in humans:
                yield bad(hn, BAD_FIELD, "image_id")
            return
        try:
            w, h = image_size(file, image_id)
        except RecordError as e:
            for hn in humans:
                if e.reason == NO_IMAGE_FILE:
                    yield bad(hn, NO_IMAGE_FILE, "image_id", at=file)
                else:
                    yield bad(hn, UNREADABLE_IMAGE, "image_id", at=file, error=e.field)
            return
        people = []
        for hn in humans:
            b = boxes.get(hn)
            if number_problem(b, 4) is None:
                people.append(clip_box([b[0], b[1], b[2] - b[0], b[3] - b[1]], w, h))
        for hn in humans:
            vals = kpa.get(hn)
            if not isinstance(vals, list):
                yield bad(hn, BAD_FIELD, "keypoint_annotations")
                continue
            if len(vals) != 3 * len(names):
                yield bad(hn, KEYPOINT_COUNT, "keypoint_annotations", expected=3 * len(names), got=len(vals))
                continue
            why = number_problem(vals)
            if why:
                yield bad(hn, why, "keypoint_annotations")
                continue
            joints, bad_v = [], None
            for i, nm in enumerate(names):
                x, y, v = vals[3 * i: 3 * i + 3]
                cv = AIC_TO_COCO_V.get(v) if float(v).is_integer() else None
                if cv is None:
                    bad_v = v
                    break
                joints.append({"name": nm, "x": float(x) if cv else 0.0, "y": float(y) if cv else 0.0, "v": cv})
            if bad_v is not None:
                yield bad(hn, BAD_VISIBILITY, "keypoint_annotations", value=bad_v)
                continue
            b = boxes.get(hn)
            if b is not None:
                why = number_problem(b, 4)
                if why:
                    yield bad(hn, why, "human_annotations")
                    continue
                bbox = clip_box([b[0], b[1], b[2] - b[0], b[3] - b[1]], w, h)
            else:
                bbox = clip_box(joints_bbox(joints) or [0, 0, w, h], w, h)
            yield person_row(ds, f"{image_id}_{hn}", file, w, h, joints, bbox, people, ann_file=ann_file,
                             field="keypoint_annotations", image_id=image_id, human=hn,
                             url=ent.get("url") if isinstance(ent.get("url"), str) else None)


SOURCE = AICSource
