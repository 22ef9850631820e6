"""What every keypoint reader shares (COCO, CrowdPose, AI Challenger, MPII), and the ONE parser of
COCO-style person keypoint files used by COCO, CrowdPose and AIC's COCO conversion.

Every keypoint reader emits one record per annotated person with the payload the renderer reads:
``joints`` as ``{"name", "x", "y", "v"}`` with COCO's visibility convention (0 = not labelled,
1 = labelled but not visible, 2 = visible), the person's ``bbox`` ``[x, y, w, h]`` and ``people``,
the boxes of every person in the image. Joint names are the plain-English instruction vocabulary
("left shoulder"); joints without a COCO counterpart get a readable name ("top of the head", "neck",
"pelvis", "chest").

COCO-style files are streamed (:class:`~._json_stream.JsonStream`), never loaded whole. Pass 1 reads
``images`` into a compact index, pass 2 ``categories``, pass 3 the person boxes of ``annotations``
(compact arrays per image, for ``people``), pass 4 yields one record per annotation in file order.
Memory is bounded by the image index plus one annotation. Record ids are ``<image_id>_<ann_id>``
(``annotations[<i>]`` when either id is unusable); a crowd annotation is a dropped row (``CROWD``)
unless ``include_crowd``; every malformed field drops its record with the field named.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import ConfigError, RecordError
from ..schema import Row
from ._base import (BAD_FIELD, CROWD, EXCLUDED, NO_JOINTS, NOT_FINITE, UNKNOWN_IMAGE, RecordSource, SourceConfig,
                    bad_record, record_row)
from ._coco import DUPLICATE_ID, Boxes, ImageFolder, ImageIndex, Repeats, annotation_inputs, local_or_uri, valid_id
from ._json_stream import JsonStream

log = logging.getLogger(__name__)

# Reason classes of the keypoint readers (beyond the shared ones in _base).
UNKNOWN_CATEGORY = "annotation points at an unknown category id"
KEYPOINT_COUNT = "wrong number of keypoint values"
BAD_VISIBILITY = "keypoint visibility flag out of range"
UNREADABLE_IMAGE = "image file unreadable"

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

COCO_JOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
               "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
               "right_knee", "left_ankle", "right_ankle"]


def readable(name: str) -> str:
    """Instruction name of a dataset joint id ("l_ankle", "left_ankle", "upper neck" ...)."""
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    if key.startswith("l_"):
        key = "left_" + key[2:]
    elif key.startswith("r_"):
        key = "right_" + key[2:]
    return JOINT_NAMES.get(key, key.replace("_", " "))


def image_size(path: str, record: str | None = None) -> tuple[int, int]:
    """(width, height) from the image header (path or URI), without decoding the pixels."""
    import io

    from PIL import Image, UnidentifiedImageError

    from ..storage import is_uri, read_bytes

    try:
        src = io.BytesIO(read_bytes(path)) if is_uri(path) else path
        with Image.open(src) as im:
            return int(im.width), int(im.height)
    except FileNotFoundError:
        raise RecordError("image file missing", file=str(path), record=record) from None
    except (UnidentifiedImageError, OSError) as e:
        raise RecordError(UNREADABLE_IMAGE, file=str(path), record=record, field=type(e).__name__) from None


def joints_bbox(joints: list[dict]) -> list[float] | None:
    pts = [(j["x"], j["y"]) for j in joints if j["v"] > 0]
    if not pts:
        return None
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def clip_box(box: list[float], w: float | None, h: float | None) -> list[float]:
    """``box`` inside the image (when its size is known), rounded to 1/100 px."""
    x, y, bw, bh = (float(v) for v in box)
    if not w or not h:
        return [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)]
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(w), x + bw), min(float(h), y + bh)
    return [round(x0, 2), round(y0, 2), round(max(0.0, x1 - x0), 2), round(max(0.0, y1 - y0), 2)]


_NUMBER_TYPES = {int, float}


def number_problem(values: Any, n: int | None = None) -> str | None:
    """None when ``values`` is a list (of ``n`` items) of real finite numbers; else the reason class
    (``NOT_FINITE`` for NaN/Infinity, ``BAD_FIELD`` for anything else)."""
    if not isinstance(values, list) or (n is not None and len(values) != n):
        return BAD_FIELD
    try:
        if set(map(type, values)) <= _NUMBER_TYPES and math.isfinite(math.fsum(values)):
            return None  # the common case, without a Python loop over the values
    except OverflowError:  # an int beyond a double (a file read by Python's json)
        return BAD_FIELD
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return BAD_FIELD
        if not math.isfinite(v):
            return NOT_FINITE
    return None


def person_row(dataset: str, record_id: str, file: str, width: Any, height: Any, joints: list[dict],
               bbox: list[float], people: list[list[float]], *, ann_file: str, field: str = "keypoints",
               **extra: Any) -> Row:
    """The record of one person; dropped (``NO_JOINTS``, naming the annotation file) when no joint is
    labelled."""
    if not any(j["v"] > 0 for j in joints):
        extra.pop("annotation_file", None)
        return bad_record(dataset, "keypoint", record_id, NO_JOINTS, ann_file, field, image=file, **extra)
    return record_row(dataset, "keypoint", record_id, {
        "file": file, "width": width, "height": height, "joints": joints, "bbox": bbox, "people": people, **extra})


# -- the COCO-style keypoint file -----------------------------------------------------------------

@dataclass
class CocoKeypointsBase(SourceConfig):
    annotations: str = ""  # the COCO-format keypoint json
    images: str = ""  # folder holding the images (file_name is relative to it)
    include_crowd: bool = False  # crowd annotations (iscrowd=1) as records; default: dropped rows (CROWD)


class CocoStyleKeypoints(RecordSource):
    """A reader of a COCO-format person keypoint file. Subclasses set ``dataset``, ``joint_ids`` (the
    K joints in file order when the category does not list them) and may override :meth:`visibility`
    (the file's flag -> COCO's 0/1/2, None when invalid) and :meth:`extra` (per-record fields)."""

    joint_ids: list[str] = COCO_JOINTS
    image_extra: str | None = None  # an image field kept in the index (CrowdPose: crowdIndex)
    image_set: str | None = None  # namespace of image ids for ``idd overlap`` ("coco" for COCO's own ids)

    @property
    def dataset(self) -> str:
        return getattr(self.config, "dataset", self.name)

    def validate(self) -> None:
        from ..config import check_path

        if not self.config.annotations:
            raise ConfigError("source.annotations: required (the COCO-format keypoint json)")
        if not self.config.images:
            raise ConfigError("source.images: required (folder of the images)")
        check_path(self.config.annotations, "source.annotations", kind="file")
        check_path(self.config.images, "source.images", kind="dir")

    def visibility(self, v: Any) -> int | None:
        return int(v) if v in (0, 1, 2) else None

    def extra(self, image_extra: Any, ann: dict) -> dict:
        return {}

    def records(self) -> Iterator[Row]:
        yield from coco_people(self, JsonStream(self.config.annotations, "source.annotations"))

    def input_files(self) -> list[str]:
        return annotation_inputs(self, self.config.annotations)


def _ann_ids(ann: Any, i: int) -> tuple[Any, Any, str]:
    """(image id, annotation id, record id) of the ``i``-th annotation; ids None when unusable."""
    if not isinstance(ann, dict):
        return None, None, f"annotations[{i}]"
    iid, aid = ann.get("image_id"), ann.get("id")
    iid = iid if valid_id(iid) else None
    aid = aid if valid_id(aid) else None
    return iid, aid, f"{iid}_{aid}" if iid is not None and aid is not None else f"annotations[{i}]"


def _box(v: Any) -> list[float] | None:
    return [float(x) for x in v] if number_problem(v, 4) is None else None


def coco_people(src: CocoStyleKeypoints, stream: JsonStream) -> Iterator[Row]:
    cfg = src.config
    dataset = src.dataset
    folder = ImageFolder(cfg.images)
    ann_file = local_or_uri(cfg.annotations)
    stats = src.stats

    # pass 1: images -> compact index
    images = ImageIndex(extra_key=src.image_extra).load(stream)
    stats["images"] = len(images)
    if images.bad:
        stats["images_without_id"] = images.bad
    if images.duplicates:
        stats["images_duplicate_id"] = images.duplicates

    # pass 2: categories (small): joint names per category id
    cats: dict[Any, list[str]] = {}
    n_cats = 0
    tail = stream.tail_items("categories")  # real COCO files end with categories: no pass needed
    for c in (tail if tail is not None else stream.items("categories.item")):
        n_cats += 1
        if isinstance(c, dict) and valid_id(c.get("id")):
            kp = c.get("keypoints")
            ok = isinstance(kp, list) and kp and all(isinstance(k, str) for k in kp)
            cats[c["id"]] = [readable(k) for k in (kp if ok else src.joint_ids)]
    if n_cats == 0:
        stream.require_list("categories", optional=True)
    default_names = [readable(k) for k in src.joint_ids]

    # pass 3: the person boxes of every image (non-crowd annotations with a valid box), compact
    people = Boxes(len(images))
    repeats = Repeats()
    n_anns = 0
    for i, ann in enumerate(stream.fields("annotations", ("id", "image_id", "iscrowd", "bbox"))):
        n_anns += 1
        repeats.note(_ann_ids(ann, i)[2])
        if not isinstance(ann, dict) or ann.get("iscrowd"):
            continue
        pos = images.pos.get(ann.get("image_id")) if valid_id(ann.get("image_id")) else None
        box = _box(ann.get("bbox"))
        if pos is None or box is None:
            continue
        people.add(pos, box)
    if n_anns == 0:
        stream.require_list("annotations")
    repeats.freeze()

    # pass 4: one record per annotation, in file order
    for i, ann in enumerate(stream.items("annotations.item")):
        stats["annotations"] += 1
        rid = _ann_ids(ann, i)[2]
        if repeats.repeat(rid):
            stats["duplicate_ids"] += 1
            yield bad_record(dataset, "keypoint", f"{rid}#annotations[{i}]", DUPLICATE_ID, ann_file, "id",
                             annotation_index=i)
            continue
        yield _person(src, dataset, ann_file, images, folder, cats, default_names, people, ann, i)
    if stream.nonstandard:  # counted by this full pass
        stats["nonstandard_numbers"] = stream.nonstandard


def _person(src: CocoStyleKeypoints, dataset: str, ann_file: str, images: ImageIndex, folder: ImageFolder,
            cats: dict, default_names: list[str], people: Boxes, ann: Any, i: int) -> Row:
    iid, aid, rid = _ann_ids(ann, i)

    def bad(reason: str, field: str | None, detail: dict | None = None, **meta: Any) -> Row:
        return bad_record(dataset, "keypoint", rid, reason, ann_file, field, detail=detail, image_id=iid,
                          annotation_id=aid, annotation_index=i, **meta)

    if not isinstance(ann, dict):
        return bad(BAD_FIELD, "annotations[]", {"problem": "not an object"})
    if iid is None:
        return bad(BAD_FIELD, "image_id")
    if aid is None:
        return bad(BAD_FIELD, "id")
    if src.excluded(iid):
        return bad(EXCLUDED, "image_id")
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1, None):  # bools are 0/1
        return bad(BAD_FIELD, "iscrowd")
    if crowd and not src.config.include_crowd:
        src.stats["crowd"] += 1
        return bad(CROWD, "iscrowd")
    img = images.get(iid)
    if img is None:
        return bad(UNKNOWN_IMAGE, "image_id")
    name, w, h, img_extra, problem = img
    path = folder.path(name)
    if path is None:
        return bad(BAD_FIELD, "images[].file_name", {"file_name": name})
    if problem:
        return bad(problem[1], f"images[].{problem[0]}", image=path)
    cid = ann.get("category_id")
    if cats and not (valid_id(cid) and cid in cats):
        return bad(UNKNOWN_CATEGORY, "category_id", {"category_id": cid if valid_id(cid) else None}, image=path)
    names = cats[cid] if cats else default_names
    kps = ann.get("keypoints")
    if not isinstance(kps, list):
        return bad(BAD_FIELD, "keypoints", image=path)
    if len(kps) != 3 * len(names):
        return bad(KEYPOINT_COUNT, "keypoints", {"expected": 3 * len(names), "got": len(kps)}, image=path)
    why = number_problem(kps)
    if why:
        return bad(why, "keypoints", image=path)
    joints = []
    for j, nm in enumerate(names):
        x, y, v = kps[3 * j: 3 * j + 3]
        cv = src.visibility(v)
        if cv is None:
            return bad(BAD_VISIBILITY, "keypoints", {"joint": nm, "value": v}, image=path)
        joints.append({"name": nm, "x": float(x) if cv else 0.0, "y": float(y) if cv else 0.0, "v": cv})
    raw_box = ann.get("bbox")
    if raw_box is not None:
        why = number_problem(raw_box, 4)
        if why:
            return bad(why, "bbox", image=path)
        bbox = clip_box(raw_box, w, h)
    else:
        jb = joints_bbox(joints)
        bbox = clip_box(jb if jb else [0, 0, w or 0, h or 0], w, h)
    boxes = [clip_box(b, w, h) for b in people.get(images.pos[iid])]
    extra = {"annotation_file": ann_file, "image_id": iid, "annotation_id": aid, "iscrowd": int(bool(crowd))}
    if src.image_set:
        extra["image_set"] = src.image_set
    extra.update(src.extra(img_extra, ann))
    return person_row(dataset, rid, path, _num(w), _num(h), joints, bbox, boxes, ann_file=ann_file, **extra)


def _num(v: float | None) -> int | float | None:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def visibility_clamped(v: Any) -> int | None:
    """A 0/1/2 flag from a number (CrowdPose writes other positive values for labelled joints)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        return None
    return 0 if v <= 0 else min(int(v), 2) if v >= 1 else None

