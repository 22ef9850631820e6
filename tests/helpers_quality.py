"""Synthetic removal pairs for the quality-filter tests, loaded through the 'module:Class' config form.

Each record is a scene of coloured discs; the stage removes one disc (OpenCV inpainting inside a
mask) and blurs the target by ``blur_step * record`` px, so the target's classical score falls
record by record: a threshold on ``aesthetic_tgt`` selects a known set of rows.
"""

from dataclasses import dataclass

import cv2
import numpy as np

from instructdiffusion_data.imageio import encode_jpeg, encode_png
from instructdiffusion_data.schema import make_key, new_row
from instructdiffusion_data.stage import Source, SourceConfig, Stage, StageConfig, child


def scene(seed: int, h: int = 160, w: int = 200) -> np.ndarray:
    r = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = r.integers(60, 200, 3)
    for _ in range(18):
        c = tuple(int(x) for x in r.integers(0, 255, 3))
        cv2.circle(img, (int(r.integers(0, w)), int(r.integers(0, h))), int(r.integers(4, 30)), c, -1)
    return img


def removal_pair(seed: int, blur: float = 0.0, touch_background: bool = False):
    src = scene(seed)
    mask = np.zeros(src.shape[:2], np.uint8)
    cv2.circle(mask, (100, 80), 28, 255, -1)
    cv2.circle(src, (100, 80), 22, (250, 30, 30), -1)
    tgt = cv2.inpaint(src, mask, 3, cv2.INPAINT_TELEA)
    if blur > 0:
        tgt = cv2.GaussianBlur(tgt, (0, 0), blur)
    if touch_background:
        tgt[:, :40] = 255 - tgt[:, :40]
    return src, tgt, mask


@dataclass
class PairSourceConfig(SourceConfig):
    n: int = 8


class PairSource(Source):
    name = "pairs"
    Config = PairSourceConfig

    def records(self):
        for i in range(self.config.n):
            yield new_row(key=make_key("pairs", i, "rec"), task="edit_remove", dataset="pairs",
                          meta={"record_id": str(i)})


@dataclass
class RemoveConfig(StageConfig):
    blur_step: float = 0.6
    drop_record: int = -1  # this record is dropped by this stage (an "earlier" failure)


class RemoveStage(Stage):
    name = "remove_disc"
    Config = RemoveConfig

    def process(self, rows):
        out = []
        for r in rows:
            i = int(r["meta"]["record_id"])
            src, tgt, mask = removal_pair(i, blur=self.config.blur_step * i)
            row = child(r, key=make_key("pairs", i, "remove"), src=encode_jpeg(src), tgt=encode_jpeg(tgt),
                        mask=encode_png(mask), instruction="remove the red disc")
            if i == self.config.drop_record:
                row["keep"], row["drop_reason"] = False, "remove_disc: earlier failure"
            out.append(row)
        return out
