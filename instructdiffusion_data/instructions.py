"""Instruction templates: ``configs/instructions/<task>.txt``, one template per line.

Lines starting with ``#`` are comments. When ``<task>.expanded.txt`` exists (written by
``idd instructions expand`` and reviewed by a person) it is used instead. Templates use ``{name}``
placeholders that the stage fills; :func:`fill` refuses a template whose placeholders it cannot fill.

Number agreement: ``{n:singular|plural}`` writes the singular text when the stage passes ``n`` = one
(:class:`Number`) and the plural otherwise, so one template reads right for one joint and for three:
``Mark {items} with {n:a solid dot|solid dots}.``. A template with a malformed ``{n:...}`` is refused
when the file is read (one line naming the file and line).
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


class Number:
    """A count that templates agree with: ``format(Number(1), "a circle|circles")`` -> ``a circle``."""

    def __init__(self, n: int):
        self.n = int(n)

    def __format__(self, spec: str) -> str:
        forms = spec.split("|")
        if len(forms) != 2:
            return str(self.n) if not spec else format(self.n, spec)
        return forms[0] if self.n == 1 else forms[1]

    def __str__(self) -> str:
        return str(self.n)


NUMBER = "n"  # the placeholder name of number agreement


def template_problem(template: str) -> str | None:
    """Why a template cannot be filled, or None: braces that do not parse, or an ``{n:...}`` without
    exactly one ``|`` between its singular and plural forms."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        return f"braces do not parse ({e})"
    for _, name, spec, _ in parts:
        if name == NUMBER and (spec or "").count("|") != 1:
            return "{n:...} needs a singular and a plural form: {n:a circle|circles}"
    return None


@functools.lru_cache(maxsize=64)
def _load(path: str) -> tuple[str, ...]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: instruction templates not found")
    out = []
    for i, ln in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        ln = ln.strip()
        if not ln or ln.startswith("#"):
            continue
        problem = template_problem(ln)
        if problem:
            raise ConfigError(f"{p}:{i}: {problem}")
        out.append(ln)
    if not out:
        raise ConfigError(f"{p}: no templates in file")
    return tuple(out)


def load_templates(task: str, directory: str | os.PathLike | None = None) -> list[str]:
    return list(_load(str(template_path(task, directory))))


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def fill(template: str, **values) -> str:
    missing = placeholders(template) - set(values)
    if missing:
        raise ConfigError(f"template {template!r}: no value for {sorted(missing)}")
    text = template.format(**values)
    return text[:1].upper() + text[1:] if text else text


def choose(templates: list[str], rng: np.random.Generator, **values) -> tuple[int, str]:
    """Pick a template at random (seeded) and fill it; returns (template index, text). Pass
    ``n=Number(k)`` for templates that agree in number with ``k`` things."""
    i = int(rng.integers(len(templates)))
    return i, fill(templates[i], **values)
