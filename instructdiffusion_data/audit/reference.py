"""The reference patch of a replacement sample as the auditor shows it: ``meta["reference"]`` read through
:class:`~instructdiffusion_data.contracts.ReferencePatch` (docs/contracts.md), its paths' ``{source.x}`` root
tokens resolved through the output's ``manifest["roots"]`` (docs/shard-format.md, "Paths"), described for the
page or answered as a PNG.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np
from fastapi.responses import Response

from ..contracts import ReferencePatch
from ..errors import RecordError
from ..imageio import encode_png
from ..roots import resolve_path
from .images import MemberError


def resolve_paths(obj: Any, roots: dict[str, str]) -> Any:
    """``obj`` with the ``{source.x}`` root tokens of every string expanded (``roots.resolve_path`` over the
    output's ``manifest["roots"]``): the paths a row names, as they were on the machine that ran the pipeline."""
    if not roots:
        return obj
    if isinstance(obj, str):
        return resolve_path(obj, roots) if "{" in obj else obj
    if isinstance(obj, dict):
        return {k: resolve_paths(v, roots) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [resolve_paths(v, roots) for v in obj]
    return obj


def find_reference(meta: dict, roots: dict[str, str] | None = None) -> ReferencePatch | None:
    """``meta["reference"]`` through its contract (None when absent; RecordError naming the field when
    malformed), with ``file`` and ``gallery`` resolved through ``roots``."""
    ref = ReferencePatch.from_meta(meta)
    if ref is None or not roots:
        return ref
    return dataclasses.replace(ref, file=resolve_path(ref.file, roots) if ref.file else ref.file,
                               gallery=resolve_path(ref.gallery, roots) if ref.gallery else ref.gallery)


def png_response(rgba: np.ndarray) -> Response:
    """An RGB or RGBA uint8 array as a PNG answer (alpha kept)."""
    if rgba.ndim == 3 and rgba.shape[2] == 4:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
        if not ok:
            raise MemberError("PNG encoding failed")
        return Response(buf.tobytes(), media_type="image/png")
    return Response(encode_png(rgba), media_type="image/png")


def describe_reference(meta: dict, roots: dict[str, str] | None = None) -> dict | None:
    """What the page says about ``meta["reference"]``: the contract's fields (:meth:`ReferencePatch.to_meta`,
    paths resolved, long values such as the embedded patch summarised), or the raw value and the error
    when it is malformed."""
    try:
        ref = find_reference(meta, roots)
    except RecordError as e:
        raw = meta.get(ReferencePatch.FIELD)
        fields = raw if isinstance(raw, dict) else {"value": raw if isinstance(raw, (str, int, float, bool)) else str(raw)[:400]}
        return {"fields": _summarise(resolve_paths(fields, roots or {})), "error": str(e)}
    if ref is None:
        return None
    return {"fields": _summarise(resolve_paths(ref.to_meta(), roots or {}))}


def _summarise(fields: dict) -> dict:
    return {k: (v if len(str(v)) < 400 else f"({len(str(v))} characters)") for k, v in fields.items()}
