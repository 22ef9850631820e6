"""SA-1B (Segment Anything 1B) regions as object-replacement queries.

Layout (as extracted from the ``sa_000000.tar`` … archives): one folder holding, per image,
``sa_<id>.jpg`` and ``sa_<id>.json``::

    {"image": {"image_id": 1, "width": 1500, "height": 2250, "file_name": "sa_1.jpg"},
     "annotations": [{"id": 7, "segmentation": {"size": [h, w], "counts": "<compressed RLE>"},
                      "area": 1234, "bbox": [x, y, w, h], "predicted_iou": 0.93,
                      "stability_score": 0.96, "point_coords": [[x, y]], "crop_box": [x, y, w, h]}]}

One record per annotation (``record_id = "<image_id>:<ann id>"``); masks stay as RLE in
``meta["region"]["mask"]["rle"]`` and are decoded with pycocotools where pixels are needed. SA-1B
masks carry no class: ``label`` is None (a captioner names them). Regions failing
:class:`~instructdiffusion_data.replace.regions.RegionSelect` are yielded dropped with the rule.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..config import check_path
from ..replace.regions import RegionSelect, region_reasons
from ..schema import Row, drop, make_key, new_row
from ._base import RecordSource, SourceConfig

log = logging.getLogger(__name__)

DATASET = "sa1b"


@dataclass
class Sa1bConfig(SourceConfig):
    root: str = "demo_data/sa1b"  # folder with sa_<id>.json + sa_<id>.jpg (searched recursively)
    pattern: str = "sa_*.json"
    select: RegionSelect = field(default_factory=RegionSelect)


def _natural(p: Path) -> tuple:
    stem = p.stem.split("_")[-1]
    return (str(p.parent), int(stem) if stem.isdigit() else 0, p.name)


class Sa1bSource(RecordSource):
    name = "sa1b"
    Config = Sa1bConfig

    def validate(self) -> None:
        check_path(self.config.root, "source.root", kind="dir")

    def records(self) -> Iterator[Row]:
        files = sorted(Path(self.config.root).rglob(self.config.pattern), key=_natural)
        self.stats = {"images": 0, "regions": 0, "bad_files": 0}
        for jf in files:
            yield from self._image(jf.resolve())

    def _bad(self, file: Path, rid: str, reason: str, **meta) -> Row:
        self.stats["bad_files"] += 1
        row = new_row(key=make_key(DATASET, rid, "rec"), task="edit_replace", dataset=DATASET,
                      meta={"file": str(file), "record_id": rid, **meta})
        return drop(row, f"{reason} (file={file})")

    def _image(self, jf: Path) -> Iterator[Row]:
        try:
            doc = json.loads(jf.read_text())
            img = doc["image"]
            image_id = str(img["image_id"])
            width, height = int(img["width"]), int(img["height"])
            anns = doc["annotations"]
            if not isinstance(anns, list):
                raise TypeError("annotations is not a list")
        except (OSError, ValueError, KeyError, TypeError) as e:
            yield self._bad(jf, jf.stem, f"bad SA-1B json: {type(e).__name__}: {e}")
            return
        image_file = jf.parent / img.get("file_name", f"{jf.stem}.jpg")
        if not image_file.is_file():
            yield self._bad(image_file, image_id, "image file missing")
            return
        self.stats["images"] += 1
        regions, bad = [], []
        for i, a in enumerate(anns):
            try:
                seg = a["segmentation"]
                if list(seg["size"]) != [height, width]:
                    raise ValueError(f"segmentation size {seg['size']} != image {[height, width]}")
                x, y, w, h = (float(v) for v in a["bbox"])
                regions.append({
                    "id": str(a["id"]), "label": None, "label_id": None,
                    "bbox": [round(x), round(y), round(w), round(h)],
                    "area_frac": float(a["area"]) / float(width * height),
                    "predicted_iou": float(a["predicted_iou"]) if a.get("predicted_iou") is not None else None,
                    "stability_score": float(a["stability_score"]) if a.get("stability_score") is not None else None,
                    "mask": {"rle": {"size": [int(v) for v in seg["size"]], "counts": seg["counts"]}},
                })
            except (KeyError, TypeError, ValueError) as e:
                bad.append((i, a, f"bad SA-1B annotation: {type(e).__name__}: {e}"))
        reasons = region_reasons(regions, width, height, self.config.select)
        base = {"file": str(image_file), "width": width, "height": height, "image_id": image_id,
                "annotation_file": str(jf)}
        for reg, why in zip(regions, reasons):
            self.stats["regions"] += 1
            rid = f"{image_id}:{reg['id']}"
            row = new_row(key=make_key(DATASET, rid, "rec"), task="edit_replace", dataset=DATASET,
                          meta={**base, "record_id": rid, "region": reg})
            yield drop(row, f"{why} (record={rid})") if why else row
        for i, a, why in bad:
            aid = a.get("id", f"#{i}") if isinstance(a, dict) else f"#{i}"
            rid = f"{image_id}:{aid}"
            row = new_row(key=make_key(DATASET, rid, "rec"), task="edit_replace", dataset=DATASET,
                          meta={**base, "record_id": rid})
            yield drop(row, f"{why} (file={jf}, record={rid})")


SOURCE = Sa1bSource
