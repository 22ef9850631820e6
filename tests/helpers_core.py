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


# -- sources with real input files (resume must notice when they change) -----------------------------

from instructdiffusion_data.readers._base import FileGroupSource, RecordSource, SourceConfig as _SC, bad_record, record_row  # noqa: E402


@dataclass
class LinesConfig(_SC):
    path: str = ""  # a text file, one record id per line


class LinesSource(RecordSource):
    """One record per line of a text file (a stand-in for a big annotation file)."""

    name = "lines"
    Config = LinesConfig

    def records(self):
        with open(self.config.path) as fh:
            for line in fh:
                rid = line.strip()
                if rid.startswith("bad"):
                    yield bad_record("count", "edit", rid, "bad line", self.config.path, "line")
                elif rid:
                    yield record_row("count", "edit", rid, {"file": self.config.path})


@dataclass
class FolderConfig(_SC):
    root: str = ""  # a folder of *.txt files, one record per line of each


class FolderSource(FileGroupSource):
    """One item per *.txt file of a folder, one record per line (a stand-in for SA-1B's json files)."""

    name = "folder"
    Config = FolderConfig

    def items(self):
        from pathlib import Path

        for p in sorted(Path(self.config.root).glob("*.txt")):
            yield [str(p)]

    def read_item(self, item):
        from pathlib import Path

        for line in Path(item[0]).read_text().splitlines():
            if line.strip() == "boom":
                raise ValueError("cannot parse this item")
            if line.strip():
                yield record_row("count", "edit", f"{Path(item[0]).stem}-{line.strip()}", {"file": item[0]})


@dataclass
class LossyConfig(StageConfig):
    lose: str = ""  # record id whose row this (broken) stage loses


class LossyStage(Stage):
    """A broken stage that loses a row: the writer must notice and fail that shard."""

    name = "lossy"
    Config = LossyConfig

    def process(self, rows):
        return [r for r in rows if str(r["meta"].get("record_id")) != self.config.lose]
