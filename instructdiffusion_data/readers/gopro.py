"""GoPro deblurring (``GOPRO_Large/{train,test}/<sequence>/{blur,blur_gamma,sharp}/NNNNNN.png``).

One item (and one record) per frame: the blurred frame and the sharp frame of the same name. ``blur:
blur`` uses the linearly averaged frames, ``blur_gamma`` the gamma-corrected ones (the paper's GoPro
numbers use ``blur``). ``root`` may point at ``GOPRO_Large`` or its parent (path or URI). A frame
with one half only is a dropped record (``missing pair half``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal

from ..config import check_path
from ..errors import ConfigError
from ..schema import Row
from ..storage import exists
from . import _pairs
from ._base import FileGroupSource, SourceConfig

DATASET, TASK = "gopro", "deblur"


@dataclass
class GoProConfig(SourceConfig):
    root: str = ""  # GOPRO_Large folder (or its parent)
    splits: list[str] = field(default_factory=lambda: ["train"])
    blur: Literal["blur", "blur_gamma"] = "blur"


class GoProSource(FileGroupSource):
    name = "gopro"
    Config = GoProConfig

    def _root(self) -> str:
        nested = _pairs.join(self.config.root, "GOPRO_Large")
        return nested if exists(nested, "dir") else self.config.root

    def validate(self) -> None:
        if not self.config.root:
            raise ConfigError("source.root: required (the GOPRO_Large folder)")
        check_path(self.config.root, "source.root", kind="dir")
        for s in self.config.splits:
            if not exists(_pairs.join(self._root(), s), "dir"):
                raise ConfigError(f"source.splits: no folder {_pairs.join(self._root(), s)}")

    def items(self) -> Iterator[list[str]]:
        root = self._root()
        for split in self.config.splits:
            for seq in _pairs.subdirs(_pairs.join(root, split)):
                d = _pairs.join(root, split, seq)
                yield from _pairs.pair_items({"src": _pairs.images_by_stem(_pairs.join(d, self.config.blur), self.stats),
                                              "tgt": _pairs.images_by_stem(_pairs.join(d, "sharp"), self.stats)})

    def _role(self, path: str) -> str | None:
        kind = _pairs.parts(path)[-2]
        return "tgt" if kind == "sharp" else "src" if kind == self.config.blur else None

    def read_item(self, item: list[str]) -> Iterator[Row]:
        halves = _pairs.split_roles(item, self._role)
        *_, split, seq, _kind, _name = _pairs.parts(item[0])
        rid = f"{split}/{seq}/{_pairs.stem(item[0])}"
        yield _pairs.pair_row(DATASET, TASK, rid, halves.get("src"), halves.get("tgt"), src_label="blurred frame",
                              tgt_label="sharp frame", split=split, sequence=seq, blur=self.config.blur)


SOURCE = GoProSource
