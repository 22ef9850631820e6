"""GoPro deblurring (``GOPRO_Large/{train,test}/<sequence>/{blur,blur_gamma,sharp}/NNNNNN.png``).

One record per blurred frame, paired with the sharp frame of the same name. ``blur: blur`` uses the
linearly averaged frames, ``blur_gamma`` the gamma-corrected ones (the paper's GoPro numbers use
``blur``). ``root`` may point at ``GOPRO_Large`` or its parent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from ..errors import ConfigError
from ..schema import Row
from ._base import RecordSource, SourceConfig
from . import _pairs


@dataclass
class GoProConfig(SourceConfig):
    root: str = ""  # GOPRO_Large folder (or its parent)
    splits: list[str] = field(default_factory=lambda: ["train"])
    blur: Literal["blur", "blur_gamma"] = "blur"


class GoProSource(RecordSource):
    name = "gopro"
    Config = GoProConfig

    def _root(self) -> Path:
        r = Path(self.config.root)
        return r / "GOPRO_Large" if (r / "GOPRO_Large").is_dir() else r

    def validate(self) -> None:
        from ..config import check_path

        if not self.config.root:
            raise ConfigError("source.root: required (the GOPRO_Large folder)")
        check_path(self.config.root, "source.root", kind="dir")
        for s in self.config.splits:
            if not (self._root() / s).is_dir():
                raise ConfigError(f"source.splits: no folder {self._root() / s}")

    def records(self) -> Iterator[Row]:
        for split in self.config.splits:
            for seq in _pairs.subdirs(self._root() / split):
                blur = _pairs.images_by_stem(seq / self.config.blur)
                sharp = _pairs.images_by_stem(seq / "sharp")
                for row in _pairs.match_pairs("gopro", "deblur", f"{split}/{seq.name}/", blur, sharp,
                                              src_label="blurred frame", tgt_label="sharp frame"):
                    row["meta"].update(split=split, sequence=seq.name, blur=self.config.blur)
                    yield row


SOURCE = GoProSource
