"""What crosses the wire of the audit app: the typed bodies of label, pick and export posts, read within a
size limit (:func:`read_post`: 413 past :data:`MAX_BODY_BYTES`, 422 naming the field), and JSON answers that
are strict JSON (:class:`StrictJSONResponse`: a NaN or infinite number is answered as ``null``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

MAX_BODY_BYTES = 64 << 10  # label, pick and export posts are a few hundred bytes


class _Post(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the page may send more fields than a route needs


class LabelPost(_Post):
    output: StrictStr = Field(max_length=500)
    split: StrictStr = Field(max_length=50)
    key: StrictStr = Field(max_length=500)
    verdict: StrictStr = Field(max_length=50)  # accept / reject: checked by the label store (400)
    auditor: StrictStr = Field(max_length=500)
    comment: StrictStr | None = Field(None, max_length=10_000)


class PickPost(_Post):
    output: StrictStr = Field(max_length=500)
    group: StrictStr = Field(max_length=500)
    keys: list[StrictStr] | None = Field(None, max_length=100)
    auditor: StrictStr = Field(max_length=500)
    comment: StrictStr | None = Field(None, max_length=10_000)


class ExportPost(_Post):
    output: StrictStr = Field(max_length=500)


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (strict JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


class StrictJSONResponse(JSONResponse):
    """JSON that a browser's ``JSON.parse`` accepts: non-finite numbers (from legacy meta) become null
    instead of a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except ValueError:
            return json.dumps(finite_json(content), ensure_ascii=False, allow_nan=False,
                              separators=(",", ":")).encode("utf-8")


def _validation_message(err: ValidationError) -> str:
    """``comment: Input should be a valid string (got int)``: one clause per wrong field (five at most)."""
    parts = []
    for e in err.errors(include_url=False)[:5]:
        where = ".".join(str(x) for x in e.get("loc", ())) or "body"
        msg = f"{where}: {e.get('msg', 'invalid')}"
        if e.get("type") not in ("missing", "json_invalid", "json_type") and "input" in e:
            got = e["input"]
            msg += f" (got {'null' if got is None else type(got).__name__})"
        parts.append(msg)
    return "; ".join(parts)


async def read_post(request: Request, model: type[BaseModel], limit: int = MAX_BODY_BYTES) -> BaseModel:
    """The request body as ``model``: 413 past ``limit`` bytes (from Content-Length, then counted while
    reading, so a lying or absent header changes nothing), 422 for JSON that does not fit the model."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HTTPException(413, f"request body larger than {limit} bytes")
        except ValueError:
            raise HTTPException(400, "invalid Content-Length") from None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body larger than {limit} bytes")
    try:
        return model.model_validate_json(bytes(body) or b"{}")
    except ValidationError as e:
        raise HTTPException(422, _validation_message(e)) from None
