"""RefCOCO / RefCOCO+ / RefCOCOg (G-Ref), as released by the refer toolkit:

* ``refs(<splitBy>).p`` (``refs(unc).p``, ``refs(umd).p``, ``refs(google).p``): a pickle (written by
  Python 2) of a list of refs ``{ref_id, ann_id, image_id, split, sentences: [{tokens, raw, sent_id,
  sent}], file_name, category_id, sent_ids}``; ``file_name`` names the ref
  (``COCO_train2014_..._<ref>.jpg``), not the image file.
* ``instances.json``: COCO format with the referred annotations (polygon or RLE segmentation).

One record per ref of the selected ``splits`` (record id: ``ref_id``), in file order; its sentences
are the referring expressions, drawn one per variant. Refs of other splits are not records; they are
counted in the reader stats (``refs_other_split``, and per split ``refs_other_split:<split>``), so
``source_stats`` explains the record count. ``instances.json`` is streamed: only the annotations the
selected refs name are kept.

RefCOCO's val/testA/testB images are COCO train2014 images: keep them out of training data built from
COCO with ``source.exclude_image_ids`` (``idd overlap`` writes the list).

The pickle is the dataset's own format; only load refs files you trust (unpickling runs code).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..config import check_path
from ..errors import ConfigError
from ..schema import Row
from ..storage import read_bytes
from ._base import BAD_FIELD, EXCLUDED, UNKNOWN_IMAGE, RecordSource, SourceConfig, bad_record, record_row
from ._coco import (DUPLICATE_ID, ImageFolder, ImageIndex, Repeats, annotation_inputs, local_or_uri, segment_payload,
                    valid_id)
from ._json_stream import JsonStream

UNKNOWN_ANNOTATION = "ref points at an unknown annotation id"
NO_SENTENCE = "ref has no sentence"


@dataclass
class RefCocoConfig(SourceConfig):
    refs: str = ""  # refs(unc).p, refs(umd).p, refs(google).p
    instances: str = ""  # instances.json of the same dataset
    images: str = ""  # COCO train2014 images
    splits: list[str] = field(default_factory=lambda: ["train"])  # empty: every split
    dataset: str = "refcoco"
    image_set: str = "coco"  # what image ids number (idd overlap compares outputs of the same image set)


def sentences_of(ref: dict) -> list[str]:
    sents = ref.get("sentences")
    out = []
    for s in sents if isinstance(sents, list) else []:
        text = (s.get("sent") or s.get("raw") or "") if isinstance(s, dict) else s
        if isinstance(text, str) and text.strip():
            out.append(text.strip())
    return out


def ann_ids_of(value: Any) -> list | None:
    """The annotation ids a ref names (RefCOCO: one id; gRefCOCO: a list, ``[-1]`` or empty for a
    no-target expression), or None when the field is malformed."""
    vals = value if isinstance(value, list) else [value]
    if any(v is not None and not valid_id(v) for v in vals):
        return None
    return [v for v in vals if v is not None and v != -1]


def load_refs_pickle(path: str) -> list:
    """A refer-toolkit refs pickle (Python 2 strings read as latin-1) as a list of refs."""
    try:
        refs = pickle.loads(read_bytes(path), encoding="latin1")
    except FileNotFoundError:
        raise ConfigError(f"source.refs: file not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a file the user named
        raise ConfigError(f"source.refs: {path} is not a refs pickle ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(refs, list):
        raise ConfigError(f"source.refs: {path} holds {type(refs).__name__}, expected a list of refs")
    return refs


class RefSource(RecordSource):
    """The record loop shared by RefCOCO(+/g) and gRefCOCO; subclasses say how refs files are read
    (:meth:`iter_refs`, called twice: once for the annotation ids to keep, once for the records)."""

    def validate(self) -> None:
        cfg = self.config
        for key in ("refs", "instances", "images"):
            if not getattr(cfg, key):
                raise ConfigError(f"source.{key}: required")
        check_path(cfg.refs, "source.refs", kind="file")
        check_path(cfg.instances, "source.instances", kind="file")
        check_path(cfg.images, "source.images", kind="dir")

    def input_files(self) -> list[str]:
        return annotation_inputs(self, self.config.refs, self.config.instances)

    def iter_refs(self) -> Iterator[Any]:
        raise ConfigError(f"source: {type(self).__name__} cannot read refs files")

    def _selected(self, ref: Any) -> bool:
        return isinstance(ref, dict) and (not self.config.splits or ref.get("split") in self.config.splits)

    def records(self) -> Iterator[Row]:
        cfg = self.config
        need: set = set()
        repeats = Repeats()
        for ref in self.iter_refs():
            if self._selected(ref):
                need.update(ann_ids_of(ref.get("ann_id")) or [])
                if valid_id(ref.get("ref_id")):
                    repeats.note(str(ref["ref_id"]))
        repeats.freeze()
        inst = JsonStream(cfg.instances, "source.instances")
        images = ImageIndex().load(inst)
        anns: dict = {}
        n = 0
        for a in inst.items("annotations.item"):
            n += 1
            if isinstance(a, dict) and valid_id(a.get("id")) and a["id"] in need:
                seg, reason, problem = segment_payload(a.get("segmentation"))
                anns[a["id"]] = (a.get("category_id") if valid_id(a.get("category_id")) else None, seg, reason,
                                 problem)
        if n == 0:
            inst.require_list("annotations")
        refs_file, inst_file = local_or_uri(cfg.refs), local_or_uri(cfg.instances)
        folder = ImageFolder(cfg.images)
        for i, ref in enumerate(self.iter_refs()):
            self.stats["refs"] += 1
            row = self._ref(ref, i, images, folder, anns, refs_file, inst_file, repeats)
            if row is not None:
                yield row

    def _ref(self, ref: Any, i: int, images: ImageIndex, folder: ImageFolder, anns: dict, refs_file: str,
             inst_file: str, repeats: Repeats) -> Row | None:
        cfg = self.config
        ds = cfg.dataset
        if not isinstance(ref, dict):
            return bad_record(ds, "referring_seg", f"refs[{i}]", BAD_FIELD, refs_file, "refs[]", ref_index=i)
        split = ref.get("split")
        if not isinstance(split, str):
            return bad_record(ds, "referring_seg", f"refs[{i}]", BAD_FIELD, refs_file, "split", ref_index=i)
        if cfg.splits and split not in cfg.splits:
            self.stats["refs_other_split"] += 1
            self.stats[f"refs_other_split:{split}"] += 1
            return None
        rid = ref.get("ref_id")
        iid = ref.get("image_id")
        if not valid_id(rid):
            return bad_record(ds, "referring_seg", f"refs[{i}]", BAD_FIELD, refs_file, "ref_id", ref_index=i)
        if repeats.repeat(str(rid)):
            self.stats["duplicate_ids"] += 1
            return bad_record(ds, "referring_seg", f"{rid}#refs[{i}]", DUPLICATE_ID, refs_file, "ref_id", ref_index=i)

        def bad(reason: str, at: str, field: str, detail: dict | None = None, **meta: Any) -> Row:
            return bad_record(ds, "referring_seg", rid, reason, at, field, detail=detail, image_id=iid, split=split,
                              **meta)

        if not valid_id(iid):
            iid = None
            return bad(BAD_FIELD, refs_file, "image_id")
        if self.excluded(iid):
            return bad(EXCLUDED, refs_file, "image_id")
        img = images.get(iid)
        if img is None:
            return bad(UNKNOWN_IMAGE, refs_file, "image_id")
        name, w, h, _, problem = img
        path = folder.path(name)
        if path is None:
            return bad(BAD_FIELD, inst_file, "images[].file_name", {"file_name": name})
        if problem:
            return bad(problem[1], inst_file, f"images[].{problem[0]}", image=path)
        ann_ids = ann_ids_of(ref.get("ann_id"))
        if ann_ids is None:
            return bad(BAD_FIELD, refs_file, "ann_id", image=path)
        no_target = not ann_ids
        if ref.get("no_target") not in (None, True, False):
            return bad(BAD_FIELD, refs_file, "no_target", image=path)
        missing = [a for a in ann_ids if a not in anns]
        if missing:
            return bad(UNKNOWN_ANNOTATION, refs_file, "ann_id", {"ann_id": missing[0]}, image=path)
        targets = []
        for a in ann_ids:
            cid, seg, reason, problem = anns[a]
            if seg is None:
                return bad(reason, inst_file, "annotations[].segmentation", {"ann_id": a, "problem": problem},
                           image=path)
            targets.append({"category_id": cid, **seg})
        sents = sentences_of(ref)
        if not sents:
            return bad(NO_SENTENCE, refs_file, "sentences", image=path)
        return record_row(ds, "referring_seg", rid, {
            "file": path, "image_id": iid, "width": _num(w), "height": _num(h), "split": split,
            "sentences": sents, "ann_ids": ann_ids, "no_target": bool(ref.get("no_target")) or no_target,
            "targets": [] if (no_target or ref.get("no_target")) else targets,
            **({"image_set": cfg.image_set} if cfg.image_set else {}),
        })


def _num(v: float | None) -> int | float | None:
    return int(v) if isinstance(v, float) and v.is_integer() else v


class RefCocoSource(RefSource):
    name = "refcoco"
    Config = RefCocoConfig

    def iter_refs(self) -> Iterator[Any]:
        if getattr(self, "_refs", None) is None:
            self._refs = load_refs_pickle(self.config.refs)
        return iter(self._refs)

    def eval_image_ids(self) -> dict[str, set]:
        """Image ids per split of the refs file (``idd overlap``)."""
        return split_image_ids(self.iter_refs())


def split_image_ids(refs: Any) -> dict[str, set]:
    out: dict[str, set] = {}
    for ref in refs:
        if isinstance(ref, dict) and isinstance(ref.get("split"), str) and valid_id(ref.get("image_id")):
            out.setdefault(ref["split"], set()).add(ref["image_id"])
    return out


SOURCE = RefCocoSource
