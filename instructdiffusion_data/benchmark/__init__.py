"""The editing benchmark of the paper (section 4.4): source image, BLIP-2 caption, instruction, the
caption of the edited image and the category (remove / add / replace), as a shard output split into an
``align`` half (human-alignment candidates) and an ``eval`` half (metrics).

:mod:`.inputs` reads a folder of images with a JSONL, or an existing output; :mod:`.captions` writes the
source and target captions; :mod:`.build` assembles and writes the output and reads one half back.
``idd benchmark build`` is the command (:mod:`..commands.benchmark`); docs/loop.md, section 3.
"""

from .build import SPLITS, BenchmarkConfig, bench_split, build, load_config, read_samples, split_tars

__all__ = ["SPLITS", "BenchmarkConfig", "bench_split", "build", "load_config", "read_samples", "split_tars"]
