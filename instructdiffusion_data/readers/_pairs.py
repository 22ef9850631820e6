"""What the enhancement readers (GoPro, REDS, SIDD, CLWD) share: an *item* is the files of one image
pair, listed by name (degraded + clean, and the CLWD mask), never opened on the driver.

``items()`` lists the folders (paths or URIs) and joins the halves by file stem; an item holds only
the files that exist, so a half that is missing is simply absent from it. ``read_item()`` tells the
halves apart by where they live (a folder name, a file-name pattern: each reader's ``role``) and
makes one record: ``meta`` = {"file": degraded image, "target_file": clean image, optional
"mask_file", "record_id", ...}; the stage ``enhance_pair`` loads the pixels. A pair with a missing
half is a dropped record (:data:`MISSING_HALF`, naming the half), never skipped.
"""

from __future__ import annotations

import posixpath
from typing import Callable, Iterable, Iterator

from ..schema import Row, drop
from ..storage import Location, child_path
from ._base import record_row

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MISSING_HALF = "missing pair half"
ROLES = ("src", "tgt", "mask")


def is_image_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_EXTS


def images_by_stem(folder: str, stats=None) -> dict[str, str]:
    """Image files directly in ``folder`` (path or URI) keyed by file stem, as paths a record carries;
    {} when the folder does not exist. Two files with one stem (``1.jpg``, ``1.png``): the first in
    name order is used and ``stats["duplicate_stems"]`` counts the other."""
    out: dict[str, str] = {}
    for name in Location(str(folder)).names():
        if is_image_name(name):
            stem = posixpath.splitext(name)[0]
            if stem in out:
                if stats is not None:
                    stats["duplicate_stems"] += 1
                continue
            out[stem] = child_path(str(folder), name)
    return out


def subdirs(folder: str) -> list[str]:
    """Names of the sub-folders of ``folder`` (sorted; [] when it does not exist)."""
    return Location(str(folder)).dirs()


def join(folder: str, *names: str) -> str:
    """``folder/name/...`` for a path or a URI (no resolution: listing only)."""
    out = str(folder)
    for n in names:
        out = child_path(out, n)
    return out


def parts(path: str) -> list[str]:
    """The ``/``-separated parts of a path or URI (query options dropped)."""
    return str(path).split("?", 1)[0].rstrip("/").split("/")


def stem(path: str) -> str:
    return posixpath.splitext(parts(path)[-1])[0]


def pair_items(halves: dict[str, dict[str, str]], order: Callable[[str], object] | None = None
               ) -> Iterator[list[str]]:
    """Items from ``{role: {stem: path}}``: one per stem of any role, its existing files in role order."""
    stems = set().union(*(h.keys() for h in halves.values())) if halves else set()
    for s in sorted(stems, key=order) if order else sorted(stems):
        yield [halves[r][s] for r in ROLES if r in halves and s in halves[r]]


def split_roles(item: Iterable[str], role: Callable[[str], str | None]) -> dict[str, str]:
    """``{role: path}`` of an item's files (``role(path)`` says which half a file is)."""
    out: dict[str, str] = {}
    for p in item:
        r = role(p)
        if r in ROLES and r not in out:
            out[r] = p
    return out


def pair_row(dataset: str, task: str, record_id: str, src: str | None, tgt: str | None, mask: str | None = None,
             *, src_label: str = "degraded image", tgt_label: str = "clean image", **extra) -> Row:
    """One pair record; a missing half drops it (:data:`MISSING_HALF`, ``missing`` names the half)."""
    src, tgt, mask = (str(p) if p is not None else None for p in (src, tgt, mask))
    if src is not None and tgt is not None:
        meta = {"file": src, "target_file": tgt, **extra}
        if mask is not None:
            meta["mask_file"] = mask
        return record_row(dataset, task, record_id, meta)
    missing = " and ".join(lab for lab, p in ((src_label, src), (tgt_label, tgt)) if p is None)
    field = "file" if src is None else "target_file"
    there = src or tgt or mask
    row = record_row(dataset, task, record_id, {"file": there, "target_file": tgt, "missing": missing, **extra})
    return drop(row, MISSING_HALF, file=there, record=record_id, field=field, missing=missing)
