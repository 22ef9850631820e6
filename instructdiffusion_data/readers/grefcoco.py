"""gRefCOCO (generalised referring expressions): ``grefs(unc).json`` + ``instances.json``.

A gref is ``{ref_id, image_id, ann_id: [ids], sent_ids, sentences: [{tokens, raw, sent_id, sent}],
split, file_name, category_id: [ids], no_target: bool}``. Multi-target expressions name several
annotations (all are masked); no-target expressions (``no_target: true``, ``ann_id: [-1]``) name
nothing in the image, and their target equals the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ._base import SourceConfig
from ._coco import load_json
from .refcoco import RefSource


@dataclass
class GRefCocoConfig(SourceConfig):
    refs: str = ""  # grefs(unc).json
    instances: str = ""
    images: str = ""
    splits: list[str] = field(default_factory=lambda: ["train"])
    dataset: str = "grefcoco"


class GRefCocoSource(RefSource):
    name = "grefcoco"
    Config = GRefCocoConfig

    def load_refs(self) -> list:
        refs = load_json(self.config.refs, "source.refs")
        if not isinstance(refs, list):
            raise ConfigError(f"source.refs: {self.config.refs} must hold a list of refs")
        return refs


SOURCE = GRefCocoSource
