"""MPII Human Pose in its common json conversion (the one HRNet and mmpose ship, ``mpii_train.json``).

Each entry is one person: ``{"image": "015601864.jpg", "center": [x, y], "scale": s,
"joints": [[x, y] x 16], "joints_vis": [0|1 x 16]}``; images live in ``images/``. Coordinates are
MATLAB's 1-based pixels (the converters subtract 1; so does this reader, ``one_based: true``).
``scale * 200`` is the side of the person's box around ``center``. ``joints_vis`` says labelled or not
(the conversion drops MPII's own visibility bit), so a labelled joint becomes COCO ``v=2``.

Joint order: 0 r ankle, 1 r knee, 2 r hip, 3 l hip, 4 l knee, 5 l ankle, 6 pelvis, 7 thorax,
8 upper neck, 9 head top, 10 r wrist, 11 r elbow, 12 r shoulder, 13 l shoulder, 14 l elbow, 15 l wrist.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError, RecordError
from ..schema import Row
from ._base import RecordSource, SourceConfig
from . import _keypoints as kp

MPII_JOINTS = ["r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax", "upper_neck",
               "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist"]


@dataclass
class MPIIConfig(SourceConfig):
    annotations: str = ""  # path of mpii_{train,val}.json
    images: str = ""  # folder of the images (MPII's "images/")
    one_based: bool = True  # MATLAB 1-based coordinates in the file (true for the HRNet/mmpose conversion)


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

    def records(self) -> Iterator[Row]:
        data = kp.load_json(Path(self.config.annotations), "source.annotations")
        if not isinstance(data, list):
            raise ConfigError(f"source.annotations: {self.config.annotations}: expected a list of people")
        images_dir = Path(self.config.images).resolve()
        off = 1.0 if self.config.one_based else 0.0
        names = [kp.readable(j) for j in MPII_JOINTS]
        # group people by image (the "people" payload), keep the file order within and across images
        order: list[str] = []
        by_image: dict[str, list[tuple[int, dict]]] = {}
        for idx, ent in enumerate(data):
            img = ent.get("image") if isinstance(ent, dict) else None
            img = img if isinstance(img, str) and img else f"<entry {idx}>"
            if img not in by_image:
                order.append(img)
            by_image.setdefault(img, []).append((idx, ent))
        sizes: dict[str, tuple[int, int]] = {}
        for img in order:
            people = by_image[img]
            file = images_dir / img
            boxes = []
            parsed = []
            for n, (idx, ent) in enumerate(people):
                rid = f"{img}/{n}"
                try:
                    if img.startswith("<entry"):
                        raise RecordError("entry has no 'image'", record=rid, field="image")
                    if img not in sizes:
                        sizes[img] = kp.image_size(file, rid)
                    w, h = sizes[img]
                    joints = self._joints(ent, names, off, rid)
                    box = self._box(ent, joints, off, w, h)
                except (RecordError, TypeError, ValueError, KeyError) as e:
                    reason = str(e) if isinstance(e, RecordError) else f"malformed entry ({type(e).__name__}: {e}) (record={rid})"
                    parsed.append(kp.bad_record("mpii", rid, reason, str(file), entry=idx))
                    continue
                boxes.append(box)
                parsed.append((rid, idx, w, h, joints, box, ent))
            for item in parsed:
                if isinstance(item, dict):
                    yield item
                    continue
                rid, idx, w, h, joints, box, ent = item
                yield kp.record("mpii", rid, file, w, h, joints, box, boxes, entry=idx,
                                center=[float(c) - off for c in ent.get("center", [])], scale=ent.get("scale"))

    @staticmethod
    def _joints(ent: dict, names: list[str], off: float, rid: str) -> list[dict]:
        pts = ent.get("joints")
        vis = ent.get("joints_vis")
        if pts is None or vis is None:
            raise RecordError("entry has no joints (test split?)", record=rid, field="joints")
        if len(pts) != 16 or len(vis) != 16:
            raise RecordError(f"expected 16 joints, got {len(pts)} joints / {len(vis)} joints_vis", record=rid)
        out = []
        for name, (x, y), v in zip(names, pts, vis):
            lab = bool(v) and x >= 0 and y >= 0 and not (x == 0 and y == 0)
            out.append({"name": name, "x": float(x) - off if lab else 0.0, "y": float(y) - off if lab else 0.0,
                        "v": 2 if lab else 0})
        return out

    @staticmethod
    def _box(ent: dict, joints: list[dict], off: float, w: int, h: int) -> list[float]:
        """The person box: the tight box of the labelled joints, grown by 15 % (MPII gives no box),
        inside the ``scale * 200`` square around ``center``."""
        jb = kp.joints_bbox(joints)
        if jb is None:
            c, s = ent.get("center"), ent.get("scale")
            if c and s:
                side = float(s) * 200.0
                return kp.clip_box([float(c[0]) - off - side / 2, float(c[1]) - off - side / 2, side, side], w, h)
            return [0.0, 0.0, float(w), float(h)]
        pad_w, pad_h = 0.15 * jb[2] + 4, 0.15 * jb[3] + 4
        return kp.clip_box([jb[0] - pad_w, jb[1] - pad_h, jb[2] + 2 * pad_w, jb[3] + 2 * pad_h], w, h)


SOURCE = MPIISource
