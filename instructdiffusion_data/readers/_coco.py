"""Helpers shared by the COCO-family readers (COCO, COCO-Stuff, RefCOCO, gRefCOCO)."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

from ..errors import ConfigError
from ..schema import Row, drop, make_key, new_row

log = logging.getLogger(__name__)

LABELS_FILE = Path(__file__).resolve().parent.parent / "data" / "cocostuff_labels.txt"


def load_json(path: str | Path, where: str) -> dict | list:
    from ..storage import is_uri, read_bytes

    p = path if is_uri(path) else Path(path)
    try:
        return json.loads(read_bytes(p))
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found: {p}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: {p} is not valid JSON (line {e.lineno}: {e.msg})") from None


def require_keys(doc: dict, keys: tuple[str, ...], path: str | Path, where: str) -> None:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: {path} is not a COCO-style JSON object")
    for k in keys:
        if k not in doc:
            raise ConfigError(f"{where}: {path} has no '{k}' field")


def image_index(doc: dict) -> dict[int, dict]:
    return {img["id"]: img for img in doc.get("images", [])}


@lru_cache(maxsize=1)
def cocostuff_labels() -> dict[int, str]:
    out = {}
    for line in LABELS_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            i, name = line.split("\t")
            out[int(i)] = name
    return out


def clean_name(name: str) -> str:
    """COCO-Stuff names as people say them: 'sky-other' -> 'sky', 'wall-brick' -> 'brick wall'."""
    n = name
    for suffix in ("-other", "-stuff", "-merged"):
        if n.endswith(suffix):
            n = n[: -len(suffix)]
    if "-" in n:
        head, tail = n.split("-", 1)
        if head in ("wall", "floor", "ceiling", "window"):
            n = f"{tail} {head}"
        else:
            n = n.replace("-", " ")
    return n


def bad_record(dataset: str, task: str, record_id, reason: str, file: str | None, field: str | None = None,
               **meta) -> Row:
    """A record that cannot be used: kept as a dropped row, with file, record id and field."""
    details = ", ".join(f"{k}={v}" for k, v in (("file", file), ("record", record_id), ("field", field)) if v is not None)
    row = new_row(key=make_key(dataset, record_id, "rec"), task=task, dataset=dataset,
                  meta={"file": file, "record_id": str(record_id), "field": field, **meta})
    return drop(row, f"{reason} ({details})" if details else reason)


def record_row(dataset: str, task: str, record_id, meta: dict) -> Row:
    return new_row(key=make_key(dataset, record_id, "rec"), task=task, dataset=dataset,
                   meta={"record_id": str(record_id), **meta})
