"""GIER (Grounded Image Editing Requests): one json file, a list of entries with ``input`` and
``output`` image names, ``request`` (the user's words), ``detailed_request``, ``operator`` (the edit
operations and parameters) and summaries (``expert_summary``, ``amateur_summary``). The released
file contains bare ``NaN`` tokens (empty fields); Python's json parser reads them as NaN floats,
which this reader turns into an unusable instruction (dropped with ``instruction is NaN``) or a
``null`` in ``meta``.

Images resolve against ``images`` (default: the ``images/`` folder beside the json, else the
json's folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError
from ..schema import Row
from ._base import RecordSource, SourceConfig
from . import _edit

SUMMARY_FIELDS = ("expert_summary", "amateur_summary", "summary")


@dataclass
class GIERConfig(SourceConfig):
    annotations: str = ""  # GIER.json
    images: str | None = None  # folder of the images (default: images/ beside the json)
    instruction_field: str = "request"
    fallback_fields: list[str] = field(default_factory=list)  # e.g. [detailed_request]: used when the first is NaN/empty


class GIERSource(RecordSource):
    name = "gier"
    Config = GIERConfig

    def validate(self) -> None:
        from ..config import check_path

        if not self.config.annotations:
            raise ConfigError("source.annotations: required (GIER json)")
        check_path(self.config.annotations, "source.annotations", kind="file")
        check_path(self.config.images, "source.images", kind="dir")

    def _resolve(self, name) -> Path | None:
        if not isinstance(name, str) or not name.strip():
            return None
        ann_dir = Path(self.config.annotations).resolve().parent
        bases = [Path(self.config.images)] if self.config.images else [ann_dir / "images", ann_dir]
        for b in bases:
            for cand in (b / name, b / Path(name).name):
                if cand.is_file():
                    return cand.resolve()
        return None

    def records(self) -> Iterator[Row]:
        path = Path(self.config.annotations)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))  # accepts NaN / Infinity tokens
        except ValueError as e:
            raise ConfigError(f"source.annotations: {path} is not valid JSON ({e})") from None
        if isinstance(data, dict):
            data = data.get("data") or data.get("annotations") or list(data.values())
        if not isinstance(data, list):
            raise ConfigError(f"source.annotations: {path}: expected a list of entries")
        for idx, ent in enumerate(data):
            ent = ent if isinstance(ent, dict) else {}
            rid = str(ent.get("id", idx)) if not _edit.is_nan(ent.get("id")) else str(idx)
            text = ent.get(self.config.instruction_field)
            for fb in self.config.fallback_fields:
                if _edit.instruction_problem(text) is None:
                    break
                text = ent.get(fb)
            src, tgt = self._resolve(ent.get("input")), self._resolve(ent.get("output"))
            row = _edit.edit_record(
                "gier", rid, text, src_ref=_edit.path_ref(src), tgt_ref=_edit.path_ref(tgt),
                file=str(src) if src else ent.get("input") if isinstance(ent.get("input"), str) else None,
                entry=idx, input=ent.get("input"), output=ent.get("output"),
                detailed_request=ent.get("detailed_request"), operator=ent.get("operator"),
                summaries={k: ent.get(k) for k in SUMMARY_FIELDS if k in ent},
            )
            yield row


SOURCE = GIERSource
