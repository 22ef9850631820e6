"""OpenImages V6/V7 instance segmentations as object-replacement queries.

Layout (as published; ``<split>`` is ``train``, ``validation`` or ``test``)::

    <root>/<split>-annotations-object-segmentation.csv   MaskPath,ImageID,LabelName,BoxID,BoxXMin,
                                                         BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks
    <root>/<split>-masks-<h>.zip                          16 archives, <h> = first hex digit of ImageID,
                                                         members <ImageID>_<label without '/'>_<BoxID>.png
    <root>/<split>/<ImageID>.jpg
    <root>/class-descriptions-boxable.csv                 /m/0k4j,Car  (V7: oidv7-…, with a header)

Masks are read straight out of the zips (never extracted); they are stored at their own
resolution and are resized (nearest) to the image. One record per CSV row
(``record_id = "<ImageID>:<BoxID>"``); ``meta["region"]["mask"] = {"zip", "member"}``.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..config import check_path
from ..errors import ConfigError, RecordError
from ..replace.regions import (
    RegionSelect,
    decode_png_mask,
    mask_bbox,
    read_zip_member,
    region_reasons,
)
from ..schema import Row, drop, make_key, new_row
from ._base import RecordSource, SourceConfig

log = logging.getLogger(__name__)

DATASET = "openimages"
CSV_COLUMNS = ("MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax",
               "PredictedIoU")


@dataclass
class OpenImagesConfig(SourceConfig):
    root: str = "demo_data/openimages"
    split: str = "validation"
    segmentation_csv: str | None = None  # default <root>/<split>-annotations-object-segmentation.csv
    masks_dir: str | None = None  # folder of <split>-masks-<h>.zip; default <root>
    images: str | None = None  # default <root>/<split>
    class_descriptions: str | None = None  # default <root>/class-descriptions-boxable.csv (or oidv7-…)
    select: RegionSelect = field(default_factory=RegionSelect)


def load_class_names(path: str | Path) -> dict[str, str]:
    """LabelName -> DisplayName from class-descriptions-boxable.csv (V6: no header; V7: header)."""
    names: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if len(row) < 2 or row[0] == "LabelName":
                continue
            names[row[0]] = row[1]
    return names


def mask_member_name(image_id: str, label_name: str, box_id: str) -> str:
    return f"{image_id}_{label_name.replace('/', '')}_{box_id}.png"


class OpenImagesSource(RecordSource):
    name = "openimages"
    Config = OpenImagesConfig

    def _paths(self) -> tuple[Path, Path, Path, Path]:
        c = self.config
        root = Path(c.root)
        seg = Path(c.segmentation_csv) if c.segmentation_csv else root / f"{c.split}-annotations-object-segmentation.csv"
        masks = Path(c.masks_dir) if c.masks_dir else root
        images = Path(c.images) if c.images else root / c.split
        if c.class_descriptions:
            names = Path(c.class_descriptions)
        else:
            names = root / "class-descriptions-boxable.csv"
            if not names.is_file() and (root / "oidv7-class-descriptions-boxable.csv").is_file():
                names = root / "oidv7-class-descriptions-boxable.csv"
        return seg, masks, images, names

    def validate(self) -> None:
        seg, masks, images, names = self._paths()
        check_path(str(seg), "source.segmentation_csv", kind="file")
        check_path(str(masks), "source.masks_dir", kind="dir")
        check_path(str(images), "source.images", kind="dir")
        check_path(str(names), "source.class_descriptions", kind="file")

    def records(self) -> Iterator[Row]:
        seg, masks, images, names_file = self._paths()
        names = load_class_names(names_file)
        self.stats = {"images": 0, "regions": 0, "bad_rows": 0}
        by_image: dict[str, list[tuple[int, dict]]] = defaultdict(list)
        with open(seg, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(f"source.segmentation_csv: {seg}: missing column {missing[0]}")
            for line, row in enumerate(reader, start=2):
                by_image[row["ImageID"]].append((line, row))
        for image_id in sorted(by_image):
            yield from self._image(image_id, by_image[image_id], seg, masks.resolve(), images.resolve(), names)

    def _image(self, image_id: str, rows: list[tuple[int, dict]], seg: Path, masks: Path, images: Path,
               names: dict[str, str]) -> Iterator[Row]:
        image_file = images / f"{image_id}.jpg"
        zip_path = str(masks / f"{self.config.split}-masks-{image_id[:1].lower()}.zip")
        try:
            with Image.open(image_file) as im:
                width, height = im.size
        except (OSError, ValueError) as e:
            for line, row in rows:
                rid = f"{image_id}:{row.get('BoxID')}"
                self.stats["bad_rows"] += 1
                r = new_row(key=make_key(DATASET, rid, "rec"), task="edit_replace", dataset=DATASET,
                            meta={"file": str(image_file), "record_id": rid, "csv": str(seg), "csv_line": line})
                reason = "image file missing" if isinstance(e, FileNotFoundError) else "image unreadable"
                yield drop(r, f"{reason} (file={image_file}, record={rid})")
            return
        self.stats["images"] += 1
        base = {"file": str(image_file), "width": width, "height": height, "image_id": image_id, "csv": str(seg)}
        regions, lines, bad = [], [], []
        for line, row in rows:
            rid = f"{image_id}:{row['BoxID']}"
            try:
                member = row["MaskPath"] or mask_member_name(image_id, row["LabelName"], row["BoxID"])
                m = decode_png_mask(read_zip_member(zip_path, member), file=zip_path, member=member)
                if not m.any():
                    raise RecordError("mask PNG is empty", file=zip_path, field=member)
                sx, sy = width / m.shape[1], height / m.shape[0]
                bx, by, bw, bh = mask_bbox(m)
                piou = row.get("PredictedIoU")
                regions.append({
                    "id": row["BoxID"], "label_id": row["LabelName"],
                    "label": names.get(row["LabelName"]),
                    "bbox": [int(bx * sx), int(by * sy), max(1, round(bw * sx)), max(1, round(bh * sy))],
                    "box_norm": [float(row["BoxXMin"]), float(row["BoxYMin"]), float(row["BoxXMax"]),
                                 float(row["BoxYMax"])],
                    "area_frac": float(m.mean()),
                    "predicted_iou": float(piou) if piou not in (None, "") else None,
                    "stability_score": None,
                    "mask": {"zip": zip_path, "member": member},
                })
                lines.append(line)
            except RecordError as e:
                bad.append((line, rid, f"{e.reason} (file={e.file}, member={e.field}, line={line})"))
            except (KeyError, ValueError) as e:
                bad.append((line, rid, f"bad value {type(e).__name__}: {e} (file={seg}, line={line})"))
        reasons = region_reasons(regions, width, height, self.config.select)
        for reg, line, why in zip(regions, lines, reasons):
            self.stats["regions"] += 1
            rid = f"{image_id}:{reg['id']}"
            if reg["label"] is None and why is None:
                why = f"unknown LabelName {reg['label_id']}"
            r = new_row(key=make_key(DATASET, rid, "rec"), task="edit_replace", dataset=DATASET,
                        meta={**base, "record_id": rid, "csv_line": line, "region": reg})
            yield drop(r, f"{why} (record={rid})") if why else r
        for line, rid, why in bad:
            self.stats["bad_rows"] += 1
            r = new_row(key=make_key(DATASET, rid, "rec"), task="edit_replace", dataset=DATASET,
                        meta={**base, "record_id": rid, "csv_line": line})
            yield drop(r, f"bad segmentation row: {why}")


SOURCE = OpenImagesSource
