"""gRefCOCO (generalised referring expressions): ``grefs(unc).json`` + ``instances.json``.

A gref is ``{ref_id, image_id, ann_id: [ids], sent_ids, sentences: [{tokens, raw, sent_id, sent}],
split, file_name, category_id: [ids], no_target: bool}``. Multi-target expressions name several
annotations (all are masked); no-target expressions (``no_target: true``, ``ann_id: [-1]``) name
nothing in the image, and their target equals the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..config import check_path
from ..errors import ConfigError
from ..schema import Row
from ..stage import Source, SourceConfig
from ._coco import bad_record, image_index, load_json, record_row, require_keys
from .refcoco import segment_of, sentences_of


@dataclass
class GRefCocoConfig(SourceConfig):
    refs: str = ""  # grefs(unc).json
    instances: str = ""
    images: str = ""
    splits: list[str] = field(default_factory=lambda: ["train"])
    dataset: str = "grefcoco"


class GRefCocoSource(Source):
    name = "grefcoco"
    Config = GRefCocoConfig

    def validate(self) -> None:
        cfg = self.config
        for key in ("refs", "instances", "images"):
            if not getattr(cfg, key):
                raise ConfigError(f"source.{key}: required")
        check_path(cfg.refs, "source.refs", kind="file")
        check_path(cfg.instances, "source.instances", kind="file")
        check_path(cfg.images, "source.images", kind="dir")

    def records(self) -> Iterator[Row]:
        cfg = self.config
        refs = load_json(cfg.refs, "source.refs")
        if not isinstance(refs, list):
            raise ConfigError(f"source.refs: {cfg.refs} must hold a list of refs")
        doc = load_json(cfg.instances, "source.instances")
        require_keys(doc, ("images", "annotations"), cfg.instances, "source.instances")
        images = image_index(doc)
        anns = {a["id"]: a for a in doc["annotations"]}
        refs_file = str(Path(cfg.refs).resolve())
        for ref in sorted(refs, key=lambda r: r.get("ref_id", -1)):
            if cfg.splits and ref.get("split") not in cfg.splits:
                continue
            rid = ref.get("ref_id")
            img = images.get(ref.get("image_id"))
            if img is None:
                yield bad_record(cfg.dataset, "referring_seg", rid, "ref points at an unknown image id", refs_file, "image_id")
                continue
            path = str((Path(cfg.images) / img["file_name"]).resolve())
            ann_ids = ref.get("ann_id")
            ann_ids = ann_ids if isinstance(ann_ids, list) else [ann_ids]
            ann_ids = [a for a in ann_ids if a is not None and a != -1]
            no_target = bool(ref.get("no_target")) or not ann_ids
            missing = [a for a in ann_ids if a not in anns]
            if missing:
                yield bad_record(cfg.dataset, "referring_seg", rid, f"ref points at unknown annotation id {missing[0]}",
                                 refs_file, "ann_id", image=path)
                continue
            sents = sentences_of(ref)
            if not sents:
                yield bad_record(cfg.dataset, "referring_seg", rid, "ref has no sentence", refs_file, "sentences", image=path)
                continue
            yield record_row(cfg.dataset, "referring_seg", rid, {
                "file": path, "image_id": img["id"], "width": img.get("width"), "height": img.get("height"),
                "split": ref.get("split"), "sentences": sents, "ann_ids": ann_ids, "no_target": no_target,
                "targets": [] if no_target else [{"category_id": anns[a].get("category_id"), **segment_of(anns[a])}
                                                 for a in ann_ids],
            })


SOURCE = GRefCocoSource
