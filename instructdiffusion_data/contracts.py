"""Typed contracts of what travels in ``meta`` between readers, stages, the filter and the auditor.

Each payload has one dataclass with one ``from_meta`` (decode and check, in this one place) and one
``to_meta`` (what is written). Stages read and write these payloads through the dataclasses only, so a
field is spelled, decoded and checked once (docs/contracts.md):

- :class:`ReferencePatch`: ``meta["reference"]``, the reference object of a replacement, written by
  ``retrieve_reference``; read by ``paint_replace`` (the full patch from the gallery), ``caption`` and
  ``quality_filter`` (the embedded copy, or the source file cropped to ``bbox``) and the auditor.
- :class:`PersonKeypoints` / :class:`Joint`: the keypoint record payload of the keypoint readers
  (``meta["joints"]``, ``meta["bbox"]``, ``meta["people"]``), read by ``render_keypoints``, and
  :class:`DrawnJoint`: what the renderer drew (``meta["drawn"]``).
- :class:`Segment`: one region mask (COCO RLE, COCO polygons, or a label-map value), as the
  segmentation readers write ``meta["segments"]`` / ``meta["targets"]``; decoded by :meth:`Segment.mask`.
- :class:`Scores` and :class:`FilterRecord`: ``meta["scores"]`` and ``meta["filter"]`` of the quality
  filter, read back by ``idd filter``, the report and the auditor.

A payload that is present but malformed raises :class:`~.errors.RecordError` naming the field (the row is
dropped with that class); an absent optional payload is ``None``.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .errors import RecordError

NEUTRAL = (128, 128, 128)  # fill outside an object's mask when regions are compared or captioned


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _box(value: Any, where: str, record: str | None = None) -> list[float] | None:
    """``[x, y, w, h]`` of finite numbers, or None when absent."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(_finite(v) for v in value):
        raise RecordError("bad box (expected [x, y, w, h] of finite numbers)", record=record, field=where)
    return [float(v) for v in value]


def record_drop(row: dict, prefix: str, exc: RecordError) -> dict:
    """Drop ``row`` for a :class:`RecordError`: class ``"<prefix>: <reason>"``, file/record/field and the
    error's measured values as details (what :meth:`Stage._failed` does for errors a stage lets through)."""
    from .schema import drop

    return drop(row, f"{prefix}: {exc.reason}", file=exc.file, record=exc.record, field=exc.field,
                **getattr(exc, "detail", {}))


# -- the reference patch of a replacement ---------------------------------------------------------

@dataclass
class PatchLocation:
    """Where the full-resolution patch PNG (RGBA, alpha = object mask) lies in its gallery."""

    tar: str  # relative to the gallery folder
    offset: int
    size: int

    def to_meta(self) -> dict:
        return {"tar": self.tar, "offset": int(self.offset), "size": int(self.size)}


