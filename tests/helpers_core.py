"""A minimal source and stage for runner tests, loaded through the 'module:Class' config form."""

import time
from dataclasses import dataclass

import numpy as np

from instructdiffusion_data.imageio import encode_jpeg
from instructdiffusion_data.schema import drop, make_key, new_row
from instructdiffusion_data.stage import Source, SourceConfig, Stage, StageConfig, child


@dataclass
class CountConfig(SourceConfig):
    n: int = 10
    bad_every: int = 0


class CountSource(Source):
    name = "count"
    Config = CountConfig

    def records(self):
        for i in range(self.config.n):
            row = new_row(key=make_key("count", i, "rec"), task="edit", dataset="count", meta={"record_id": i})
            if self.config.bad_every and i % self.config.bad_every == 0:
                drop(row, "bad record", record=i)
            yield row


@dataclass
class PaintConfig(StageConfig):
    variants: int = 2
    fail_on: int = -1
    sleep: float = 0.0  # seconds per row: keeps a run alive long enough to be killed mid-way


class PaintStage(Stage):
    name = "paint"
    Config = PaintConfig

    def max_rows_per_input(self):
        return self.config.variants

    def process(self, rows):
        out = []
        for r in rows:
            rid = r["meta"]["record_id"]
            time.sleep(self.config.sleep)
            if rid == self.config.fail_on:
                raise ValueError(f"boom on {rid}")
            for v in range(self.config.variants):
                rng = self.rng(r["key"], v)
                img = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                out.append(child(r, key=make_key("count", rid, f"v{v}"), src=encode_jpeg(img), tgt=encode_jpeg(255 - img),
                                 instruction=f"invert {rid}"))
        return out
