"""gRefCOCO (generalised referring expressions): ``grefs(unc).json`` + ``instances.json``.

A gref is ``{ref_id, image_id, ann_id: [ids], sent_ids, sentences: [{tokens, raw, sent_id, sent}],
split, file_name, category_id: [ids], no_target: bool}``. Multi-target expressions name several
annotations (all are masked); no-target expressions (``no_target: true``, ``ann_id: [-1]``) name
nothing in the image, and their target equals the source.

Both files are streamed (the grefs list one ref at a time); the record loop, split counting and
exclusion are RefCOCO's (:mod:`.refcoco`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import ConfigError
from ._base import SourceConfig
from ._json_stream import JsonStream
from .refcoco import RefSource, split_image_ids


@dataclass
class GRefCocoConfig(SourceConfig):
    refs: str = ""  # grefs(unc).json
    instances: str = ""
    images: str = ""
    splits: list[str] = field(default_factory=lambda: ["train"])  # empty: every split
    dataset: str = "grefcoco"
    image_set: str = "coco"  # what image ids number (idd overlap compares outputs of the same image set)


class GRefCocoSource(RefSource):
    name = "grefcoco"
    Config = GRefCocoConfig

    def iter_refs(self) -> Iterator[Any]:
        stream = JsonStream(self.config.refs, "source.refs")
        if stream.first_char() != "[":
            raise ConfigError(f"source.refs: {self.config.refs} must hold a list of refs")
        return stream.items("item")

    def eval_image_ids(self) -> dict[str, set]:
        return split_image_ids(self.iter_refs())


SOURCE = GRefCocoSource
