"""Shared helpers of the keypoint readers beyond COCO (MPII, CrowdPose, AI Challenger).

Every keypoint reader emits one record row per annotated person with the payload the renderer
reads (see the brief's "record conventions"): ``joints`` as ``{"name", "x", "y", "v"}`` with COCO's
visibility convention (0 = not labelled, 1 = labelled but not visible, 2 = visible), the person's
``bbox`` ``[x, y, w, h]`` and ``people``, the boxes of every person in the image. Joint names are
the plain-English instruction vocabulary ("left shoulder"); joints without a COCO counterpart get a
readable name ("top of the head", "neck", "pelvis", "chest").
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import RecordError
from ..schema import Row, drop, make_key, new_row

log = logging.getLogger(__name__)

# Dataset joint identifiers (as their json files or docs spell them) -> instruction vocabulary.
JOINT_NAMES: dict[str, str] = {
    "nose": "nose",
    "left_eye": "left eye",
    "right_eye": "right eye",
    "left_ear": "left ear",
    "right_ear": "right ear",
    "left_shoulder": "left shoulder",
    "right_shoulder": "right shoulder",
    "left_elbow": "left elbow",
    "right_elbow": "right elbow",
    "left_wrist": "left wrist",
    "right_wrist": "right wrist",
    "left_hip": "left hip",
    "right_hip": "right hip",
    "left_knee": "left knee",
    "right_knee": "right knee",
    "left_ankle": "left ankle",
    "right_ankle": "right ankle",
    # no COCO counterpart: readable names, used verbatim in the instruction
    "head": "top of the head",  # CrowdPose's "head" is the top of the head
    "head_top": "top of the head",
    "top_head": "top of the head",
    "neck": "neck",
    "upper_neck": "neck",
    "thorax": "chest",
    "pelvis": "pelvis",
}


def readable(name: str) -> str:
    """Instruction name of a dataset joint id ("l_ankle", "left_ankle", "upper neck" ...)."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key.startswith("l_"):
        key = "left_" + key[2:]
    elif key.startswith("r_"):
        key = "right_" + key[2:]
    return JOINT_NAMES.get(key, key.replace("_", " "))


def image_size(path: Path, record: str | None = None) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except FileNotFoundError:
        raise RecordError("image file missing", file=str(path), record=record) from None
    except (UnidentifiedImageError, OSError) as e:
        raise RecordError(f"image file unreadable ({type(e).__name__})", file=str(path), record=record) from None


def joints_bbox(joints: list[dict]) -> list[float] | None:
    pts = [(j["x"], j["y"]) for j in joints if j["v"] > 0]
    if not pts:
        return None
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def clip_box(box: list[float], w: int, h: int) -> list[float]:
    x0, y0 = max(0.0, float(box[0])), max(0.0, float(box[1]))
    x1, y1 = min(float(w), float(box[0]) + float(box[2])), min(float(h), float(box[1]) + float(box[3]))
    return [round(x0, 2), round(y0, 2), round(max(0.0, x1 - x0), 2), round(max(0.0, y1 - y0), 2)]


def record(dataset: str, record_id: str, file: Path, width: int, height: int, joints: list[dict],
           bbox: list[float], people: list[list[float]], **extra: Any) -> Row:
    meta = {"file": str(file), "record_id": record_id, "width": width, "height": height, "joints": joints,
            "bbox": bbox, "people": people, **extra}
    row = new_row(key=make_key(dataset, record_id, "rec"), task="keypoint", dataset=dataset, meta=meta)
    if not any(j["v"] > 0 for j in joints):
        drop(row, f"no labelled joints (record={record_id})")
    return row


def bad_record(dataset: str, record_id: str, reason: str, file: str | None = None, **extra: Any) -> Row:
    row = new_row(key=make_key(dataset, record_id, "rec"), task="keypoint", dataset=dataset,
                  meta={"file": file, "record_id": record_id, **extra})
    return drop(row, reason)


def load_json(path: Path, where: str) -> Any:
    from ..errors import ConfigError

    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: {path} is not valid JSON (line {e.lineno}: {e.msg})") from None


def iter_coco_people(data: dict, images_dir: Path, dataset: str, joint_ids: list[str],
                     visibility: Callable[[int], int], file_of: Callable[[dict], str] | None = None,
                     extra_of: Callable[[dict, dict], dict] | None = None) -> Iterator[Row]:
    """Person records of a COCO-format keypoint file (CrowdPose, AIC converted by mmpose).

    ``joint_ids`` name the K joints in file order (the file's ``categories[0].keypoints`` when it
    has them); ``visibility`` maps the file's flag to COCO's convention. Annotations are read in
    (image id, annotation id) order so that the record order never depends on the file order.
    """
    images = {img["id"]: img for img in data.get("images", [])}
    by_image: dict[Any, list[dict]] = {}
    for ann in data.get("annotations", []):
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    cats = data.get("categories") or []
    if cats and cats[0].get("keypoints"):
        joint_ids = list(cats[0]["keypoints"])
    names = [readable(j) for j in joint_ids]
    k = len(names)

    def sort_key(v: Any) -> tuple:
        return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))

    for image_id in sorted(by_image, key=sort_key):
        anns = sorted(by_image[image_id], key=lambda a: sort_key(a.get("id")))
        img = images.get(image_id)
        for ann in anns:
            rid = f"{image_id}/{ann.get('id')}"
            if img is None:
                yield bad_record(dataset, rid, f"annotation refers to an unknown image (record={rid})",
                                 annotation_id=ann.get("id"))
                continue
            file = images_dir / (file_of(img) if file_of else img["file_name"])
            kps = ann.get("keypoints") or []
            if len(kps) != 3 * k:
                yield bad_record(dataset, rid, f"expected {3 * k} keypoint values, got {len(kps)} (record={rid})",
                                 str(file), annotation_id=ann.get("id"))
                continue
            w, h = img.get("width"), img.get("height")
            if not w or not h:
                try:
                    w, h = image_size(file, rid)
                except RecordError as e:
                    yield bad_record(dataset, rid, str(e), str(file), annotation_id=ann.get("id"))
                    continue
            joints = []
            for i in range(k):
                x, y, v = kps[3 * i: 3 * i + 3]
                cv = visibility(int(v))
                joints.append({"name": names[i], "x": float(x) if cv else 0.0, "y": float(y) if cv else 0.0, "v": cv})
            people = [clip_box(a["bbox"], w, h) for a in anns if a.get("bbox") and not a.get("iscrowd")]
            bbox = clip_box(ann["bbox"], w, h) if ann.get("bbox") else clip_box(joints_bbox(joints) or [0, 0, w, h], w, h)
            extra = {"image_id": image_id, "annotation_id": ann.get("id"), "iscrowd": int(ann.get("iscrowd", 0))}
            if extra_of:
                extra.update(extra_of(img, ann))
            row = record(dataset, rid, file, int(w), int(h), joints, bbox, people, **extra)
            if ann.get("iscrowd"):
                drop(row, f"crowd region (record={rid})")
            yield row
