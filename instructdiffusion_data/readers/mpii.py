"""MPII Human Pose in its common json conversion (the one HRNet and mmpose ship, ``mpii_train.json``).

Each entry is one person: ``{"image": "015601864.jpg", "center": [x, y], "scale": s,
"joints": [[x, y] x 16], "joints_vis": [0|1 x 16]}``; images live in ``images/``. Coordinates are
MATLAB's 1-based pixels (the converters subtract 1; so does this reader, ``one_based: true``).
``scale * 200`` is the side of the person's box around ``center``. ``joints_vis`` says labelled or not
(the conversion drops MPII's own visibility bit), so a labelled joint becomes COCO ``v=2``.

Record id ``<image>_<n>`` (the n-th person of that image in the file), ``entries[<i>]`` for an entry
without a usable ``image``. The file (about 10 MB) is read whole: people are grouped by image for the
``people`` payload.

Joint order: 0 r ankle, 1 r knee, 2 r hip, 3 l hip, 4 l knee, 5 l ankle, 6 pelvis, 7 thorax,
8 upper neck, 9 head top, 10 r wrist, 11 r elbow, 12 r shoulder, 13 l shoulder, 14 l elbow, 15 l wrist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import ConfigError, RecordError
from ..schema import Row
from ._base import (BAD_FIELD, EXCLUDED, NO_IMAGE_FILE, NO_JOINTS, NOT_FINITE, RecordSource, SourceConfig, bad_record,
                    image_path, load_json)
from ._coco import annotation_inputs, local_or_uri
from ._keypoints import KEYPOINT_COUNT, clip_box, image_size, joints_bbox, number_problem, person_row, readable

MPII_JOINTS = ["r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax", "upper_neck",
               "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist"]


@dataclass
class MPIIConfig(SourceConfig):
    annotations: str = ""  # path of mpii_{train,val}.json
    images: str = ""  # folder of the images (MPII's "images/")
    one_based: bool = True  # MATLAB 1-based coordinates in the file (true for the HRNet/mmpose conversion)
    dataset: str = "mpii"


class _Bad(Exception):
    def __init__(self, reason: str, field: str | None, **meta: Any):
        self.reason, self.field, self.meta = reason, field, meta


class MPIISource(RecordSource):
    name = "mpii"
    Config = MPIIConfig

    def validate(self) -> None:
        if not self.config.annotations:
            raise ConfigError("source.annotations: required (path of mpii_train.json)")
        if not self.config.images:
            raise ConfigError("source.images: required (folder of the MPII images)")
        from ..config import check_path

        check_path(self.config.annotations, "source.annotations", kind="file")
        check_path(self.config.images, "source.images", kind="dir")

    def input_files(self) -> list[str]:
        return annotation_inputs(self, self.config.annotations)

    def records(self) -> Iterator[Row]:
        cfg, ds = self.config, self.config.dataset
        data = load_json(cfg.annotations, "source.annotations")
        if not isinstance(data, list):
            raise ConfigError(f"source.annotations: {cfg.annotations}: expected a list of people, got "
                              f"{type(data).__name__}")
        ann_file = local_or_uri(cfg.annotations)
        off = 1.0 if cfg.one_based else 0.0
        names = [readable(j) for j in MPII_JOINTS]
        # group people by image (the "people" payload); the file order within and across images is kept
        order: list[Any] = []
        by_image: dict[Any, list[tuple[int, Any]]] = {}
        for idx, ent in enumerate(data):
            img = ent.get("image") if isinstance(ent, dict) else None
            key = img if isinstance(img, str) and img else ("bad", idx)
            if key not in by_image:
                order.append(key)
                by_image[key] = []
            by_image[key].append((idx, ent))
        self.stats["entries"] = len(data)
        for key in order:
            if isinstance(key, tuple):
                idx, ent = by_image[key][0]
                yield bad_record(ds, "keypoint", f"entries[{idx}]", BAD_FIELD, ann_file,
                                 "image" if isinstance(ent, dict) else "entry", entry=idx)
                continue
            yield from self._image(key, by_image[key], ann_file, names, off)

    def _image(self, img: str, people: list[tuple[int, Any]], ann_file: str, names: list[str],
               off: float) -> Iterator[Row]:
        ds = self.config.dataset
        file = image_path(self.config.images, img)

        def bad(rid: str, idx: int, reason: str, field: str | None, at: str = ann_file, **detail: Any) -> Row:
            return bad_record(ds, "keypoint", rid, reason, at, field, detail=detail, image_id=img, image=file,
                              entry=idx)

        rids = [f"{img}_{n}" for n in range(len(people))]
        if self.excluded(img):
            for rid, (idx, _) in zip(rids, people):
                yield bad(rid, idx, EXCLUDED, "image")
            return
        if file is None:
            for rid, (idx, _) in zip(rids, people):
                yield bad(rid, idx, BAD_FIELD, "image")
            return
        try:
            w, h = image_size(file, img)
        except RecordError as e:
            for rid, (idx, _) in zip(rids, people):
                if e.reason == NO_IMAGE_FILE:
                    yield bad(rid, idx, NO_IMAGE_FILE, "image", at=file)
                else:
                    yield bad(rid, idx, e.reason, "image", at=file, error=e.field)
            return
        parsed: list = []
        boxes = []
        for rid, (idx, ent) in zip(rids, people):
            try:
                joints = self._joints(ent, names, off)
                center, scale = self._center_scale(ent, off)
                box = self._box(joints, center, scale, w, h)
            except _Bad as e:
                parsed.append(bad(rid, idx, e.reason, e.field, **e.meta))
                continue
            boxes.append(box)
            parsed.append((rid, idx, joints, box, center, scale))
        for item in parsed:
            if isinstance(item, dict):
                yield item
                continue
            rid, idx, joints, box, center, scale = item
            yield person_row(ds, rid, file, w, h, joints, box, boxes, ann_file=ann_file, field="joints_vis",
                             image_id=img, entry=idx, center=center, scale=scale)

    @staticmethod
    def _joints(ent: dict, names: list[str], off: float) -> list[dict]:
        pts, vis = ent.get("joints"), ent.get("joints_vis")
        if pts is None or vis is None:
            raise _Bad(NO_JOINTS, "joints", problem="entry has no joints (test split?)")
        for field, val in (("joints", pts), ("joints_vis", vis)):
            if not isinstance(val, list):
                raise _Bad(BAD_FIELD, field)
            if len(val) != len(names):
                raise _Bad(KEYPOINT_COUNT, field, expected=len(names), got=len(val))
        flat = []
        for p in pts:
            if not isinstance(p, list) or len(p) != 2:
                raise _Bad(BAD_FIELD, "joints")
            flat += p
        why = number_problem(flat) or number_problem(vis)
        if why:
            raise _Bad(why, "joints" if number_problem(flat) else "joints_vis")
        out = []
        for name, (x, y), v in zip(names, pts, vis):
            lab = bool(v) and x >= 0 and y >= 0 and not (x == 0 and y == 0)
            out.append({"name": name, "x": float(x) - off if lab else 0.0, "y": float(y) - off if lab else 0.0,
                        "v": 2 if lab else 0})
        return out

    @staticmethod
    def _center_scale(ent: dict, off: float) -> tuple[list[float] | None, float | None]:
        c, s = ent.get("center"), ent.get("scale")
        if c is not None:
            why = number_problem(c, 2)
            if why:
                raise _Bad(why, "center")
            c = [float(v) - off for v in c]
        if s is not None:
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                raise _Bad(BAD_FIELD, "scale")
            if not math.isfinite(s):
                raise _Bad(NOT_FINITE, "scale")
            s = float(s)
        return c, s

    @staticmethod
    def _box(joints: list[dict], center: list[float] | None, scale: float | None, w: int, h: int) -> list[float]:
        """The person box: the tight box of the labelled joints, grown by 15 % (MPII gives no box),
        or the ``scale * 200`` square around ``center`` when no joint is labelled."""
        jb = joints_bbox(joints)
        if jb is None:
            if center and scale and scale > 0:
                side = scale * 200.0
                return clip_box([center[0] - side / 2, center[1] - side / 2, side, side], w, h)
            return [0.0, 0.0, float(w), float(h)]
        pad_w, pad_h = 0.15 * jb[2] + 4, 0.15 * jb[3] + 4
        return clip_box([jb[0] - pad_w, jb[1] - pad_h, jb[2] + 2 * pad_w, jb[3] + 2 * pad_h], w, h)


SOURCE = MPIISource
