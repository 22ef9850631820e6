"""OpenImages V6/V7 instance segmentations as object-replacement queries.

Layout (as published; ``<split>`` is ``train``, ``validation`` or ``test``)::

    <root>/<split>-annotations-object-segmentation.csv   MaskPath,ImageID,LabelName,BoxID,BoxXMin,
                                                         BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks
    <root>/<split>-masks-<h>.zip                          16 archives, <h> = first hex digit of ImageID,
                                                         members <ImageID>_<label without '/'>_<BoxID>.png
    <root>/<split>/<ImageID>.jpg
    <root>/class-descriptions-boxable.csv                 /m/0k4j,Car  (V7: oidv7-…, with a header)

An *item* is one mask archive, as the release cuts the data: ``[<split>-masks-<h>.zip,
segmentation csv, class descriptions]`` for ``h`` in ``0-f`` (listed by name, never opened on the
driver; an archive that is not there is still an item, so the rows that need it are not lost). A
worker streams the csv, keeps the rows of its archive's images (an ``ImageID`` that does not start
with a hex digit belongs to archive ``0``, dropped naming the field), and makes one record per row
(``record_id = "<ImageID>:<BoxID>"``), grouped by image so the per-image selection rules apply.

Masks are read straight out of the zips (never extracted); they are stored at their own
resolution and are resized (nearest) to the image; ``meta["region"]["mask"] = {"zip", "member"}``.
Every csv row ends in a row: a missing image, mask member or archive, an unknown label, a missing,
malformed or non-finite value is a dropped record naming the field; rejected regions keep no mask.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..config import check_path
from ..errors import ConfigError, RecordError
from ..replace.regions import RegionSelect, decode_png_mask, mask_bbox, read_zip_member
from ..schema import Row
from ..storage import child_path, exists, is_uri, read_bytes
from . import _regions
from ._base import BAD_FIELD, EXCLUDED, NO_IMAGE_FILE, NOT_FINITE, FileGroupSource, SourceConfig, image_path
from ._edit import DUPLICATE_ID, unique_id

log = logging.getLogger(__name__)

DATASET = "openimages"
CSV_COLUMNS = ("MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax",
               "PredictedIoU")
HEX = "0123456789abcdef"
UNKNOWN_LABEL = "unknown LabelName"
IMAGE_UNREADABLE = "image unreadable"
BAD_CSV_LINE = "unreadable csv line"


@dataclass
class OpenImagesConfig(SourceConfig):
    root: str = "demo_data/openimages"
    split: str = "validation"
    segmentation_csv: str | None = None  # default <root>/<split>-annotations-object-segmentation.csv
    masks_dir: str | None = None  # folder of <split>-masks-<h>.zip; default <root>
    images: str | None = None  # default <root>/<split>
    class_descriptions: str | None = None  # default <root>/class-descriptions-boxable.csv (or oidv7-…)
    select: RegionSelect = field(default_factory=RegionSelect)


def _open_text(path: str):
    if is_uri(path):
        return io.StringIO(read_bytes(path).decode("utf-8", errors="replace"), newline="")
    return open(path, newline="", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed by the caller


def _abs(path: str) -> str:
    return path if is_uri(path) else str(Path(path).resolve())


def load_class_names(path: str) -> dict[str, str]:
    """LabelName -> DisplayName from class-descriptions-boxable.csv (V6: no header; V7: header)."""
    names: dict[str, str] = {}
    with _open_text(str(path)) as f:
        for row in csv.reader(f):
            if len(row) < 2 or row[0] == "LabelName":
                continue
            names[row[0]] = row[1]
    return names


def mask_member_name(image_id: str, label_name: str, box_id: str) -> str:
    return f"{image_id}_{label_name.replace('/', '')}_{box_id}.png"


def _archive(image_id: Any) -> str:
    """The hex digit of an ImageID's archive (``0`` for an ImageID that names none)."""
    h = image_id[:1].lower() if isinstance(image_id, str) else ""
    return h if h and h in HEX else "0"


def _float(row: dict, key: str, optional: bool = False) -> tuple[float | None, tuple | None]:
    v = row.get(key)
    if (v is None or str(v).strip() == "") and optional:
        return None, None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None, (BAD_FIELD, key)
    return (f, None) if f == f and f not in (float("inf"), float("-inf")) else (None, (NOT_FINITE, key))


