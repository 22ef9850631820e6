"""SIDD denoising (SIDD-Medium sRGB): ``Data/<scene>/<n>_NOISY_SRGB_010.PNG`` with its ground truth
``<n>_GT_SRGB_010.PNG`` (and ``..._011``: the second capture). Upper-case extensions as released; the
match is case-insensitive. The scene folder name ``<instance>_<scene>_<phone>_<ISO>_<shutter>_<temp>_<light>``
is parsed into ``meta``.

One item (and one record) per capture: the noisy image and its ground truth; a capture with one half
only is a dropped record (``missing pair half``). Other files of a scene folder (``*_METADATA_RAW_*.MAT``,
the raw ``.MAT`` images) are not read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from ..config import check_path
from ..errors import ConfigError
from ..schema import Row
from ..storage import Location, exists
from . import _pairs
from ._base import FileGroupSource, SourceConfig

DATASET, TASK = "sidd", "denoise"
_FILE = re.compile(r"^(?P<n>\d+)_(?P<kind>NOISY|GT)_SRGB_(?P<cap>\d+)$", re.IGNORECASE)
_SCENE = re.compile(r"^(?P<instance>\d+)_(?P<scene>\d+)_(?P<phone>[A-Z0-9]+)_(?P<iso>\d+)_(?P<shutter>\d+)_(?P<temp>\d+)_(?P<light>[LNH])$")


@dataclass
class SIDDConfig(SourceConfig):
    root: str = ""  # SIDD_Medium_Srgb (holding Data/) or the Data folder itself


def scene_info(name: str) -> dict:
    sm = _SCENE.match(name)
    if not sm:
        return {}
    return {"scene_instance": sm.group("instance"), "scene_number": sm.group("scene"),
            "smartphone": sm.group("phone"), "iso": int(sm.group("iso")), "shutter": int(sm.group("shutter")),
            "illuminant_k": int(sm.group("temp")), "brightness": sm.group("light")}


class SIDDSource(FileGroupSource):
    name = "sidd"
    Config = SIDDConfig

    def _data(self) -> str:
        nested = _pairs.join(self.config.root, "Data")
        return nested if exists(nested, "dir") else self.config.root

    def validate(self) -> None:
        if not self.config.root:
            raise ConfigError("source.root: required (SIDD_Medium_Srgb folder)")
        check_path(self.config.root, "source.root", kind="dir")

    def items(self) -> Iterator[list[str]]:
        data = self._data()
        for scene in _pairs.subdirs(data):
            d = _pairs.join(data, scene)
            halves: dict[str, dict[str, str]] = {"src": {}, "tgt": {}}
            for name in Location(d).names():
                m = _FILE.match(_pairs.stem(name)) if _pairs.is_image_name(name) else None
                if m:
                    key = f"{m.group('n')}_SRGB_{m.group('cap')}"
                    side = halves["src" if m.group("kind").upper() == "NOISY" else "tgt"]
                    if key in side:
                        self.stats["duplicate_stems"] += 1
                    else:
                        side[key] = _pairs.join(d, name)
            yield from _pairs.pair_items(halves)

    @staticmethod
    def _role(path: str) -> str | None:
        m = _FILE.match(_pairs.stem(path))
        return None if not m else "src" if m.group("kind").upper() == "NOISY" else "tgt"

    def read_item(self, item: list[str]) -> Iterator[Row]:
        halves = _pairs.split_roles(item, self._role)
        scene = _pairs.parts(item[0])[-2]
        m = _FILE.match(_pairs.stem(item[0]))
        rid = f"{scene}/{m.group('n')}_SRGB_{m.group('cap')}"
        yield _pairs.pair_row(DATASET, TASK, rid, halves.get("src"), halves.get("tgt"), src_label="noisy image",
                              tgt_label="ground truth image", scene=scene, **scene_info(scene))


SOURCE = SIDDSource
