"""SIDD denoising (SIDD-Medium sRGB): ``Data/<scene>/<n>_NOISY_SRGB_010.PNG`` with its ground truth
``<n>_GT_SRGB_010.PNG`` (and ``..._011``: the second capture). Upper-case extensions as released; the
match is case-insensitive. The scene folder name ``<instance>_<scene>_<phone>_<ISO>_<shutter>_<temp>_<light>``
is parsed into ``meta``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError
from ..schema import Row
from ._base import RecordSource, SourceConfig
from . import _pairs

_FILE = re.compile(r"^(?P<n>\d+)_(?P<kind>NOISY|GT)_SRGB_(?P<cap>\d+)$", re.IGNORECASE)
_SCENE = re.compile(r"^(?P<instance>\d+)_(?P<scene>\d+)_(?P<phone>[A-Z0-9]+)_(?P<iso>\d+)_(?P<shutter>\d+)_(?P<temp>\d+)_(?P<light>[LNH])$")


@dataclass
class SIDDConfig(SourceConfig):
    root: str = ""  # SIDD_Medium_Srgb (holding Data/) or the Data folder itself


class SIDDSource(RecordSource):
    name = "sidd"
    Config = SIDDConfig

    def _data(self) -> Path:
        r = Path(self.config.root)
        return r / "Data" if (r / "Data").is_dir() else r

    def validate(self) -> None:
        from ..config import check_path

        if not self.config.root:
            raise ConfigError("source.root: required (SIDD_Medium_Srgb folder)")
        check_path(self.config.root, "source.root", kind="dir")

    def records(self) -> Iterator[Row]:
        for scene in _pairs.subdirs(self._data()):
            noisy, gt = {}, {}
            for p in sorted(scene.iterdir()):
                m = _FILE.match(p.stem) if _pairs.is_image(p) else None
                if not m:
                    continue
                stem = f"{m.group('n')}_SRGB_{m.group('cap')}"
                (noisy if m.group("kind").upper() == "NOISY" else gt)[stem] = p
            info = {}
            sm = _SCENE.match(scene.name)
            if sm:
                info = {"scene_instance": sm.group("instance"), "scene_number": sm.group("scene"),
                        "smartphone": sm.group("phone"), "iso": int(sm.group("iso")),
                        "shutter": int(sm.group("shutter")), "illuminant_k": int(sm.group("temp")),
                        "brightness": sm.group("light")}
            for row in _pairs.match_pairs("sidd", "denoise", f"{scene.name}/", noisy, gt,
                                          src_label="noisy image", tgt_label="ground truth image"):
                row["meta"].update(scene=scene.name, **info)
                yield row


SOURCE = SIDDSource
