"""Named input roots: rows are written with paths relative to them (``{source.images}/x.jpg``), and the
manifest records the roots once, so an output can move (docs/shard-format.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import PipelineConfig
from .readers._base import Source
from .storage import is_uri


def collect_roots(cfg: PipelineConfig, source: Source) -> dict[str, str]:
    """Named input roots: paths in rows are written relative to them (``{source.images}/x.jpg``)."""
    roots = dict(source.roots())
    for i, spec in enumerate(cfg.stages):
        for k, v in (spec or {}).items():
            if isinstance(v, str) and v and k != "type" and not is_uri(v) and ("/" in v or os.sep in v):
                p = Path(v)
                if p.exists():
                    roots[f"stages.{i}.{k}"] = str(p.resolve())
    return roots


def relativize_text(text: str, roots: dict[str, str]) -> str:
    """Replace absolute root prefixes in ``text`` by ``{root name}`` (longest root first)."""
    for name, path in sorted(roots.items(), key=lambda kv: -len(kv[1])):
        if path and path in text:
            text = _replace_prefix(text, path, "{" + name + "}")
    return text


def _replace_prefix(text: str, path: str, token: str) -> str:
    out, i = [], 0
    while True:
        j = text.find(path, i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        end = j + len(path)
        boundary = end == len(text) or text[end] in "/\"',) ;]}"
        out.append(text[i:j])
        out.append(token if boundary else path)
        i = end


def relativize(obj: Any, roots: dict[str, str]) -> Any:
    """``obj`` with every string's absolute root prefix replaced by ``{root name}``."""
    if not roots:
        return obj
    if isinstance(obj, str):
        return relativize_text(obj, roots) if ("/" in obj or "\\" in obj) else obj
    if isinstance(obj, dict):
        return {k: relativize(v, roots) if isinstance(v, _WALKED) else v for k, v in obj.items()}
    if isinstance(obj, list):
        # numbers (coordinates, boxes) are most of a row's meta: no call per number
        return [relativize(v, roots) if isinstance(v, _WALKED) else v for v in obj]
    return obj


_WALKED = (str, dict, list)


def resolve_path(text: str, roots: dict[str, str]) -> str:
    """The inverse of :func:`relativize_text`: ``{source.images}/x.jpg`` -> ``/data/coco/x.jpg``."""
    for name, path in roots.items():
        text = text.replace("{" + name + "}", path)
    return text


