"""What the COCO-family readers share (COCO keypoints, COCO-Stuff, RefCOCO, gRefCOCO, CrowdPose, AIC):

* :class:`ImageIndex`: the ``images`` array as a compact index (one small tuple per image, no dict per
  image), the memory bound of every streaming COCO reader; the file itself is read as a stream
  (:class:`~._json_stream.JsonStream`).
* :class:`Boxes`, :class:`Repeats`, :class:`ImageFolder`: compact per-image boxes, repeated record ids,
  image paths under one folder.
* the COCO-Stuff label list (:func:`cocostuff_labels`, :func:`clean_name`).
* COCO segmentations as renderer payloads (:func:`segment_payload`).
"""

from __future__ import annotations

import math
from array import array
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..storage import is_uri
from ._base import finite, image_path

if TYPE_CHECKING:
    from ._json_stream import JsonStream

LABELS_FILE = Path(__file__).resolve().parent.parent / "data" / "cocostuff_labels.txt"


# -- ids and the image index ---------------------------------------------------------------------

def valid_id(v: Any) -> bool:
    """A usable COCO id: an integer (not a bool) or a non-empty string."""
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v != "")


def sort_key(v: Any) -> tuple:
    """Orders ids of mixed types (ints first, then strings) deterministically."""
    return (0, v, "") if isinstance(v, int) and not isinstance(v, bool) else (1, 0, str(v))


def size_value(v: Any) -> tuple[float | None, str | None]:
    """A width/height from an image entry: (value, None), (None, None) when absent, or
    (None, problem class) when present but unusable."""
    from ._base import BAD_FIELD, NOT_FINITE

    if v is None:
        return None, None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None, BAD_FIELD
    if not math.isfinite(v):
        return None, NOT_FINITE
    if v <= 0:
        return None, BAD_FIELD
    return v, None


class ImageIndex:
    """The ``images`` array of a COCO-style file as a compact, columnar index: image id -> position, and
    per position the file name (a list of str), width and height (one float array) and one optional
    number a reader asks for (``extra_key``, e.g. CrowdPose's ``crowdIndex``; a float array). No dict or
    tuple per image: about 150 bytes an image. Entries without a usable id are counted (``bad``) and
    cannot be referred to; a bad ``file_name`` or size is kept as None plus a problem (a sparse dict)
    that the record reports."""

    __slots__ = ("pos", "names", "sizes", "extras", "problems", "bad", "duplicates", "extra_key")

    def __init__(self, extra_key: str | None = None):
        self.pos: dict[Any, int] = {}
        self.names: list[str | None] = []
        self.sizes = array("d")  # width, height per image; NaN: absent
        self.extras = array("d") if extra_key else None
        self.problems: dict[int, tuple[str, str]] = {}
        self.bad = 0
        self.duplicates = 0
        self.extra_key = extra_key

    def add(self, img: Any) -> None:
        if not isinstance(img, dict) or not valid_id(img.get("id")):
            self.bad += 1
            return
        iid = img["id"]
        if iid in self.pos:
            self.duplicates += 1  # the first entry wins
            return
        i = len(self.names)
        name = img.get("file_name")
        w, wp = size_value(img.get("width"))
        h, hp = size_value(img.get("height"))
        if wp or hp:
            self.problems[i] = ("width", wp) if wp else ("height", hp)
        self.pos[iid] = i
        self.names.append(name if isinstance(name, str) else None)
        self.sizes.extend((math.nan if w is None else w, math.nan if h is None else h))
        if self.extras is not None:
            extra = img.get(self.extra_key)
            self.extras.append(float(extra) if finite(extra) else math.nan)

    def get(self, image_id: Any) -> tuple | None:
        """``(file_name, width, height, extra, problem)`` (None for what is absent) or None for an
        unknown id."""
        i = self.pos.get(image_id) if valid_id(image_id) else None
        if i is None:
            return None
        w, h = self.sizes[2 * i], self.sizes[2 * i + 1]
        extra = self.extras[i] if self.extras is not None else math.nan
        return (self.names[i], None if math.isnan(w) else w, None if math.isnan(h) else h,
                None if math.isnan(extra) else extra, self.problems.get(i))

    def __len__(self) -> int:
        return len(self.names)

    def load(self, stream: JsonStream, prefix: str = "images") -> "ImageIndex":
        n = 0
        for img in stream.head_items(prefix):
            n += 1
            self.add(img)
        if n == 0:
            stream.require_list(prefix)
        return self


class Boxes:
    """Boxes grouped by image position, compact: one float array of all boxes and a linked list
    through them (an int array), no object per image or per box. ``add`` in file order; ``get``
    returns an image's boxes in that order."""

    __slots__ = ("head", "boxes", "next")

    def __init__(self, n_images: int):
        self.head = array("i", [-1]) * n_images
        self.boxes = array("d")
        self.next = array("i")

    def add(self, pos: int, box: list[float]) -> None:
        self.next.append(self.head[pos])
        self.head[pos] = len(self.next) - 1
        self.boxes.extend(box)

    def get(self, pos: int) -> list[list[float]]:
        out, k = [], self.head[pos]
        while k >= 0:
            out.append(self.boxes[4 * k: 4 * k + 4].tolist())
            k = self.next[k]
        out.reverse()
        return out


