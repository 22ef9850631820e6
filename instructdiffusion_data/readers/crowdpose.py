"""CrowdPose (``crowdpose_{train,val,trainval,test}.json``, COCO format, images in ``images/``).

14 joints: left/right shoulder, elbow, wrist, hip, knee, ankle, then ``head`` (the top of the head)
and ``neck``. ``num_keypoints`` counts only the first 12, so this reader counts labelled joints
itself. Images carry ``crowdIndex`` (kept in ``meta["crowd_index"]``).

The third value of each joint is, per the dataset authors, a *label* flag (0 = not labelled); its
1/2 values do not separate occluded from visible reliably (head and neck are always 1).
``visibility: coco`` (default) passes 0/1/2 through unchanged; ``label_flag`` maps every labelled
joint to 2.

The file is read by the COCO-style keypoint parser shared with COCO and AIC (:mod:`._keypoints`):
streamed, one record per annotation in file order, id ``<image_id>_<ann_id>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ._keypoints import CocoKeypointsBase, CocoStyleKeypoints, visibility_clamped

CROWDPOSE_JOINTS = ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck"]


@dataclass
class CrowdPoseConfig(CocoKeypointsBase):
    annotations: str = ""  # crowdpose_train.json
    images: str = ""  # folder of the images
    visibility: Literal["coco", "label_flag"] = "coco"
    dataset: str = "crowdpose"


class CrowdPoseSource(CocoStyleKeypoints):
    name = "crowdpose"
    Config = CrowdPoseConfig
    joint_ids = CROWDPOSE_JOINTS
    image_extra = "crowdIndex"

    def visibility(self, v: Any) -> int | None:
        cv = visibility_clamped(v)
        if cv and self.config.visibility == "label_flag":
            return 2
        return cv

    def extra(self, image_extra: Any, ann: dict) -> dict:
        nk = ann.get("num_keypoints")
        return {"crowd_index": image_extra,
                "num_keypoints": nk if isinstance(nk, int) and not isinstance(nk, bool) else None}


SOURCE = CrowdPoseSource