@dataclass
class ReferencePatch:
    """``meta["reference"]``: the object a replacement paints in (written by ``retrieve_reference``).

    Pixels come from, in this order: ``patch_png_b64`` (a downscaled RGBA PNG, alpha = the object's
    mask), else ``file`` cropped to ``bbox`` ``[x, y, w, h]`` (no mask). :meth:`gallery_rgba` reads the
    full-resolution patch from the gallery (``gallery`` + ``patch``)."""

    label: str | None = None
    file: str | None = None  # the reference's source image
    bbox: list[float] | None = None  # its region in that image, [x, y, w, h]
    patch_png_b64: str | None = None
    gallery: str | None = None  # the gallery folder (idd gallery build)
    patch: PatchLocation | None = None
    gallery_id: int | None = None
    key: str | None = None
    dataset: str | None = None
    image_id: str | None = None
    region_id: str | None = None
    label_id: str | None = None
    crop: list[float] | None = None  # the patch's box in the source image
    similarity: float | None = None
    rank: int | None = None
    extra: dict = field(default_factory=dict)  # keys this contract does not name, kept as they were

    FIELD = "reference"

    @classmethod
    def from_meta(cls, meta: dict, record: str | None = None) -> ReferencePatch | None:
        """The reference of a row, or None when it has none. Only ``meta["reference"]`` is read."""
        ref = (meta or {}).get(cls.FIELD)
        if ref is None:
            return None
        if not isinstance(ref, dict):
            raise RecordError("reference is not an object", record=record, field=cls.FIELD)
        names = {f.name for f in fields(cls)} - {"extra", "patch"}
        kw: dict[str, Any] = {k: ref[k] for k in names if k in ref}
        for k in ("label", "file", "patch_png_b64", "gallery", "key", "dataset", "label_id"):
            if kw.get(k) is not None and not isinstance(kw[k], str):
                raise RecordError("reference field is not a string", record=record, field=f"{cls.FIELD}.{k}")
        for k in ("image_id", "region_id"):
            if kw.get(k) is not None:
                kw[k] = str(kw[k])
        kw["bbox"] = _box(ref.get("bbox"), f"{cls.FIELD}.bbox", record)
        kw["crop"] = _box(ref.get("crop"), f"{cls.FIELD}.crop", record)
        p = ref.get("patch")
        if p is not None:
            if (not isinstance(p, dict) or not isinstance(p.get("tar"), str)
                    or not all(isinstance(p.get(k), int) and not isinstance(p.get(k), bool) and p[k] >= 0
                               for k in ("offset", "size"))):
                raise RecordError("bad reference patch location", record=record, field=f"{cls.FIELD}.patch")
            kw["patch"] = PatchLocation(p["tar"], p["offset"], p["size"])
        extra = {k: v for k, v in ref.items() if k not in names and k != "patch"}
        return cls(**kw, extra=extra)

    def to_meta(self) -> dict:
        out: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name in ("extra",):
                continue
            v = getattr(self, f.name)
            if v is None:
                continue
            out[f.name] = v.to_meta() if isinstance(v, PatchLocation) else v
        return out

    @property
    def has_pixels(self) -> bool:
        return bool(self.patch_png_b64 or self.file)

    def rgba(self, record: str | None = None) -> np.ndarray:
        """The reference's pixels as RGBA uint8: the embedded patch (alpha = object mask), else the
        source file cropped to ``bbox`` (alpha 255). RecordError naming the field when neither decodes."""
        if self.patch_png_b64:
            try:
                raw = base64.b64decode(self.patch_png_b64, validate=True)
            except (binascii.Error, ValueError):
                raise RecordError("reference patch is not base64", record=record,
                                  field=f"{self.FIELD}.patch_png_b64") from None
            return decode_rgba(raw, record=record, field=f"{self.FIELD}.patch_png_b64")
        if self.file:
            from .imageio import decode, read_bytes

            img = decode(read_bytes(self.file, record), file=self.file, record=record)
            if self.bbox is not None:
                img = crop_box(img, self.bbox)
            return np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
        raise RecordError("reference has no pixels", record=record, field=f"{self.FIELD}.patch_png_b64")

    def rgb(self, background: tuple[int, int, int] | None = NEUTRAL, record: str | None = None,
            alpha_min: int = 128) -> np.ndarray:
        """RGB pixels; with ``background``, pixels outside the object's mask (alpha < ``alpha_min``)
        take that colour, as the source and target regions are compared or captioned."""
        return on_background(self.rgba(record), background, alpha_min)

    def gallery_rgba(self, handles: dict | None = None, record: str | None = None) -> np.ndarray:
        """The full-resolution patch (RGBA) read from the gallery's tar (what PaintByExample paints)."""
        if not self.gallery or self.patch is None:
            raise RecordError("reference has no gallery patch", record=record, field=f"{self.FIELD}.patch")
        from pathlib import Path

        from .replace.gallery_read import read_patch

        data = read_patch(Path(self.gallery), self.patch.tar, self.patch.offset, self.patch.size, handles)
        return decode_rgba(data, record=record, field=f"{self.FIELD}.patch")

    @staticmethod
    def encode_patch(rgba: np.ndarray) -> str:
        """``patch_png_b64`` of an RGBA patch."""
        from .replace.gallery_patches import encode_rgba

        return base64.b64encode(encode_rgba(rgba)).decode("ascii")


def decode_rgba(data: bytes, *, record: str | None = None, field: str | None = None) -> np.ndarray:
    """PNG/JPEG bytes as RGBA uint8 (alpha 255 where the image has none)."""
    import cv2

    from .imageio import ImageTooLarge, decode_unchanged

    try:  # imageio's pixel limit: a huge header is "image too large" before any decode
        arr = decode_unchanged(data, record=record)
    except ImageTooLarge as e:
        e.field = field
        raise
    except RecordError:
        raise RecordError("reference patch image is corrupt", record=record, field=field) from None
    if arr.dtype != np.uint8:
        arr = (arr / max(1, int(arr.max())) * 255).astype(np.uint8)
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGBA)
    if arr.shape[2] == 3:
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGBA)
    return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)


