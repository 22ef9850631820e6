"""GQA-Inpaint (the Inst-Inpaint dataset): GQA images with one object inpainted away.

Layout::

    images/<image_id>.jpg                         the original image (object present)
    images_inpainted/<image_id>/<object_id>.jpg   the object removed
    masks/<image_id>/<object_id>.jpg              the object's mask
    train_scenes.json / test_scenes.json          {image_id: {"width", "height", "objects":
        {object_id: {"name", "attributes": [...], "relations": [{"name", "object"}], "bbox",
         "bidirected": bool}}, "image_relative_positions": {object_id: "to the left"}}}
    test_instructions.json (optional)             {"i<image_id>-o<object_id>": "remove the ..."}

Every object with ``bidirected: true`` is a pair. ``direction: remove`` (default): source = original,
target = inpainted, "remove the white cup at the left of the plate"; ``add`` swaps them ("add a white
cup ..."). Instructions are built from the scene graph like the dataset's own loader does (an
attribute, at most ``max_relations`` relations or the image-relative position), seeded per record;
a fixed instruction file overrides them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import numpy as np

from ..config import check_path, rng
from ..errors import ConfigError
from ..schema import Row
from ..storage import child_path, is_uri
from ._base import (BAD_FIELD, EXCLUDED, NO_IMAGE_FILE, NOT_FINITE, RecordSource, SourceConfig, bad_record, finite,
                    image_path, load_json)
from . import _edit
from ._coco import annotation_inputs

DATASET = "gqa_inpaint"
REMOVE_RELATIONS = {"to the left of": "at the left of", "to the right of": "at the right of",
                    "to the left": "at the left", "to the center": "at the center", "to the right": "at the right"}


@dataclass
class GQAInpaintConfig(SourceConfig):
    root: str = ""  # folder holding images/, images_inpainted/, masks/ and the scenes json
    scenes: str = "train_scenes.json"  # relative to root (or absolute)
    instructions: str | None = None  # optional fixed instructions json {"i<image>-o<object>": text}
    direction: Literal["remove", "add"] = "remove"
    max_relations: int = field(default=1, metadata=rng(0))
    use_mask: bool = True


def _object_problem(obj: dict) -> tuple | None:
    """The first fault of an object's fields the reader uses (name, attributes, relations, bbox)."""
    if not isinstance(obj.get("name"), str) or not obj["name"].strip():
        return BAD_FIELD, "name"
    attrs = obj.get("attributes")
    if attrs is not None and not (isinstance(attrs, list) and all(isinstance(a, str) for a in attrs)):
        return BAD_FIELD, "attributes"
    rels = obj.get("relations")
    if rels is not None and not (isinstance(rels, list) and all(
            isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("object"), (str, int))
            for r in rels)):
        return BAD_FIELD, "relations"
    box = obj.get("bbox")
    if box is not None:
        if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                 for v in box):
            return BAD_FIELD, "bbox"
        if not finite(*box):
            return NOT_FINITE, "bbox"
    return None


