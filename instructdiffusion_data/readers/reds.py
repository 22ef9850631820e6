"""REDS deblurring: blurred and sharp frame folders, ``<split>/<split>_blur/<seq>/<frame>.png`` beside
``<split>/<split>_sharp/<seq>/<frame>.png`` (the zips unpack as ``train/train_blur/000/00000000.png``).
``blur_folder``/``sharp_folder`` name other variants (``train_blur_jpeg`` ...); ``{split}`` is replaced.
Both ``<root>/<split>/<split>_blur`` and ``<root>/<split>_blur`` are found.

One item (and one record) per frame: the blurred and the sharp frame of the same name; a frame with
one half only is a dropped record (``missing pair half``). ``frame_step`` keeps every k-th frame of a
sequence (the others are not items: the config asks for them to be left out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from ..config import check_path, rng
from ..errors import ConfigError
from ..schema import Row
from ..storage import exists
from . import _pairs
from ._base import FileGroupSource, SourceConfig

DATASET, TASK = "reds", "deblur"


@dataclass
class REDSConfig(SourceConfig):
    root: str = ""
    splits: list[str] = field(default_factory=lambda: ["train"])
    blur_folder: str = "{split}_blur"
    sharp_folder: str = "{split}_sharp"
    frame_step: int = field(default=1, metadata=rng(1))  # every k-th frame (consecutive REDS frames are near duplicates)


class REDSSource(FileGroupSource):
    name = "reds"
    Config = REDSConfig

    def _folder(self, split: str, pattern: str) -> str:
        name = pattern.format(split=split)
        nested = _pairs.join(self.config.root, split, name)
        return nested if exists(nested, "dir") else _pairs.join(self.config.root, name)

    def validate(self) -> None:
        c = self.config
        if not c.root:
            raise ConfigError("source.root: required (folder holding train/train_blur ...)")
        check_path(c.root, "source.root", kind="dir")
        if c.frame_step < 1:
            raise ConfigError(f"source.frame_step: must be >= 1, got {c.frame_step}")
        for s in c.splits:
            b, sh = c.blur_folder.format(split=s), c.sharp_folder.format(split=s)
            if b == sh:
                raise ConfigError(f"source.blur_folder: the same folder as source.sharp_folder ({b})")
            if not exists(self._folder(s, c.blur_folder), "dir") and not exists(self._folder(s, c.sharp_folder), "dir"):
                raise ConfigError(f"source.splits: neither {self._folder(s, c.blur_folder)} nor the sharp folder exists")

    def items(self) -> Iterator[list[str]]:
        for split in self.config.splits:
            bdir, sdir = self._folder(split, self.config.blur_folder), self._folder(split, self.config.sharp_folder)
            for seq in sorted(set(_pairs.subdirs(bdir)) | set(_pairs.subdirs(sdir))):
                blur = _pairs.images_by_stem(_pairs.join(bdir, seq), self.stats)
                sharp = _pairs.images_by_stem(_pairs.join(sdir, seq), self.stats)
                keep = set(sorted(set(blur) | set(sharp))[:: self.config.frame_step])
                yield from _pairs.pair_items({"src": {k: v for k, v in blur.items() if k in keep},
                                              "tgt": {k: v for k, v in sharp.items() if k in keep}})

    def _where(self, path: str) -> tuple[str | None, str | None]:
        """(split, role) of a frame from its folder names."""
        folder = _pairs.parts(path)[-3]
        for split in self.config.splits:
            if folder == self.config.blur_folder.format(split=split):
                return split, "src"
            if folder == self.config.sharp_folder.format(split=split):
                return split, "tgt"
        return None, None

    def read_item(self, item: list[str]) -> Iterator[Row]:
        halves = _pairs.split_roles(item, lambda p: self._where(p)[1])
        split = self._where(item[0])[0]
        seq = _pairs.parts(item[0])[-2]
        rid = f"{split}/{seq}/{_pairs.stem(item[0])}"
        yield _pairs.pair_row(DATASET, TASK, rid, halves.get("src"), halves.get("tgt"), src_label="blurred frame",
                              tgt_label="sharp frame", split=split, sequence=seq)


SOURCE = REDSSource
