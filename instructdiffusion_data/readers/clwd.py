"""CLWD (Colored Large-scale Watermark Dataset): ``{train,test}/Watermarked_image/<id>.jpg``,
``Watermark_free_image/<id>.jpg`` and ``Mask/<id>.png`` (the watermark's mask, also ``Alpha``/``W``
folders which this reader does not need). Files are matched by id whatever their extension; the
mask travels with the pair (``use_mask``) and becomes the row's ``mask``.

One item (and one record) per id: its watermarked image, watermark-free image and mask. An id with
no watermarked or no watermark-free image (a mask alone too) is a dropped record (``missing pair
half``); a pair without its mask is kept without one (counted: ``pairs_without_mask``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from ..config import check_path
from ..errors import ConfigError
from ..schema import Row
from ..storage import exists
from . import _pairs
from ._base import FileGroupSource, SourceConfig

DATASET, TASK = "clwd", "dewatermark"
FOLDERS = {"Watermarked_image": "src", "Watermark_free_image": "tgt", "Mask": "mask"}


@dataclass
class CLWDConfig(SourceConfig):
    root: str = ""  # CLWD folder holding train/ and test/
    splits: list[str] = field(default_factory=lambda: ["train"])
    use_mask: bool = True


def _numeric(stem: str) -> tuple:
    return (len(stem), stem)


class CLWDSource(FileGroupSource):
    name = "clwd"
    Config = CLWDConfig

    def validate(self) -> None:
        if not self.config.root:
            raise ConfigError("source.root: required (CLWD folder with train/ and test/)")
        check_path(self.config.root, "source.root", kind="dir")
        for s in self.config.splits:
            folder = _pairs.join(self.config.root, s, "Watermarked_image")
            if not exists(folder, "dir"):
                raise ConfigError(f"source.splits: no folder {folder}")

    def items(self) -> Iterator[list[str]]:
        for split in self.config.splits:
            base = _pairs.join(self.config.root, split)
            halves = {role: _pairs.images_by_stem(_pairs.join(base, folder), self.stats)
                      for folder, role in FOLDERS.items() if role != "mask" or self.config.use_mask}
            yield from _pairs.pair_items(halves, order=_numeric)

    @staticmethod
    def _role(path: str) -> str | None:
        return FOLDERS.get(_pairs.parts(path)[-2])

    def read_item(self, item: list[str]) -> Iterator[Row]:
        halves = _pairs.split_roles(item, self._role)
        split = _pairs.parts(item[0])[-3]
        rid = f"{split}/{_pairs.stem(item[0])}"
        if "src" in halves and "tgt" in halves and "mask" not in halves and self.config.use_mask:
            self.stats["pairs_without_mask"] += 1
        yield _pairs.pair_row(DATASET, TASK, rid, halves.get("src"), halves.get("tgt"), halves.get("mask"),
                              src_label="watermarked image", tgt_label="watermark-free image", split=split)


SOURCE = CLWDSource