class ImageFolder:
    """``image_path(root, name)`` for many names under one folder: for a local folder and a plain file
    name (no folder part) the folder is resolved once, not once per image (a realpath per record costs
    more than the rest of a record); anything else goes through :func:`~._base.image_path`."""

    def __init__(self, root: str):
        self.root = root
        self.base = None if is_uri(root) else str(Path(root).resolve())

    def path(self, name: Any) -> str | None:
        if (self.base is not None and isinstance(name, str) and name not in ("", ".", "..")
                and "/" not in name and "\\" not in name and "\x00" not in name):
            return f"{self.base}/{name}"
        return image_path(self.root, name)


def annotation_inputs(src: Any, *files: str) -> list[str]:
    """``input_files()`` of an annotation-file reader: the annotation files and the exclusion list (both
    decide the records). Not the image folder: the records do not depend on the images, and listing and
    stat-ing 118k images (118k requests on an object store) on every plan costs more than the split."""
    out = [f for f in files if f]
    if src.config.exclude_image_ids:
        out.append(src.config.exclude_image_ids)
    return out


DUPLICATE_ID = "duplicate record id"  # the class readers/_edit.py gives repeats too


class Repeats:
    """Finds repeated record ids in a stream read twice, in 8 bytes per id: the first pass
    :meth:`note`\ s a hash of every id, :meth:`freeze` keeps the hashes seen more than once, and the
    second pass asks :meth:`repeat` (True from the second occurrence of an id on; exact strings are
    compared for the few ids whose hash repeats). A repeated id would give two rows one key."""

    def __init__(self):
        self.hashes: array | None = array("q")
        self.dups: set[int] = set()
        self.seen: set[str] = set()

    def note(self, rid: str) -> None:
        self.hashes.append(hash(rid))

    def freeze(self) -> "Repeats":
        import numpy as np

        h = np.sort(np.frombuffer(self.hashes, dtype=np.int64)) if len(self.hashes) else np.zeros(0, np.int64)
        self.dups = set(h[1:][h[1:] == h[:-1]].tolist())
        self.hashes = None
        return self

    def repeat(self, rid: str) -> bool:
        if hash(rid) not in self.dups:
            return False
        if rid in self.seen:
            return True
        self.seen.add(rid)
        return False


def local_or_uri(path: str) -> str:
    """An annotation file as rows name it: absolute local path, or the URI."""
    return path if is_uri(path) else str(Path(path).resolve())


# -- COCO-Stuff labels ---------------------------------------------------------------------------

@lru_cache(maxsize=1)
def cocostuff_labels() -> dict[int, str]:
    out = {}
    for line in LABELS_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            i, name = line.split("\t")
            out[int(i)] = name
    return out


def clean_name(name: str) -> str:
    """COCO-Stuff names as people say them: 'sky-other' -> 'sky', 'wall-brick' -> 'brick wall'."""
    n = name
    for suffix in ("-other", "-stuff", "-merged"):
        if n.endswith(suffix):
            n = n[: -len(suffix)]
    if "-" in n:
        head, tail = n.split("-", 1)
        if head in ("wall", "floor", "ceiling", "window"):
            n = f"{tail} {head}"
        else:
            n = n.replace("-", " ")
    return n


# -- segmentations -------------------------------------------------------------------------------

def segment_payload(seg: Any) -> tuple[dict | None, str | None, str | None]:
    """A COCO ``segmentation`` as the renderers' segment payload: ``({"rle": ...} | {"polygons": ...},
    None, None)``, or ``(None, reason class, problem)`` when it is malformed (polygons: lists of at
    least 6 finite numbers, even count; RLE: ``size`` [h, w] of positive ints and ``counts`` a string
    or a list of non-negative ints)."""
    from ._base import BAD_FIELD, NOT_FINITE

    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            return None, BAD_FIELD, "RLE size is not [height, width]"
        if isinstance(counts, str):
            return {"rle": {"size": size, "counts": counts}}, None, None
        if isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            return {"rle": {"size": size, "counts": counts}}, None, None
        return None, BAD_FIELD, "RLE counts is neither a string nor a list of counts"
    if isinstance(seg, list):
        if not seg:
            return None, BAD_FIELD, "no polygon"
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                return None, BAD_FIELD, "polygon is not a list of at least 3 (x, y) points"
            try:
                total = math.fsum(poly)
            except (TypeError, ValueError):
                total = math.nan
            if not math.isfinite(total):  # slow path only for the bad ones
                for v in poly:
                    if isinstance(v, bool) or not isinstance(v, (int, float)):
                        return None, BAD_FIELD, "polygon holds a value that is not a number"
                    if not math.isfinite(v):
                        return None, NOT_FINITE, "polygon holds NaN or Infinity"
        return {"polygons": seg}, None, None
    return None, BAD_FIELD, "no segmentation" if seg is None else "segmentation is neither polygons nor RLE"
