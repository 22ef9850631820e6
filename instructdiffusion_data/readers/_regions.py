"""What the region readers of the object-replacement pipeline (SA-1B, OpenImages) share: one record
per region (``task: edit_replace``), the region selection rules applied per image, and rejected
regions kept as dropped rows *without* their mask payload (RLE, zip member): a record dropped before
it has pixels keeps its ids, file and reason, nothing heavy.
"""

from __future__ import annotations

from typing import Iterator

from ..replace.regions import RegionSelect, region_reasons
from ..schema import Row, drop
from ._base import bad_record, record_row

TASK = "edit_replace"


def light(region: dict) -> dict:
    """A region without its mask (what a dropped row keeps)."""
    return {k: v for k, v in region.items() if k != "mask"}


def region_rows(dataset: str, entries: list[tuple[str, dict | None, tuple | None, dict]], width: int, height: int,
                select: RegionSelect, base: dict) -> Iterator[Row]:
    """The rows of one image's regions, in order. ``entries`` are ``(record id, region, fault, extra
    meta)``: a region with a fault (``(class, field[, {detail}])``) is dropped naming the field; the
    valid ones go through the selection rules together (the per-image cap needs them all): kept ones
    carry the region, rejected ones the rule as their class and the region without its mask."""
    valid = [e for e in entries if e[2] is None]
    reasons = dict(zip((e[0] for e in valid), region_reasons([e[1] for e in valid], width, height, select)))
    for rid, reg, fault, extra in entries:
        if fault is not None:
            cls, field, *detail = fault
            d = detail[0] if detail else {}
            yield bad_record(dataset, TASK, rid, cls, d.pop("file", base.get("file")), field,
                             **{k: v for k, v in base.items() if k != "file"}, **extra, **d)
        elif reasons[rid] is None:
            yield record_row(dataset, TASK, rid, {**base, **extra, "region": reg})
        else:
            row = record_row(dataset, TASK, rid, {**base, **extra, "region": light(reg)})
            yield drop(row, reasons[rid], file=base.get("file"), record=rid)


def bad_region(dataset: str, rid: str, reason: str, file: str | None, field: str | None = None, **meta) -> Row:
    return bad_record(dataset, TASK, rid, reason, file, field, **meta)
