"""The editing benchmark read back from a shard output (paper section 4.4).

A benchmark is a regular output written by ``idd benchmark build`` (:mod:`..benchmark.build`, whose
manifest has a ``benchmark`` section of format ``instructdiffusion-data/benchmark/1``): one kept row per
sample with the source image (``src``), the instruction, and in ``meta`` the caption of the source
(``source_caption``: BLIP-2, or the given caption in the weight-free profile), the caption the edited image
should have (``target_caption``), the ``category`` (``remove``, ``add`` or ``replace``) and the half it
belongs to (``bench_split``: ``align``, where alignment candidates come from, or ``eval``, where metrics are
reported). Rows are read at the output's current generation, from the train sidecars and the tars by their
member offsets.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..benchmark.build import FORMAT as BENCHMARK_FORMAT
from ..benchmark.build import SPLITS
from ..benchmark.inputs import CATEGORIES
from ..errors import UserError
from ..generations import current, is_output

log = logging.getLogger(__name__)

SPLIT_CHOICES = (*SPLITS, "all")
_COLUMNS = ["key", "task", "dataset", "instruction", "meta", "tar", "src_offset", "src_size", "keep"]


@dataclass
class BenchmarkSample:
    key: str
    instruction: str
    caption: str
    target_caption: str
    category: str
    split: str
    dataset: str | None = None
    task: str | None = None
    tar: Path | None = None
    src_offset: int | None = None
    src_size: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict, where: str) -> BenchmarkSample:
        """A sidecar row (``meta`` as JSON text) -> a sample; UserError naming the row and field."""
        key = row.get("key")
        try:
            meta = json.loads(row.get("meta") or "{}")
        except ValueError:
            raise UserError(f"{where}: row {key}: meta is not JSON") from None
        if not isinstance(meta, dict):
            raise UserError(f"{where}: row {key}: meta is not a JSON object")
        vals = {}
        for name, fld in (("caption", "source_caption"), ("target_caption", "target_caption"),
                          ("category", "category"), ("split", "bench_split")):
            v = meta.get(fld)
            if not isinstance(v, str) or not v.strip():
                raise UserError(f"{where}: row {key}: field meta.{fld} missing or empty")
            vals[name] = v.strip()
        if vals["split"] not in SPLITS:
            raise UserError(f"{where}: row {key}: field meta.bench_split is {vals['split']!r}, "
                            f"expected one of {', '.join(SPLITS)}")
        if not (row.get("instruction") or "").strip():
            raise UserError(f"{where}: row {key}: no instruction")
        return cls(key=key, instruction=row["instruction"].strip(), dataset=row.get("dataset"), task=row.get("task"),
                   src_offset=row.get("src_offset"), src_size=row.get("src_size"), meta=meta, **vals)

    def read_src(self) -> bytes:
        """The source image bytes, read from the tar at the sidecar's offset."""
        if self.tar is None or self.src_offset is None or not self.src_size:
            raise UserError(f"benchmark row {self.key}: no source image")
        with open(self.tar, "rb") as fh:
            fh.seek(int(self.src_offset))
            data = fh.read(int(self.src_size))
        if len(data) != self.src_size:
            raise UserError(f"{self.tar}: member of {self.key} truncated ({len(data)} of {self.src_size} bytes)")
        return data


@dataclass
class Benchmark:
    path: Path
    name: str | None
    version: str | None
    generation: int
    samples: list[BenchmarkSample]
    roots: dict[str, str] = field(default_factory=dict)

    def categories(self) -> list[str]:
        present = {s.category for s in self.samples}
        return [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))


def read_benchmark(path: str | Path, split: str = "eval", limit: int | None = None) -> Benchmark:
    """The benchmark samples of ``split`` (``align``, ``eval`` or ``all``), sorted by key; ``limit`` keeps
    the first N of each category (a quick look; the sample set stays balanced)."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise UserError(f"--limit: must be at least 1, got {limit}")
    if split not in SPLIT_CHOICES:
        raise UserError(f"--split: {split!r} is not one of {', '.join(SPLIT_CHOICES)}")
    if not path.is_dir() or not is_output(path):
        raise UserError(f"{path}: not a shard output (no manifest.json); build one with `idd benchmark build`")
    gen = current(path)
    section = (gen.manifest or {}).get("benchmark")
    if not isinstance(section, dict) or section.get("format") != BENCHMARK_FORMAT:
        raise UserError(f"{path}/manifest.json: field benchmark missing or not of format {BENCHMARK_FORMAT} "
                        "(not a benchmark output; build one with `idd benchmark build`)")
    gdir = Path(gen.loc.path)
    train = gdir / "train"
    files = sorted(p for p in train.glob("*.parquet")
                   if (train / (p.name[: -len(".parquet")] + ".stats.json")).is_file())
    samples: list[BenchmarkSample] = []
    for f in files:
        table = pq.read_table(f, columns=_COLUMNS)
        for row in table.to_pylist():
            if not row.get("keep"):
                continue
            s = BenchmarkSample.from_row(row, str(f))
            tar = (f.parent / row["tar"]).resolve()
            if gdir.resolve() not in tar.parents:
                raise UserError(f"{f}: row {s.key}: tar {row['tar']!r} is outside the output")
            s.tar = tar
            if split == "all" or s.split == split:
                samples.append(s)
    samples.sort(key=lambda s: s.key)
    if not samples:
        raise UserError(f"{path}: no benchmark samples in split {split!r}")
    if limit:
        per: dict[str, int] = {}
        kept = []
        for s in samples:
            if per.get(s.category, 0) < limit:
                per[s.category] = per.get(s.category, 0) + 1
                kept.append(s)
        samples = kept
    man = gen.manifest or {}
    log.info("benchmark %s: %d samples (split %s, generation %d)", path, len(samples), split, gen.number)
    return Benchmark(path=path, name=man.get("name"), version=man.get("version"), generation=gen.number,
                     samples=samples, roots=man.get("roots") or {})