class GQAInpaintSource(RecordSource):
    name = "gqa_inpaint"
    Config = GQAInpaintConfig

    def _path(self, p: str) -> str:
        from pathlib import Path

        if is_uri(p) or Path(p).is_absolute() or Path(p).exists():
            return p
        return child_path(self.config.root, p)

    def validate(self) -> None:
        if not self.config.root:
            raise ConfigError("source.root: required (the gqa-inpaint folder)")
        check_path(self.config.root, "source.root", kind="dir")
        check_path(self._path(self.config.scenes), "source.scenes", kind="file")
        if self.config.instructions:
            check_path(self._path(self.config.instructions), "source.instructions", kind="file")

    def input_files(self) -> list[str]:
        """The scenes json and the fixed instructions (not the image folders: see gier.py)."""
        c = self.config
        return annotation_inputs(self, self._path(c.scenes), self._path(c.instructions) if c.instructions else None)

    def records(self) -> Iterator[Row]:
        c = self.config
        scenes_file = self._path(c.scenes)
        scenes = load_json(scenes_file, "source.scenes")
        if not isinstance(scenes, dict):
            raise ConfigError(f"source.scenes: {scenes_file}: expected an object {{image_id: scene}}")
        fixed: dict = {}
        if c.instructions:
            fixed = load_json(self._path(c.instructions), "source.instructions")
            if not isinstance(fixed, dict):
                raise ConfigError(f"source.instructions: expected an object {{\"i<image>-o<object>\": text}}")
        for image_id in sorted(scenes):
            yield from self._scene(str(image_id), scenes[image_id], scenes_file, fixed)

    def _scene(self, image_id: str, scene: Any, scenes_file: str, fixed: dict) -> Iterator[Row]:
        c = self.config
        objects = scene.get("objects") if isinstance(scene, dict) else None
        if not isinstance(objects, dict):
            yield bad_record(DATASET, "edit", f"i{image_id}", BAD_FIELD, scenes_file,
                             "scene" if not isinstance(scene, dict) else "objects", image_id=image_id)
            return
        scene_faults: list[tuple] = []
        for key in ("width", "height"):
            v = scene.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                scene_faults.append((BAD_FIELD, key))
            elif v is not None and not finite(v):
                scene_faults.append((NOT_FINITE, key))
        positions = scene.get("image_relative_positions")
        if positions is not None and not isinstance(positions, dict):
            scene_faults.append((BAD_FIELD, "image_relative_positions"))
        images = image_path(child_path(c.root, "images"), f"{image_id}.jpg")
        if images is None:
            scene_faults.append((BAD_FIELD, "image_id"))
        elif self.excluded(image_id):
            scene_faults.append((EXCLUDED, "image_id"))
        counts: dict[str, int] = {}
        for o in objects.values():
            if isinstance(o, dict) and isinstance(o.get("name"), str):
                counts[o["name"]] = counts.get(o["name"], 0) + 1
        for object_id in sorted(objects, key=lambda s: (len(s), s)):
            obj = objects[object_id]
            rid = f"i{image_id}-o{object_id}"
            if not isinstance(obj, dict):
                yield bad_record(DATASET, "edit", rid, BAD_FIELD, scenes_file, "object", image_id=image_id,
                                 object_id=object_id)
                continue
            bidirected = obj.get("bidirected")
            if bidirected is None or bidirected is False:
                self.stats["objects_not_inpainted"] += 1  # no inpainted image exists for it: not a pair
                continue
            faults = list(scene_faults)
            if bidirected is not True:
                faults.append((BAD_FIELD, "bidirected"))
            problem = _object_problem(obj)
            if problem:
                faults.append(problem)
            if "/" in object_id or ".." in object_id:
                faults.append((BAD_FIELD, "object_id"))
            if faults:
                if any(f[0] == EXCLUDED for f in faults):
                    self.stats["excluded"] += 1
                yield bad_record(DATASET, "edit", rid, faults[0][0], scenes_file, faults[0][1], image_id=image_id,
                                 object_id=object_id)
                continue
            yield self._pair(image_id, object_id, obj, scene, counts, fixed)

    def _pair(self, image_id: str, object_id: str, obj: dict, scene: dict, counts: dict, fixed: dict) -> Row:
        c = self.config
        rid = f"i{image_id}-o{object_id}"
        original = _edit.find_image(child_path(c.root, "images"), image_id)
        inpainted = _edit.find_image(child_path(child_path(c.root, "images_inpainted"), image_id), object_id)
        mask = (_edit.find_image(child_path(child_path(c.root, "masks"), image_id), object_id)
                if c.use_mask else None)
        if c.use_mask and mask is None:
            self.stats["pairs_without_mask"] += 1
        faults = []
        if original is None:
            faults.append((NO_IMAGE_FILE, "images", {"name": f"images/{image_id}"}))
        if inpainted is None:
            faults.append((NO_IMAGE_FILE, "images_inpainted", {"name": f"images_inpainted/{image_id}/{object_id}"}))
        text = fixed.get(rid) if rid in fixed else self._instruction(rid, scene, object_id, counts)
        src, tgt = (original, inpainted) if c.direction == "remove" else (inpainted, original)
        fields = ("images", "images_inpainted") if c.direction == "remove" else ("images_inpainted", "images")
        return _edit.edit_record(
            DATASET, rid, text, src_ref=_edit.path_ref(src), tgt_ref=_edit.path_ref(tgt),
            mask_ref=_edit.path_ref(mask), file=src or child_path(child_path(c.root, "images"), f"{image_id}.jpg"),
            faults=faults, src_field=fields[0], tgt_field=fields[1],
            image_id=image_id, object_id=object_id, object=obj.get("name"), bbox=obj.get("bbox"),
            direction=c.direction, width=scene.get("width"), height=scene.get("height"),
        )

    def _name(self, obj: dict, rng: np.random.Generator) -> str:
        attrs = [a for a in (obj.get("attributes") or []) if a]
        name = obj.get("name") or "object"
        return f"{attrs[int(rng.integers(len(attrs)))]} {name}" if attrs else name

    def _instruction(self, rid: str, scene: dict, object_id: str, counts: dict) -> str:
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{self.seed}\x00{rid}".encode()).digest()[:8], "little"))
        objects = scene.get("objects") or {}
        obj = objects[object_id]
        target = self._name(obj, rng)
        unique = counts.get(obj.get("name"), 0) == 1
        parts: list[str] = []
        if not (unique and rng.random() < 0.5):
            rels = [r for r in (obj.get("relations") or []) if isinstance(objects.get(r.get("object")), dict)
                    and _object_problem(objects[r["object"]]) is None]
            rng.shuffle(rels)
            for r in rels[: self.config.max_relations]:
                rel = r.get("name", "")
                rel = REMOVE_RELATIONS.get(rel, rel) if self.config.direction == "remove" else rel
                parts.append(f"{rel} the {self._name(objects[r['object']], rng)}")
            if not parts:
                pos = (scene.get("image_relative_positions") or {}).get(object_id)
                if isinstance(pos, str) and pos:
                    parts.append(REMOVE_RELATIONS.get(pos, pos) if self.config.direction == "remove" else pos)
        tail = " and ".join(parts)
        verb = "remove the" if self.config.direction == "remove" else "add a"
        return f"{verb} {target} {tail}".strip()


SOURCE = GQAInpaintSource
