"""Procedural demo data written in the datasets' real on-disk formats.

Each module here (one per dataset family) defines ``generate(out: Path, n: int, seed: int) -> dict``
and writes its dataset under ``out/<name>/`` exactly as the public release lays it out, so that the
demo and the tests exercise the real readers. :func:`generate_all` runs every module in name order;
``scenes`` holds the shared procedural scene model and is not a generator itself.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from pathlib import Path

log = logging.getLogger(__name__)

NOT_GENERATORS = {"scenes"}


def generator_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name not in NOT_GENERATORS)


def generate_all(out: str | Path, n: int = 48, seed: int = 0, only: list[str] | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in generator_names():
        if only and name not in only:
            continue
        mod = importlib.import_module(f"{__name__}.{name}")
        log.info("demo data: %s", name)
        summary[name] = mod.generate(out, n, seed)
    return summary
