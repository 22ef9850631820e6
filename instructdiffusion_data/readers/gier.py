"""GIER (Grounded Image Editing Requests): one json file, a list of entries with ``input`` and
``output`` image names, ``request`` (the user's words), ``detailed_request``, ``operator`` (the edit
operations and parameters) and summaries (``expert_summary``, ``amateur_summary``). The released
file contains bare ``NaN`` tokens (empty fields); Python's json parser reads them as NaN floats: a
NaN instruction drops the record (``instruction is NaN``), a NaN image name is a missing pair half,
and NaN in the pass-through fields (``operator``, summaries) becomes ``null`` in ``meta``.

Images resolve against ``images`` (default: the ``images/`` folder beside the json, else the
json's folder). One record per entry (``record_id`` = its ``id``, else its position); an entry that
is not an object, a repeated id, an image name of the wrong type or an image that is not there is a
dropped record naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..config import check_path
from ..errors import ConfigError
from ..schema import Row
from ..storage import child_path, exists, is_uri
from ._base import BAD_FIELD, NO_IMAGE_FILE, RecordSource, SourceConfig, bad_record, finite, image_path, load_json
from . import _edit
from ._coco import annotation_inputs

DATASET = "gier"
SUMMARY_FIELDS = ("expert_summary", "amateur_summary", "summary")


@dataclass
class GIERConfig(SourceConfig):
    annotations: str = ""  # GIER.json
    images: str | None = None  # folder of the images (default: images/ beside the json)
    instruction_field: str = "request"
    fallback_fields: list[str] = field(default_factory=list)  # e.g. [detailed_request]: used when the first is NaN/empty


def _parent(path: str) -> str:
    if is_uri(path):
        return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[0]
    return str(Path(path).resolve().parent)


class GIERSource(RecordSource):
    name = "gier"
    Config = GIERConfig

    def validate(self) -> None:
        if not self.config.annotations:
            raise ConfigError("source.annotations: required (GIER json)")
        check_path(self.config.annotations, "source.annotations", kind="file")
        check_path(self.config.images, "source.images", kind="dir")

    def _bases(self) -> list[str]:
        if self.config.images:
            return [self.config.images]
        d = _parent(self.config.annotations)
        return [child_path(d, "images"), d]

    def _resolve(self, name: Any, what: str) -> tuple[str | None, tuple | None]:
        """(image path, fault) of an ``input``/``output`` value."""
        if name is None or (isinstance(name, float) and not finite(name)) or (isinstance(name, str) and not name.strip()):
            return None, None  # an empty field: a missing pair half
        if not isinstance(name, str):
            return None, (BAD_FIELD, what, {"type": type(name).__name__})
        for b in self._bases():
            for cand in (name, name.rsplit("/", 1)[-1]):
                p = image_path(b, cand)
                if p is not None and exists(p, "file"):
                    return p, None
        return None, (NO_IMAGE_FILE, what, {"name": name})

    def input_files(self) -> list[str]:
        """The json (and the exclusion list); not the image folder: listing and stat-ing every image on
        each plan costs more than the split (an image added later is seen by a --overwrite run)."""
        return annotation_inputs(self, self.config.annotations)

    def records(self) -> Iterator[Row]:
        path = self.config.annotations
        data = load_json(path, "source.annotations")  # accepts NaN / Infinity tokens
        if isinstance(data, dict):
            data = data.get("data") or data.get("annotations") or list(data.values())
        if not isinstance(data, list):
            raise ConfigError(f"source.annotations: {path}: expected a list of entries")
        seen: set[str] = set()
        for idx, ent in enumerate(data):
            if not isinstance(ent, dict):
                rid, _dup = _edit.unique_id(str(idx), seen, idx)
                yield bad_record(DATASET, "edit", rid, BAD_FIELD, path, "entry", entry=idx)
                continue
            eid = ent.get("id")
            rid = str(eid) if isinstance(eid, (str, int)) and not isinstance(eid, bool) and str(eid).strip() else str(idx)
            faults: list[tuple] = []
            rid, dup = _edit.unique_id(rid, seen, idx)
            if dup:
                faults.append((_edit.DUPLICATE_ID, "id"))
            field_used = self.config.instruction_field
            text = ent.get(field_used)
            for fb in self.config.fallback_fields:
                if _edit.instruction_problem(text) is None:
                    break
                field_used, text = fb, ent.get(fb)
            src, f_src = self._resolve(ent.get("input"), "input")
            tgt, f_tgt = self._resolve(ent.get("output"), "output")
            faults += [f for f in (f_src, f_tgt) if f]
            yield _edit.edit_record(
                DATASET, rid, text, src_ref=_edit.path_ref(src), tgt_ref=_edit.path_ref(tgt),
                file=src or path, faults=faults, src_field="input", tgt_field="output",
                instruction_field=field_used, entry=idx, input=ent.get("input"), output=ent.get("output"),
                detailed_request=ent.get("detailed_request"), operator=ent.get("operator"),
                summaries={k: ent.get(k) for k in SUMMARY_FIELDS if k in ent},
            )


SOURCE = GIERSource
