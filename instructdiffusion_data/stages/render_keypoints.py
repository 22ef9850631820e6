"""Keypoint targets (paper 3.1, 4.1): per sample 1-5 random labelled joints of one person, each
circled in a random named colour; the instruction names joints, colours and the person.

Works for every reader emitting the keypoint record payload (COCO, MPII, CrowdPose, AIC), read through
:class:`..contracts.PersonKeypoints`: ``meta.joints`` [{name, x, y, v}] in file pixels, ``meta.bbox`` of
the person, ``meta.people``. What was drawn goes to ``meta.drawn`` (:class:`..contracts.DrawnJoint`).
Templates agree in number with the joints drawn (``{n:a circle|circles}``, :class:`..instructions.Number`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import imageio
from ..config import rng
from ..contracts import DrawnJoint, PersonKeypoints
from ..errors import ConfigError
from ..instructions import Number, choose
from ..render import keypoints as K
from ..render.common import RenderConfig, RenderStage, SourceImage, encode_target, verify_written
from ..render.palette import PALETTE, names as palette_names
from ..schema import Row, drop, make_key
from ..stage import child

ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]


@dataclass
class RenderKeypointsConfig(RenderConfig):
    min_joints: int = field(default=1, metadata=rng(1))  # joints drawn per sample, at least
    max_joints: int = field(default=5, metadata=rng(1))  # and at most
    # circle radius as a fraction of the longer side of the written image
    radius_frac: float = field(default=0.01, metadata=rng(0, 0.25))
    min_radius: int = field(default=3, metadata=rng(1))  # px
    # 1: labelled joints, occluded included (COCO v=1); 2: visible only
    min_visibility: int = field(default=1, metadata=rng(1, 2))
    # px, verification: a recovered circle centre farther than this from its joint fails the sample
    max_centre_error: float = field(default=1.5, metadata=rng(0))
    templates: str = "keypoint"


def describe_person(bbox: list | None, people: list | None) -> str:
    """'the person' when alone; otherwise its place from the left among the people of the image."""
    if not bbox or not people or len(people) < 2:
        return "the person"
    centres = sorted((p[0] + p[2] / 2.0) for p in people)
    cx = bbox[0] + bbox[2] / 2.0
    rank = int(np.argmin([abs(c - cx) for c in centres]))
    n = len(centres)
    if rank == 0:
        return "the leftmost person"
    if rank == n - 1:
        return "the rightmost person"
    if n == 3:
        return "the person in the middle"
    return f"the {ORDINALS[min(rank, len(ORDINALS) - 1)]} person from the left"


def join_items(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class RenderKeypoints(RenderStage):
    name = "render_keypoints"
    Config = RenderKeypointsConfig
    task = "keypoint"

    def validate(self) -> None:
        c = self.config
        if not 1 <= c.min_joints <= c.max_joints:
            raise ConfigError(f"{self.name}.min_joints/max_joints: need 1 <= min <= max, got {c.min_joints}..{c.max_joints}")
        if len(palette_names(c.colors)) < c.max_joints:
            raise ConfigError(f"{self.name}.colors: need at least max_joints={c.max_joints} colours")
        super().validate()

    def render(self, rec: Row, src: SourceImage, templates: list[str]) -> list[Row]:
        cfg = self.config
        meta = rec["meta"]
        rid = meta.get("record_id")
        h, w = src.rgb.shape[:2]
        radius = K.radius_for(h, w, cfg.radius_frac, cfg.min_radius)
        kp = PersonKeypoints.from_meta(meta, record=rid)
        joints = [j.scaled(src.scale).to_meta() for j in kp.joints]
        person = describe_person(kp.bbox, kp.people)
        palette = {n: PALETTE[n] for n in palette_names(cfg.colors)}
        base = {k: v for k, v in meta.items() if k != "joints"}  # people stay: the trainer crops around them
        rows = []
        for v in range(cfg.variants_per_record):
            rng = self.rng(rec["key"], v)
            k = int(rng.integers(cfg.min_joints, cfg.max_joints + 1))
            chosen = K.select_joints(joints, h, w, radius, k, rng, cfg.min_visibility)
            key = make_key(rec["dataset"], rid, f"v{v}")
            row = child(rec, key=key, src=src.data, meta=dict(base, variant=v, scale=src.scale, size=[h, w]))
            if not chosen:
                rows.append(drop(row, "no labelled joint fits a circle inside the image"))
                continue
            colours: list[str] = []
            for i in chosen:
                colours.append(K.pick_color(src.rgb, joints[i]["x"], joints[i]["y"], radius, palette, set(colours), rng))
            pts = [(joints[i]["x"], joints[i]["y"]) for i in chosen]
            rgbs = [palette[c] for c in colours]
            drawn_px = K.draw(src.rgb, pts, rgbs, radius)
            tgt_bytes = encode_target(drawn_px, cfg)
            items = [f"the {joints[i]['name']} in {c}" for i, c in zip(chosen, colours)]
            t_idx, text = choose(templates, rng, items=join_items(items), person=person, n=Number(len(chosen)))
            drawn = [DrawnJoint(joints[i]["name"], joints[i]["x"], joints[i]["y"], joints[i]["v"], c,
                                list(palette[c])).to_meta() for i, c in zip(chosen, colours)]
            row.update(tgt=tgt_bytes, instruction=text)
            row["meta"].update(drawn=drawn, radius=radius, person=person, template=t_idx)
            if cfg.verify:  # the written bytes for a reproducible share of samples, the exact pixels otherwise
                on = "written" if verify_written(key, cfg) else "pixels"
                errs = K.recover_centres(src.rgb, imageio.decode(tgt_bytes) if on == "written" else drawn_px, pts,
                                         rgbs, radius)
                worst = max(errs)
                row["meta"]["verify"] = {"max_centre_error": round(worst, 3) if np.isfinite(worst) else None,
                                         "on": on}
                row["meta"]["verified"] = bool(worst <= cfg.max_centre_error)
                if not row["meta"]["verified"]:
                    drop(row, "verification failed: circle centre off",
                         centre_error=row["meta"]["verify"]["max_centre_error"], max_centre_error=cfg.max_centre_error)
            rows.append(row)
        return rows


STAGE = RenderKeypoints
