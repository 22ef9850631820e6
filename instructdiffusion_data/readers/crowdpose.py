"""CrowdPose (``crowdpose_{train,val,trainval,test}.json``, COCO format, images in ``images/``).

14 joints: left/right shoulder, elbow, wrist, hip, knee, ankle, then ``head`` (the top of the head)
and ``neck``. ``num_keypoints`` counts only the first 12, so this reader counts labelled joints
itself. Images carry ``crowdIndex`` (kept in ``meta["crowd_index"]``).

The third value of each joint is, per the dataset authors, a *label* flag (0 = not labelled); its
1/2 values do not separate occluded from visible reliably (head and neck are always 1).
``visibility: coco`` (default) passes 0/1/2 through unchanged; ``label_flag`` maps every labelled
joint to 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from ..errors import ConfigError
from ..schema import Row
from ._base import RecordSource, SourceConfig
from . import _keypoints as kp

CROWDPOSE_JOINTS = ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck"]


@dataclass
class CrowdPoseConfig(SourceConfig):
    annotations: str = ""  # crowdpose_train.json
    images: str = ""  # folder of the images
    visibility: Literal["coco", "label_flag"] = "coco"


class CrowdPoseSource(RecordSource):
    name = "crowdpose"
    Config = CrowdPoseConfig

    def validate(self) -> None:
        from ..config import check_path

        if not self.config.annotations or not self.config.images:
            raise ConfigError("source: 'annotations' (crowdpose_*.json) and 'images' (folder) are required")
        check_path(self.config.annotations, "source.annotations", kind="file")
        check_path(self.config.images, "source.images", kind="dir")

    def records(self) -> Iterator[Row]:
        data = kp.load_json(Path(self.config.annotations), "source.annotations")
        if not isinstance(data, dict) or "annotations" not in data:
            raise ConfigError(f"source.annotations: {self.config.annotations}: not a COCO-format keypoint file")
        label_flag = self.config.visibility == "label_flag"

        def vis(v: int) -> int:
            if v <= 0:
                return 0
            return 2 if label_flag else min(v, 2)

        def extra(img: dict, ann: dict) -> dict:
            return {"crowd_index": img.get("crowdIndex"), "num_keypoints": ann.get("num_keypoints")}

        yield from kp.iter_coco_people(data, Path(self.config.images).resolve(), "crowdpose", CROWDPOSE_JOINTS, vis,
                                       extra_of=extra)


SOURCE = CrowdPoseSource
