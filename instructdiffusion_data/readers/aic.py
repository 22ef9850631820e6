"""AI Challenger human keypoints (AIC), in its original format or converted to COCO format.

Original (``keypoint_train_annotations_20170909.json``): a list of
``{"image_id": "<sha1>", "url": ..., "keypoint_annotations": {"human1": [x, y, v] * 14},
"human_annotations": {"human1": [x1, y1, x2, y2]}}``, images at ``<images>/<image_id>.jpg``.
Visibility: 1 = visible, 2 = not visible (occluded), 3 = not labelled -> COCO 2, 1, 0.

COCO-converted (mmpose's ``aic_train.json``): ``images``/``annotations``/``categories`` with the
same 14 joints and COCO's visibility convention already.

``format: auto`` tells them apart (a list is the original, a mapping with ``annotations`` the
COCO form). Joint order: right shoulder, right elbow, right wrist, left shoulder, left elbow,
left wrist, right hip, right knee, right ankle, left hip, left knee, left ankle, top of the head, neck.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from ..errors import ConfigError, RecordError
from ..schema import Row
from ._base import RecordSource, SourceConfig
from . import _keypoints as kp

AIC_JOINTS = ["right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
              "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top", "neck"]
AIC_TO_COCO_V = {1: 2, 2: 1, 3: 0}


@dataclass
class AICConfig(SourceConfig):
    annotations: str = ""  # original json list, or the COCO-converted json
    images: str = ""  # folder of the images
    format: Literal["auto", "original", "coco"] = "auto"
    image_ext: str = ".jpg"  # original format: image file = <images>/<image_id><image_ext>


def _human_order(name: str) -> tuple:
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else 1 << 30, name)


class AICSource(RecordSource):
    name = "aic"
    Config = AICConfig

    def validate(self) -> None:
        from ..config import check_path

        if not self.config.annotations or not self.config.images:
            raise ConfigError("source: 'annotations' (AIC json) and 'images' (folder) are required")
        check_path(self.config.annotations, "source.annotations", kind="file")
        check_path(self.config.images, "source.images", kind="dir")

    def records(self) -> Iterator[Row]:
        data = kp.load_json(Path(self.config.annotations), "source.annotations")
        fmt = self.config.format
        if fmt == "auto":
            fmt = "original" if isinstance(data, list) else "coco" if isinstance(data, dict) and "annotations" in data else ""
        if fmt == "coco":
            if not isinstance(data, dict) or "annotations" not in data:
                raise ConfigError(f"source.annotations: {self.config.annotations}: not a COCO-format file (format: coco)")
            yield from kp.iter_coco_people(data, Path(self.config.images).resolve(), "aic", AIC_JOINTS,
                                           lambda v: max(0, min(int(v), 2)))
        elif fmt == "original":
            if not isinstance(data, list):
                raise ConfigError(f"source.annotations: {self.config.annotations}: expected a list (format: original)")
            yield from self._original(data)
        else:
            raise ConfigError(f"source.annotations: {self.config.annotations}: neither AIC's original list nor COCO format")

    def _original(self, data: list) -> Iterator[Row]:
        images_dir = Path(self.config.images).resolve()
        names = [kp.readable(j) for j in AIC_JOINTS]
        for idx, ent in enumerate(data):
            image_id = str(ent.get("image_id", "")) if isinstance(ent, dict) else ""
            if not image_id:
                yield kp.bad_record("aic", f"entry{idx}", f"entry has no image_id (record=entry{idx})", entry=idx)
                continue
            file = images_dir / f"{image_id}{self.config.image_ext}"
            kpa = ent.get("keypoint_annotations") or {}
            boxes = ent.get("human_annotations") or {}
            humans = sorted(set(kpa) | set(boxes), key=_human_order)
            try:
                w, h = kp.image_size(file, image_id)
            except RecordError as e:
                for hn in humans or ["human?"]:
                    yield kp.bad_record("aic", f"{image_id}/{hn}", str(e), str(file), image_id=image_id, human=hn)
                continue
            people = []
            for hn in humans:
                b = boxes.get(hn)
                if b and len(b) == 4:
                    people.append(kp.clip_box([b[0], b[1], b[2] - b[0], b[3] - b[1]], w, h))
            for hn in humans:
                rid = f"{image_id}/{hn}"
                vals = kpa.get(hn)
                if not vals or len(vals) != 42:
                    n = len(vals) if vals else 0
                    yield kp.bad_record("aic", rid, f"expected 42 keypoint values, got {n} (record={rid})", str(file),
                                        image_id=image_id, human=hn)
                    continue
                joints = []
                bad_v = None
                for i in range(14):
                    x, y, v = vals[3 * i: 3 * i + 3]
                    if int(v) not in AIC_TO_COCO_V:
                        bad_v = v
                    cv = AIC_TO_COCO_V.get(int(v), 0)
                    joints.append({"name": names[i], "x": float(x) if cv else 0.0, "y": float(y) if cv else 0.0, "v": cv})
                if bad_v is not None:
                    yield kp.bad_record("aic", rid, f"visibility {bad_v} not in 1/2/3 (record={rid})", str(file),
                                        image_id=image_id, human=hn)
                    continue
                b = boxes.get(hn)
                if b and len(b) == 4:
                    bbox = kp.clip_box([b[0], b[1], b[2] - b[0], b[3] - b[1]], w, h)
                else:
                    bbox = kp.clip_box(kp.joints_bbox(joints) or [0, 0, w, h], w, h)
                yield kp.record("aic", rid, file, w, h, joints, bbox, people, image_id=image_id, human=hn,
                                url=ent.get("url"))


SOURCE = AICSource
