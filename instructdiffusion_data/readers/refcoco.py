"""RefCOCO / RefCOCO+ / RefCOCOg (G-Ref), as released by the refer toolkit:

* ``refs(<splitBy>).p``: a pickle (written by Python 2) of a list of refs
  ``{ref_id, ann_id, image_id, split, sentences: [{tokens, raw, sent_id, sent}], file_name,
  category_id, sent_ids}``; ``file_name`` names the ref (``COCO_train2014_..._<ref>.jpg``), not the
  image file.
* ``instances.json``: COCO format with the referred annotations (polygon or RLE segmentation).

One record per ref; its sentences are the referring expressions, drawn one per variant.

The pickle is the dataset's own format; only load refs files you trust (unpickling runs code).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..config import check_path
from ..errors import ConfigError
from ..schema import Row
from ..storage import child_path, is_uri
from ._base import RecordSource, SourceConfig
from ._coco import bad_record, image_index, load_json, record_row, require_keys


@dataclass
class RefCocoConfig(SourceConfig):
    refs: str = ""  # refs(unc).p, refs(umd).p, refs(google).p
    instances: str = ""  # instances.json of the same dataset
    images: str = ""  # COCO train2014 images
    splits: list[str] = field(default_factory=lambda: ["train"])
    dataset: str = "refcoco"


def segment_of(ann: dict) -> dict:
    seg = ann.get("segmentation")
    return {"rle": seg} if isinstance(seg, dict) else {"polygons": seg or []}


def sentences_of(ref: dict) -> list[str]:
    out = []
    for s in ref.get("sentences") or []:
        text = (s.get("sent") or s.get("raw") or "").strip() if isinstance(s, dict) else str(s).strip()
        if text:
            out.append(text)
    return out


class RefSource(RecordSource):
    """The record loop shared by RefCOCO(+/g) and gRefCOCO; subclasses say how refs files are read."""

    def validate(self) -> None:
        cfg = self.config
        for key in ("refs", "instances", "images"):
            if not getattr(cfg, key):
                raise ConfigError(f"source.{key}: required")
        check_path(cfg.refs, "source.refs", kind="file")
        check_path(cfg.instances, "source.instances", kind="file")
        check_path(cfg.images, "source.images", kind="dir")

    def load_refs(self) -> list:
        raise ConfigError(f"source: {type(self).__name__} cannot read refs files")

    def records(self) -> Iterator[Row]:
        cfg = self.config
        refs = self.load_refs()
        doc = load_json(cfg.instances, "source.instances")
        require_keys(doc, ("images", "annotations"), cfg.instances, "source.instances")
        images = image_index(doc)
        anns = {a["id"]: a for a in doc["annotations"]}
        refs_file = cfg.refs if is_uri(cfg.refs) else str(Path(cfg.refs).resolve())
        for ref in sorted(refs, key=lambda r: r.get("ref_id", -1)):
            if cfg.splits and ref.get("split") not in cfg.splits:
                continue
            rid = ref.get("ref_id")
            img = images.get(ref.get("image_id"))
            if img is None:
                yield bad_record(cfg.dataset, "referring_seg", rid, "ref points at an unknown image id", refs_file, "image_id")
                continue
            path = child_path(cfg.images, img["file_name"])
            # RefCOCO: one annotation id; gRefCOCO: a list, [-1] (or empty) for no-target expressions
            ann_ids = ref.get("ann_id")
            ann_ids = [a for a in (ann_ids if isinstance(ann_ids, list) else [ann_ids]) if a is not None and a != -1]
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


class RefCocoSource(RefSource):
    name = "refcoco"
    Config = RefCocoConfig

    def load_refs(self) -> list:
        try:
            with open(self.config.refs, "rb") as fh:
                refs = pickle.load(fh, encoding="latin1")
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise ConfigError(f"source.refs: {self.config.refs} is not a refs pickle ({e})") from None
        if not isinstance(refs, list):
            raise ConfigError(f"source.refs: {self.config.refs} holds {type(refs).__name__}, expected a list of refs")
        return refs


SOURCE = RefCocoSource
