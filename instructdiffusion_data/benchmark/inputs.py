"""What a benchmark is built from: a folder of images and a JSONL file, or an existing output.

**JSONL** (UTF-8, one JSON object a line; blank lines and lines starting with ``#`` are skipped)::

    {"image": "000123.jpg", "instruction": "Remove the red dog.", "category": "remove"}
    {"image": "sub/x.png", "instruction": "Add a cat on the sofa", "category": "add", "caption": "a sofa"}

Required: ``image`` (a path relative to the images folder, default the JSONL's folder), ``instruction``,
``category`` (``remove``, ``add`` or ``replace``; ``removal``, ``addition``, ``replacement`` are read as
those). Optional: ``id`` (the sample's id; default the image path and a hash of instruction and
category), ``caption`` (the source image's caption: the weight-free profile's caption), ``object`` and
``target_object`` (what is removed/added/replaced and what it becomes: used by the offline target
caption instead of reading them from the instruction), ``target_caption`` (a caption a person wrote: it
is used as it is).

A line that cannot be used becomes a :class:`BadLine` (file, line number, field, reason class, message),
which the builder keeps as a rejected row; a missing or unreadable JSONL or images folder is one
:class:`~..errors.UserError` line.

**An existing output** (``--from-output``): the kept ``edit_remove`` / ``edit_add`` / ``edit_replace``
rows of its current generation (source image bytes read at the sidecar's offsets, no tar scan), with
the captions and objects their meta holds (``meta.captions``, ``phrase``, ``src_label``, ``ref_label``;
a benchmark output's ``source_caption``, ``target_caption`` and ``objects``). Local outputs only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import UserError

log = logging.getLogger(__name__)

CATEGORIES = ("remove", "add", "replace")
CATEGORY_ALIASES = {"removal": "remove", "addition": "add", "replacement": "replace", "edit_remove": "remove",
                    "edit_add": "add", "edit_replace": "replace"}
TASK_OF = {"remove": "edit_remove", "add": "edit_add", "replace": "edit_replace"}
MAX_TEXT = 1000  # characters of an instruction or caption

# drop classes of bad lines (the same text for every line with the same fault)
INVALID_JSON = "benchmark: line is not a JSON object"
MISSING_FIELD = "benchmark: required field missing"
BAD_FIELD_VALUE = "benchmark: field has a wrong value"
UNKNOWN_CATEGORY = "benchmark: unknown category"
UNSAFE_PATH = "benchmark: image path outside the images folder"
NO_IMAGE = "benchmark: image file not found"
DUPLICATE = "benchmark: duplicate sample"


@dataclass
class BenchItem:
    """One benchmark sample before captioning."""

    record_id: str
    category: str
    instruction: str
    image: bytes  # the source image's encoded bytes
    file: str  # where it came from: "{source.images}/x.jpg" (JSONL) or "<output>:<key>" (an output)
    line: int | None = None  # JSONL line number
    caption: str | None = None  # a given caption of the source image (annotations)
    object: str | None = None
    target_object: str | None = None
    target_caption: str | None = None  # a given target caption (used as it is)
    meta: dict = field(default_factory=dict)  # what the source row said (from an output)


@dataclass
class BadLine:
    """A JSONL line that cannot be used: where, why (``reason`` is the drop class) and in words."""

    file: str
    line: int
    reason: str
    field: str | None
    message: str
    text: str = ""

    def __str__(self) -> str:  # the one-line error: "bench.jsonl:7: category: expected ..."
        at = f"{self.field}: " if self.field else ""
        return f"{self.file}:{self.line}: {at}{self.message}"


def _text(value) -> tuple[str | None, str | None]:
    """(the cleaned text, or None) and a problem for an optional text field."""
    if value is None:
        return None, None
    if not isinstance(value, str) or not value.strip():
        return None, f"expected a non-empty string, got {value!r}"[:200]
    if len(value) > MAX_TEXT:
        return None, f"longer than {MAX_TEXT} characters"
    return " ".join(value.split()), None


def sample_id(image: str, instruction: str, category: str) -> str:
    """The default id of a JSONL sample: stable under reordering and editing of other lines."""
    digest = hashlib.sha1(f"{instruction}\x00{category}".encode()).hexdigest()[:8]
    return f"{image}#{digest}"


def read_jsonl(jsonl: str, images: str | None = None) -> Iterator[BenchItem | BadLine]:
    """The samples of ``jsonl`` in file order, each a :class:`BenchItem` or a :class:`BadLine`."""
    path = Path(jsonl)
    if not path.is_file():
        raise UserError(f"{jsonl}: benchmark JSONL not found")
    root = Path(images) if images else path.parent
    if not root.is_dir():
        raise UserError(f"{images}: images folder not found")
    name = path.name
    seen: dict[str, int] = {}
    try:
        fh = open(path, encoding="utf-8")
    except OSError as e:
        raise UserError(f"{jsonl}: cannot read ({e.strerror or e})") from None
    with fh:
        lineno = 0
        while True:
            try:
                raw = fh.readline()
            except UnicodeDecodeError as e:
                raise UserError(f"{jsonl}:{lineno + 1}: not UTF-8 text ({e.reason})") from None
            if not raw:
                return
            lineno += 1
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            yield _line(text, lineno, name, root, seen)


def _line(text: str, lineno: int, name: str, root: Path, seen: dict[str, int]) -> BenchItem | BadLine:
    def bad(reason: str, fld: str | None, message: str) -> BadLine:
        return BadLine(name, lineno, reason, fld, message, text[:300])

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return bad(INVALID_JSON, None, f"not valid JSON ({e.msg} at column {e.colno})")
    if not isinstance(obj, dict):
        return bad(INVALID_JSON, None, f"expected a JSON object, got {type(obj).__name__}")
    for req in ("image", "instruction", "category"):
        if obj.get(req) in (None, ""):
            return bad(MISSING_FIELD, req, "required field is missing or empty")
    values = {}
    for fld in ("image", "instruction", "caption", "object", "target_object", "target_caption", "id"):
        raw = obj.get(fld)
        if fld == "id" and isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)  # a numeric id is its decimal text
        v, problem = _text(raw)
        if problem:
            return bad(BAD_FIELD_VALUE, fld, problem)
        values[fld] = v
    cat = obj["category"]
    cat = CATEGORY_ALIASES.get(cat.strip().lower(), cat.strip().lower()) if isinstance(cat, str) else cat
    if cat not in CATEGORIES:
        return bad(UNKNOWN_CATEGORY, "category", f"expected one of {', '.join(CATEGORIES)}, got {obj['category']!r}"[:200])
    if cat == "replace" and values["object"] and not values["target_object"]:
        return bad(MISSING_FIELD, "target_object", "a replace sample naming its object must name what it becomes")
    rel = values["image"]
    if rel.startswith(("/", "\\")) or ".." in Path(rel).parts or "://" in rel:
        return bad(UNSAFE_PATH, "image", f"expected a path inside the images folder, got {rel!r}")
    file = root / rel
    if not file.is_file():
        return bad(NO_IMAGE, "image", f"no file {rel} in the images folder")  # the path stays out of the rows
    rid = values["id"] or sample_id(rel, values["instruction"], cat)
    if rid in seen:
        return bad(DUPLICATE, "id" if values["id"] else "image",
                   f"same sample as line {seen[rid]} (id {rid!r})"[:200])
    seen[rid] = lineno
    try:
        data = file.read_bytes()
    except OSError as e:
        return bad(NO_IMAGE, "image", f"cannot read {rel} ({e.strerror or e})")
    return BenchItem(record_id=rid, category=cat, instruction=values["instruction"], image=data,
                     file="{source.images}/" + rel.replace(os.sep, "/"), line=lineno, caption=values["caption"],
                     object=values["object"], target_object=values["target_object"],
                     target_caption=values["target_caption"])


def read_output(output: str) -> Iterator[BenchItem]:
    """The kept editing rows of an existing output's current generation (see module docstring)."""
    import pyarrow.parquet as pq

    from ..generations import current, is_output

    if not is_output(output):
        raise UserError(f"{output}: not an output (no manifest.json)")
    gen = current(output)
    shards = (gen.manifest.get("splits") or {}).get("train", {}).get("shards") or []
    name = Path(str(output).rstrip("/")).parent.name or "output"
    for s in shards:
        if not s.get("rows"):
            continue
        pq_loc, tar_loc = gen.file(s["parquet"]), gen.file(s["tar"])
        if not (pq_loc.local and tar_loc.local):
            raise UserError(f"{output}: --from-output reads local outputs only (got {tar_loc})")
        table = pq.read_table(pq_loc.path)
        with open(tar_loc.path, "rb") as tar:
            for r in table.to_pylist():
                cat = CATEGORY_ALIASES.get(r.get("task") or "")
                if not r.get("keep") or cat is None or r.get("src_offset") is None:
                    continue
                tar.seek(int(r["src_offset"]))
                data = tar.read(int(r["src_size"]))
                meta = json.loads(r["meta"]) if r.get("meta") else {}
                objects = meta.get("objects") if isinstance(meta.get("objects"), dict) else {}
                yield BenchItem(record_id=r["key"], category=cat, instruction=r.get("instruction") or "",
                                image=data, file=f"{name}:{r['key']}", meta={**meta, "task": r["task"]},
                                # a benchmark output as the input (another seed, a subset): its captions
                                caption=_given(meta.get("source_caption")),
                                target_caption=_given(meta.get("target_caption")),
                                object=_given(objects.get("object")), target_object=_given(objects.get("target_object")))


def _given(value) -> str | None:
    return " ".join(value.split()) if isinstance(value, str) and value.strip() else None
