"""COCO captions files as released: ``annotations/captions_<split>.json`` (2014 and 2017 alike).

The file is a COCO object ``{"info", "licenses", "images": [{id, file_name, ...}], "annotations":
[{"id", "image_id", "caption"}]}``; every image has about five captions written by people. COCO
numbers an image the same way in 2014 and 2017 (``COCO_train2014_000000000009.jpg`` and
``000000000009.jpg`` are image 9), so a 2017 captions file serves rows made from 2014 files
(RefCOCO) too.

:func:`read_captions` streams the ``annotations`` array (``captions_train2017.json`` is ~90 MB) and
keeps ``{image_id: (caption, ...)}`` in file order, captions with their whitespace collapsed. An
annotation that is not an object, whose ``image_id`` is not a whole number or whose ``caption`` is not
a non-empty string is skipped and counted (:class:`CaptionIndex` ``.skipped``, the first few logged
with file and position); a file that is not JSON or has no ``annotations`` array is one
:class:`~..errors.ConfigError` line naming the file and the field.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..errors import ConfigError
from ._json_stream import JsonStream

log = logging.getLogger(__name__)

LOGGED_PROBLEMS = 5  # per file; the rest are counted


@dataclass
class CaptionIndex:
    """Captions per COCO image id, from one or more captions files."""

    captions: dict[int, tuple[str, ...]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    skipped: int = 0  # annotations that could not be used (see module docstring)

    def get(self, image_id) -> tuple[str, ...]:
        """The captions of ``image_id`` (an int or its decimal text), in file order; () when none."""
        iid = _whole(image_id)
        return self.captions.get(iid, ()) if iid is not None else ()

    def __len__(self) -> int:
        return len(self.captions)


def _whole(v) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    return None


def read_captions(paths: list[str], where: str = "coco_captions") -> CaptionIndex:
    """The :class:`CaptionIndex` of the captions files ``paths`` (paths or URIs), read in order."""
    index = CaptionIndex()
    found: dict[int, list[str]] = {}
    for i, path in enumerate(paths):
        at = f"{where}[{i}]"
        stream = JsonStream(path, at)
        if stream.first_char() != "{":
            raise ConfigError(f"{at}: {path} is not a COCO captions file (expected a JSON object with an "
                              f"'annotations' list)")
        seen = 0
        skipped_here = 0
        for pos, ann in enumerate(stream.items("annotations.item")):
            seen += 1
            problem = None
            if not isinstance(ann, dict):
                problem = "annotation is not an object"
            else:
                iid = _whole(ann.get("image_id"))
                text = ann.get("caption")
                if iid is None:
                    problem = f"image_id is not a whole number ({ann.get('image_id')!r})"
                elif not isinstance(text, str) or not text.strip():
                    problem = f"caption is not a non-empty string ({text!r})"
            if problem:
                skipped_here += 1
                if skipped_here <= LOGGED_PROBLEMS:
                    log.warning("%s: annotations[%d]: %s; skipped", path, pos, problem[:200])
                continue
            found.setdefault(iid, []).append(" ".join(text.split()))
        if seen == 0 and not _has_annotations(stream):
            raise ConfigError(f"{at}: {path} has no 'annotations' list (not a COCO captions file)")
        if skipped_here > LOGGED_PROBLEMS:
            log.warning("%s: %d annotations skipped in all", path, skipped_here)
        index.skipped += skipped_here
        index.files.append(path)
        log.info("%s: %d captions of %d images", path, seen - skipped_here, len(found))
    index.captions = {k: tuple(v) for k, v in found.items()}
    return index


def _has_annotations(stream: JsonStream) -> bool:
    """Whether the file's top level has an ``annotations`` array (called when it held no item: an empty
    array is read whole, cheaply)."""
    return any(isinstance(v, list) for v in stream.items("annotations"))
