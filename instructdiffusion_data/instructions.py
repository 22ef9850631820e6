"""Instruction templates: ``configs/instructions/<task>.txt``, one template per line.

Lines starting with ``#`` are comments. When ``<task>.expanded.txt`` exists (written by
``idd instructions expand`` and reviewed by a person) it is used instead. Templates use ``{name}``
placeholders that the stage fills; :func:`fill` refuses a template whose placeholders it cannot fill.
"""

from __future__ import annotations

import functools
import os
import string
from pathlib import Path

import numpy as np

from .errors import ConfigError

# configs/ sits next to the package in a source checkout; IDD_CONFIG_DIR points elsewhere (installed use).
DEFAULT_DIR = Path(os.environ.get("IDD_CONFIG_DIR", Path(__file__).resolve().parent.parent / "configs")) / "instructions"


def template_path(task: str, directory: str | os.PathLike | None = None) -> Path:
    d = Path(directory) if directory else DEFAULT_DIR
    expanded = d / f"{task}.expanded.txt"
    return expanded if expanded.is_file() else d / f"{task}.txt"


@functools.lru_cache(maxsize=64)
def _load(path: str) -> tuple[str, ...]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: instruction templates not found")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    out = tuple(ln for ln in lines if ln and not ln.startswith("#"))
    if not out:
        raise ConfigError(f"{p}: no templates in file")
    return out


def load_templates(task: str, directory: str | os.PathLike | None = None) -> list[str]:
    return list(_load(str(template_path(task, directory))))


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def fill(template: str, **values: str) -> str:
    missing = placeholders(template) - set(values)
    if missing:
        raise ConfigError(f"template {template!r}: no value for {sorted(missing)}")
    text = template.format(**values)
    return text[:1].upper() + text[1:] if text else text


def choose(templates: list[str], rng: np.random.Generator, **values: str) -> tuple[int, str]:
    """Pick a template at random (seeded) and fill it; returns (template index, text)."""
    i = int(rng.integers(len(templates)))
    return i, fill(templates[i], **values)