def on_background(rgba: np.ndarray, background: tuple[int, int, int] | None, alpha_min: int = 128) -> np.ndarray:
    rgb = np.ascontiguousarray(rgba[..., :3])
    if background is not None and rgba.shape[2] == 4:
        rgb = rgb.copy()
        rgb[rgba[..., 3] < alpha_min] = background
    return rgb


def crop_box(img: np.ndarray, box: list[float]) -> np.ndarray:
    """``img`` cropped to ``[x, y, w, h]`` (clipped to the image; the whole image when nothing is left)."""
    x, y, w, h = (round(float(v)) for v in box)
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(img.shape[1], x + max(1, w)), min(img.shape[0], y + max(1, h))
    return img[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else img


# -- keypoints ----------------------------------------------------------------------------------

@dataclass
class Joint:
    """One joint of a person: instruction name ("left shoulder"), file pixels, COCO visibility
    (0 = not labelled, 1 = labelled but not visible, 2 = visible)."""

    name: str
    x: float
    y: float
    v: int

    def to_meta(self) -> dict:
        return {"name": self.name, "x": self.x, "y": self.y, "v": self.v}

    def scaled(self, s: float) -> Joint:
        return Joint(self.name, self.x * s, self.y * s, self.v)


@dataclass
class PersonKeypoints:
    """The keypoint record payload: ``meta["joints"]``, the person's ``meta["bbox"]`` and
    ``meta["people"]`` (the boxes of every person in the image)."""

    joints: list[Joint]
    bbox: list[float] | None = None
    people: list[list[float]] = field(default_factory=list)

    @classmethod
    def from_meta(cls, meta: dict, record: str | None = None) -> PersonKeypoints:
        raw = (meta or {}).get("joints")
        if not isinstance(raw, list):
            raise RecordError("record has no joints list", record=record, field="joints")
        joints = []
        for i, j in enumerate(raw):
            if not isinstance(j, dict) or not isinstance(j.get("name"), str):
                raise RecordError("bad joint", record=record, field=f"joints[{i}]")
            if not (_finite(j.get("x")) and _finite(j.get("y"))):
                raise RecordError("joint coordinate is not a finite number", record=record, field=f"joints[{i}]")
            v = j.get("v", 2)
            if not isinstance(v, int) or isinstance(v, bool):
                raise RecordError("joint visibility is not an integer", record=record, field=f"joints[{i}].v")
            joints.append(Joint(j["name"], float(j["x"]), float(j["y"]), int(v)))
        people_raw = meta.get("people") or []
        if not isinstance(people_raw, list):
            raise RecordError("people is not a list of boxes", record=record, field="people")
        people = [_box(p, f"people[{i}]", record) for i, p in enumerate(people_raw)]
        return cls(joints, _box(meta.get("bbox"), "bbox", record), [p for p in people if p is not None])

    def to_meta(self) -> dict:
        return {"joints": [j.to_meta() for j in self.joints], "bbox": self.bbox, "people": self.people}


@dataclass
class DrawnJoint:
    """One joint as the keypoint renderer drew it (``meta["drawn"]``): written-image pixels, colour."""

    joint: str
    x: float
    y: float
    v: int
    color: str
    rgb: list[int]

    def to_meta(self) -> dict:
        return {"joint": self.joint, "x": round(self.x, 3), "y": round(self.y, 3), "v": self.v,
                "color": self.color, "rgb": list(self.rgb)}

    @classmethod
    def from_meta(cls, d: dict) -> DrawnJoint:
        return cls(d["joint"], float(d["x"]), float(d["y"]), int(d["v"]), d["color"], list(d["rgb"]))


# -- region masks --------------------------------------------------------------------------------

@dataclass
class Segment:
    """One region mask in the forms COCO-family files use: ``rle`` (``{"size": [h, w], "counts"}``,
    compressed string or uncompressed list), ``polygons`` (flat ``[x1, y1, x2, y2, ...]`` lists) or a
    label-map pixel value (``labelmap`` path + ``value``); optional ``name`` / ``category_id``."""

    rle: dict | None = None
    polygons: list | None = None
    labelmap: str | None = None
    value: int | None = None
    name: str | None = None
    category_id: int | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_meta(cls, seg: Any, record: str | None = None, where: str = "segmentation") -> Segment:
        if not isinstance(seg, dict):
            raise RecordError("segment is not an object", record=record, field=where)
        if "rle" in seg:
            if not isinstance(seg["rle"], dict) or "counts" not in seg["rle"]:
                raise RecordError("bad RLE", record=record, field=f"{where}.rle")
        elif "polygons" in seg:
            if not isinstance(seg["polygons"], list):
                raise RecordError("polygons is not a list", record=record, field=f"{where}.polygons")
        elif "labelmap" not in seg:
            raise RecordError("segment has no rle, polygons or labelmap", record=record, field=where)
        known = ("rle", "polygons", "labelmap", "value", "name", "category_id")
        return cls(**{k: seg[k] for k in known if k in seg}, extra={k: v for k, v in seg.items() if k not in known})

    def to_meta(self) -> dict:
        out = dict(self.extra)
        for k in ("rle", "polygons", "labelmap", "value", "name", "category_id"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out

    def mask(self, h: int, w: int, *, record: str | None = None, labelmaps: dict | None = None) -> np.ndarray:
        """The mask at the file's resolution ``h`` x ``w`` (bool)."""
        from .render import masks as M

        return M.segment_to_mask(self.to_meta(), h, w, record=record, labelmaps=labelmaps)


def union_mask(segments: list, h: int, w: int, *, record: str | None = None, where: str = "targets") -> np.ndarray:
    """The union of the masks of ``meta[where]`` segments (bool ``h`` x ``w``; empty for no segment)."""
    out = np.zeros((h, w), bool)
    for i, s in enumerate(segments or []):
        out |= Segment.from_meta(s, record, f"{where}[{i}]").mask(h, w, record=record)
    return out


# -- scores and the filter's record --------------------------------------------------------------

SCORE_NAMES = ("aesthetic_src", "aesthetic_tgt", "aesthetic_diff", "giqa_src", "giqa_tgt", "giqa_diff",
               "edit_change", "background_change", "replace_gain")


@dataclass
class Scores:
    """``meta["scores"]``: the quality filter's scores (finite floats; absent = not computed), plus any
    other score a reader brought (InstructPix2Pix's ``clip_sim_*``) in ``other``."""

    aesthetic_src: float | None = None
    aesthetic_tgt: float | None = None
    aesthetic_diff: float | None = None
    giqa_src: float | None = None
    giqa_tgt: float | None = None
    giqa_diff: float | None = None
    edit_change: float | None = None
    background_change: float | None = None
    replace_gain: float | None = None
    other: dict = field(default_factory=dict)

    @classmethod
    def from_meta(cls, meta: dict) -> Scores:
        raw = (meta or {}).get("scores")
        if not isinstance(raw, dict):
            return cls()
        kw = {k: float(raw[k]) for k in SCORE_NAMES if _finite(raw.get(k))}
        return cls(**kw, other={k: v for k, v in raw.items() if k not in SCORE_NAMES})

    def as_dict(self) -> dict[str, float]:
        """The computed scores by name (what rules evaluate)."""
        return {k: getattr(self, k) for k in SCORE_NAMES if getattr(self, k) is not None}

    def update(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            if k in SCORE_NAMES:
                setattr(self, k, float(v))
            else:
                self.other[k] = v

    def to_meta(self) -> dict:
        return {**self.other, **self.as_dict()}


@dataclass
class FilterRecord:
    """``meta["filter"]``: what the quality filter decided and why. ``idd filter`` re-applies rules from
    ``thresholds`` / ``threshold_specs`` / ``prior_drop`` alone; ``failed`` holds the failed rules' drop
    classes (``models.quality.RULES``)."""

    profile: str
    thresholds: dict[str, float | None]
    failed: list[str]
    prior_drop: str | None
    scorers: dict[str, str | None] = field(default_factory=dict)
    stage: str = "quality_filter"
    threshold_specs: dict[str, str] = field(default_factory=dict)
    giqa_reference: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    classical: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # e.g. "audit" written by idd filter

    _OPTIONAL = ("threshold_specs", "giqa_reference", "skipped", "classical")

    @classmethod
    def from_meta(cls, meta: dict) -> FilterRecord | None:
        flt = (meta or {}).get("filter")
        if not isinstance(flt, dict) or "thresholds" not in flt:
            return None
        known = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: flt[k] for k in known if k in flt}
        kw.setdefault("profile", "?")
        kw.setdefault("failed", [])
        kw.setdefault("prior_drop", None)
        return cls(**kw, extra={k: v for k, v in flt.items() if k not in known})

    def to_meta(self) -> dict:
        out: dict[str, Any] = {"stage": self.stage, "profile": self.profile, "thresholds": dict(self.thresholds),
                               "failed": list(self.failed), "prior_drop": self.prior_drop,
                               "scorers": dict(self.scorers)}
        for k in self._OPTIONAL:
            v = getattr(self, k)
            if v:
                out[k] = v
        out.update(self.extra)
        return out