class OpenImagesSource(FileGroupSource):
    name = "openimages"
    Config = OpenImagesConfig

    def _paths(self) -> tuple[str, str, str, str]:
        c = self.config
        seg = c.segmentation_csv or child_path(c.root, f"{c.split}-annotations-object-segmentation.csv")
        masks = c.masks_dir or c.root
        images = c.images or child_path(c.root, c.split)
        if c.class_descriptions:
            names = c.class_descriptions
        else:
            names = child_path(c.root, "class-descriptions-boxable.csv")
            v7 = child_path(c.root, "oidv7-class-descriptions-boxable.csv")
            if not exists(names, "file") and exists(v7, "file"):
                names = v7
        return seg, masks, images, names

    def validate(self) -> None:
        seg, masks, images, names = self._paths()
        check_path(seg, "source.segmentation_csv", kind="file")
        check_path(masks, "source.masks_dir", kind="dir")
        check_path(images, "source.images", kind="dir")
        check_path(names, "source.class_descriptions", kind="file")
        with _open_text(seg) as f:  # the header line only: a csv without the columns stops here
            header = next(csv.reader(f), [])
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise ConfigError(f"source.segmentation_csv: {seg}: missing column {missing[0]}")

    def items(self) -> Iterator[list[str]]:
        seg, masks, _images, names = self._paths()
        for h in HEX:
            yield [child_path(masks, f"{self.config.split}-masks-{h}.zip"), _abs(seg), _abs(names)]

    # -- one archive (worker) ---------------------------------------------------------------------
    def _rows(self, seg: str, h: str) -> Iterator[tuple[int, dict | None]]:
        """(line, row) of the csv rows of archive ``h``; a line the csv module cannot read is
        ``(line, None)`` (archive ``0`` owns it)."""
        with _open_text(seg) as f:
            reader = csv.DictReader(f)
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error:
                    if h == "0":
                        yield reader.line_num, None
                    continue
                if _archive(row.get("ImageID")) == h:
                    yield reader.line_num, row

    def read_item(self, item: list[str]) -> Iterator[Row]:
        zip_path, seg = item[0], item[1]
        h = zip_path.rsplit("-", 1)[-1][:1]
        _seg, _masks, images, names_file = self._paths()
        names = load_class_names(names_file)
        by_image: dict[str, list[tuple[int, dict]]] = defaultdict(list)
        for line, row in self._rows(seg, h):
            if row is None:
                self.stats["bad_rows"] += 1
                yield _regions.bad_region(DATASET, f"line{line}", BAD_CSV_LINE, seg, None, csv_line=line)
                continue
            by_image[str(row.get("ImageID") or "")].append((line, row))
        for image_id in sorted(by_image):
            yield from self._image(image_id, by_image[image_id], seg, zip_path, images, names)

    def _size(self, image_file: str) -> tuple[int, int] | None:
        src = image_file if not is_uri(image_file) else io.BytesIO(read_bytes(image_file))
        with Image.open(src) as im:
            return im.size

    def _image(self, image_id: str, rows: list[tuple[int, dict]], seg: str, zip_path: str, images: str,
               names: dict[str, str]) -> Iterator[Row]:
        image_file = image_path(images, f"{image_id}.jpg") if image_id and _archive(image_id) == image_id[:1].lower() else None
        fault, width, height = None, 0, 0
        if image_file is None:
            fault = (BAD_FIELD, "ImageID")
        elif self.excluded(image_id):
            self.stats["excluded"] += len(rows)
            fault = (EXCLUDED, "ImageID")
        else:
            try:
                width, height = self._size(image_file)
            except FileNotFoundError:
                fault = (NO_IMAGE_FILE, "ImageID")
            except (OSError, ValueError, Image.DecompressionBombError):
                fault = (IMAGE_UNREADABLE, "ImageID")
        base = {"file": image_file or seg, "width": width, "height": height, "image_id": image_id, "csv": seg}
        if fault is None:
            self.stats["images"] += 1
        entries: list[tuple[str, dict | None, tuple | None, dict]] = []
        seen: set[str] = set()
        for line, row in rows:
            self.stats["regions"] += 1
            box_id = row.get("BoxID")
            ok_box = isinstance(box_id, str) and box_id.strip() and "/" not in box_id
            rid, dup = unique_id(f"{image_id}:{box_id}" if ok_box else f"{image_id}:line{line}", seen, f"line{line}")
            row_fault = fault or ((DUPLICATE_ID, "BoxID") if dup else None)
            if row_fault is None and not ok_box:
                row_fault = (BAD_FIELD, "BoxID")
            reg = None
            if row_fault is None:
                reg, row_fault = self._region(row, image_id, zip_path, width, height, names)
            if row_fault is not None:
                self.stats["bad_rows"] += 1
                cls, fld, *detail = row_fault
                d = dict(detail[0]) if detail else {}
                d["file"] = zip_path if fld == "MaskPath" else seg if fld != "ImageID" or image_file is None else image_file
                row_fault = (cls, fld, d)
            entries.append((rid, reg, row_fault, {"csv_line": line}))
        yield from _regions.region_rows(DATASET, entries, width, height, self.config.select, base)

    def _region(self, row: dict, image_id: str, zip_path: str, width: int, height: int,
                names: dict[str, str]) -> tuple[dict | None, tuple | None]:
        label_id = row.get("LabelName")
        if not isinstance(label_id, str) or not label_id.strip():
            return None, (BAD_FIELD, "LabelName")
        box = []
        for key in ("BoxXMin", "BoxYMin", "BoxXMax", "BoxYMax"):
            v, fault = _float(row, key)
            if fault:
                return None, fault
            box.append(v)
        piou, fault = _float(row, "PredictedIoU", optional=True)
        if fault:
            return None, fault
        if label_id not in names:
            return None, (UNKNOWN_LABEL, "LabelName", {"label": label_id})
        member = row.get("MaskPath") or mask_member_name(image_id, label_id, row["BoxID"])
        try:
            m = decode_png_mask(read_zip_member(zip_path, member), file=zip_path, member=member)
        except RecordError as e:
            return None, (e.reason, "MaskPath", {"member": member})
        if not m.any():
            return None, ("mask PNG is empty", "MaskPath", {"member": member})
        sx, sy = width / m.shape[1], height / m.shape[0]
        bx, by, bw, bh = mask_bbox(m)
        return {
            "id": row["BoxID"], "label_id": label_id, "label": names[label_id],
            "bbox": [int(bx * sx), int(by * sy), max(1, round(bw * sx)), max(1, round(bh * sy))],
            "box_norm": box, "area_frac": float(m.mean()), "predicted_iou": piou, "stability_score": None,
            "mask": {"zip": zip_path, "member": member},
        }, None


SOURCE = OpenImagesSource
