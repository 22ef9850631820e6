"""Shared helpers of the enhancement readers (GoPro, REDS, SIDD, CLWD): one record per image pair.

A pair record is ``task`` (deblur / denoise / dewatermark), ``meta`` = {"file": degraded image,
"target_file": clean image, optional "mask_file", "record_id", ...}; the stage ``enhance_pair``
loads the pixels. A degraded frame whose clean half is missing (or the reverse) is yielded dropped
with the reason ``missing pair half: ...``, never skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..schema import Row, drop, make_key, new_row

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS


def images_by_stem(folder: Path) -> dict[str, Path]:
    """Image files of a folder keyed by file stem (sorted, deterministic); {} when absent."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if is_image(p)}


def subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def pair_record(dataset: str, task: str, record_id: str, src: Path | None, tgt: Path | None,
                mask: Path | None = None, *, src_label: str = "degraded image", tgt_label: str = "clean image",
                **extra) -> Row:
    meta = {"file": str(src.resolve()) if src else None, "target_file": str(tgt.resolve()) if tgt else None,
            "record_id": record_id, **extra}
    if mask is not None:
        meta["mask_file"] = str(mask.resolve())
    row = new_row(key=make_key(dataset, record_id, "rec"), task=task, dataset=dataset, meta=meta)
    if src is None:
        drop(row, f"missing pair half: no {src_label} (record={record_id}, file={meta['target_file']})")
    elif tgt is None:
        drop(row, f"missing pair half: no {tgt_label} (record={record_id}, file={meta['file']})")
    return row


def match_pairs(dataset: str, task: str, prefix: str, src: dict[str, Path], tgt: dict[str, Path],
                **labels) -> Iterable[Row]:
    """Pair two stem -> path maps; every stem of either side becomes a record."""
    for stem in sorted(set(src) | set(tgt)):
        yield pair_record(dataset, task, f"{prefix}{stem}", src.get(stem), tgt.get(stem), **labels)
