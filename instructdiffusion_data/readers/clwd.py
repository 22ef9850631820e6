"""CLWD (Colored Large-scale Watermark Dataset): ``{train,test}/Watermarked_image/<id>.jpg``,
``Watermark_free_image/<id>.jpg`` and ``Mask/<id>.png`` (the watermark's mask, also ``Alpha``/``W``
folders which this reader does not need). Files are matched by id whatever their extension; the
mask travels with the pair (``use_mask``) and becomes the row's ``mask``.
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
class CLWDConfig(SourceConfig):
    root: str = ""  # CLWD folder holding train/ and test/
    splits: list[str] = field(default_factory=lambda: ["train"])
    use_mask: bool = True


class CLWDSource(RecordSource):
    name = "clwd"
    Config = CLWDConfig

    def validate(self) -> None:
        from ..config import check_path

        if not self.config.root:
            raise ConfigError("source.root: required (CLWD folder with train/ and test/)")
        check_path(self.config.root, "source.root", kind="dir")
        for s in self.config.splits:
            if not (Path(self.config.root) / s / "Watermarked_image").is_dir():
                raise ConfigError(f"source.splits: no folder {Path(self.config.root) / s / 'Watermarked_image'}")

    def records(self) -> Iterator[Row]:
        for split in self.config.splits:
            base = Path(self.config.root) / split
            marked = _pairs.images_by_stem(base / "Watermarked_image")
            free = _pairs.images_by_stem(base / "Watermark_free_image")
            masks = _pairs.images_by_stem(base / "Mask") if self.config.use_mask else {}
            for stem in sorted(set(marked) | set(free), key=lambda s: (len(s), s)):
                row = _pairs.pair_record("clwd", "dewatermark", f"{split}/{stem}", marked.get(stem), free.get(stem),
                                         masks.get(stem), src_label="watermarked image", tgt_label="watermark-free image",
                                         split=split)
                yield row


SOURCE = CLWDSource
