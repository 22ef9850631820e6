"""REDS deblurring: blurred and sharp frame folders, ``<split>/<split>_blur/<seq>/<frame>.png`` beside
``<split>/<split>_sharp/<seq>/<frame>.png`` (the zips unpack as ``train/train_blur/000/00000000.png``).
``blur_folder``/``sharp_folder`` name other variants (``train_blur_jpeg`` ...); ``{split}`` is replaced.
Both ``<root>/<split>/<split>_blur`` and ``<root>/<split>_blur`` are found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError
from ..schema import Row
from ._base import RecordSource, SourceConfig
from . import _pairs


@dataclass
class REDSConfig(SourceConfig):
    root: str = ""
    splits: list[str] = field(default_factory=lambda: ["train"])
    blur_folder: str = "{split}_blur"
    sharp_folder: str = "{split}_sharp"
    frame_step: int = 1  # take every k-th frame (consecutive REDS frames are near duplicates)


class REDSSource(RecordSource):
    name = "reds"
    Config = REDSConfig

    def _folder(self, split: str, pattern: str) -> Path:
        root = Path(self.config.root)
        name = pattern.format(split=split)
        nested = root / split / name
        return nested if nested.is_dir() else root / name

    def validate(self) -> None:
        from ..config import check_path

        if not self.config.root:
            raise ConfigError("source.root: required (folder holding train/train_blur ...)")
        check_path(self.config.root, "source.root", kind="dir")
        if self.config.frame_step < 1:
            raise ConfigError(f"source.frame_step: must be >= 1, got {self.config.frame_step}")
        for s in self.config.splits:
            if not self._folder(s, self.config.blur_folder).is_dir() and not self._folder(s, self.config.sharp_folder).is_dir():
                raise ConfigError(f"source.splits: neither {self._folder(s, self.config.blur_folder)} nor the sharp folder exists")

    def records(self) -> Iterator[Row]:
        for split in self.config.splits:
            bdir, sdir = self._folder(split, self.config.blur_folder), self._folder(split, self.config.sharp_folder)
            seqs = sorted({p.name for p in _pairs.subdirs(bdir)} | {p.name for p in _pairs.subdirs(sdir)})
            for seq in seqs:
                blur, sharp = _pairs.images_by_stem(bdir / seq), _pairs.images_by_stem(sdir / seq)
                stems = sorted(set(blur) | set(sharp))[:: self.config.frame_step]
                keep = set(stems)
                for row in _pairs.match_pairs("reds", "deblur", f"{split}/{seq}/",
                                              {k: v for k, v in blur.items() if k in keep},
                                              {k: v for k, v in sharp.items() if k in keep},
                                              src_label="blurred frame", tgt_label="sharp frame"):
                    row["meta"].update(split=split, sequence=seq)
                    yield row


SOURCE = REDSSource
