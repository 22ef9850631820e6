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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from ..errors import ConfigError
from ..schema import Row
from ._base import RecordSource, SourceConfig
from . import _edit

REMOVE_RELATIONS = {"to the left of": "at the left of", "to the right of": "at the right of",
                    "to the left": "at the left", "to the center": "at the center", "to the right": "at the right"}


@dataclass
class GQAInpaintConfig(SourceConfig):
    root: str = ""  # folder holding images/, images_inpainted/, masks/ and the scenes json
    scenes: str = "train_scenes.json"  # relative to root (or absolute)
    instructions: str | None = None  # optional fixed instructions json {"i<image>-o<object>": text}
    direction: Literal["remove", "add"] = "remove"
    max_relations: int = 1
    use_mask: bool = True


class GQAInpaintSource(RecordSource):
    name = "gqa_inpaint"
    Config = GQAInpaintConfig

    def _path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() or q.exists() else Path(self.config.root) / q

    def validate(self) -> None:
        from ..config import check_path

        if not self.config.root:
            raise ConfigError("source.root: required (the gqa-inpaint folder)")
        check_path(self.config.root, "source.root", kind="dir")
        check_path(str(self._path(self.config.scenes)), "source.scenes", kind="file")
        if self.config.instructions:
            check_path(str(self._path(self.config.instructions)), "source.instructions", kind="file")

    def records(self) -> Iterator[Row]:
        c = self.config
        root = Path(c.root).resolve()
        try:
            scenes = json.loads(self._path(c.scenes).read_text())
            fixed = json.loads(self._path(c.instructions).read_text()) if c.instructions else {}
        except ValueError as e:
            raise ConfigError(f"source.scenes: not valid JSON ({e})") from None
        skipped = 0
        for image_id in sorted(scenes):
            scene = scenes[image_id] or {}
            objects = scene.get("objects") or {}
            counts: dict[str, int] = {}
            for o in objects.values():
                counts[o.get("name")] = counts.get(o.get("name"), 0) + 1
            for object_id in sorted(objects, key=lambda s: (len(s), s)):
                obj = objects[object_id]
                if not obj.get("bidirected"):
                    skipped += 1  # no inpainted image exists for it: not a pair of the dataset
                    continue
                rid = f"i{image_id}-o{object_id}"
                original = _edit.find_image(root / "images", str(image_id))
                inpainted = _edit.find_image(root / "images_inpainted" / str(image_id), str(object_id))
                mask = _edit.find_image(root / "masks" / str(image_id), str(object_id)) if c.use_mask else None
                text = fixed.get(rid) if rid in fixed else self._instruction(rid, scene, object_id, counts)
                src, tgt = (original, inpainted) if c.direction == "remove" else (inpainted, original)
                yield _edit.edit_record(
                    "gqa_inpaint", rid, text, src_ref=_edit.path_ref(src), tgt_ref=_edit.path_ref(tgt),
                    mask_ref=_edit.path_ref(mask), file=str(src) if src else str(root / "images" / f"{image_id}.jpg"),
                    image_id=str(image_id), object_id=str(object_id), object=obj.get("name"), bbox=obj.get("bbox"),
                    direction=c.direction, width=scene.get("width"), height=scene.get("height"),
                )
        self.stats["objects_not_inpainted"] = skipped

    def _name(self, obj: dict, rng: np.random.Generator) -> str:
        attrs = [a for a in (obj.get("attributes") or []) if a]
        name = obj.get("name") or "object"
        return f"{attrs[int(rng.integers(len(attrs)))]} {name}" if attrs else name

    def _instruction(self, rid: str, scene: dict, object_id: str, counts: dict) -> str:
        import hashlib

        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{self.seed}\x00{rid}".encode()).digest()[:8], "little"))
        objects = scene.get("objects") or {}
        obj = objects[object_id]
        target = self._name(obj, rng)
        unique = counts.get(obj.get("name"), 0) == 1
        parts: list[str] = []
        if not (unique and rng.random() < 0.5):
            rels = [r for r in (obj.get("relations") or []) if r.get("object") in objects]
            rng.shuffle(rels)
            for r in rels[: self.config.max_relations]:
                rel = r.get("name", "")
                rel = REMOVE_RELATIONS.get(rel, rel) if self.config.direction == "remove" else rel
                parts.append(f"{rel} the {self._name(objects[r['object']], rng)}")
            if not parts:
                pos = (scene.get("image_relative_positions") or {}).get(object_id)
                if pos:
                    parts.append(REMOVE_RELATIONS.get(pos, pos) if self.config.direction == "remove" else pos)
        tail = " and ".join(parts)
        verb = "remove the" if self.config.direction == "remove" else "add a"
        return f"{verb} {target} {tail}".strip()


SOURCE = GQAInpaintSource
