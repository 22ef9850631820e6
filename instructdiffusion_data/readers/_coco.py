"""What the COCO-family readers share (COCO keypoints, COCO-Stuff, RefCOCO, gRefCOCO, CrowdPose, AIC):

* :class:`JsonStream`: a JSON annotation file read as a stream (``ijson`` on its C backend, yajl2_c), so a
  238 MB ``person_keypoints_train2017.json`` is never held whole: each pass yields one item of one array
  at a time. Python's ``json`` writes bare ``NaN`` / ``Infinity`` tokens, and yajl also refuses numbers
  that overflow a double or an int64; the stream rewrites those tokens (outside strings) to sentinels
  that come back as ``float('nan')`` / ``inf`` in the items, so a reader rejects the record that holds
  them (``NOT_FINITE``) instead of the whole file failing to parse. A file that is not JSON, or whose
  top level is not what the format says (``"annotations": {}``, ``images`` missing), is one
  :class:`~..errors.ConfigError` line naming the file and the field.
* :class:`ImageIndex`: the ``images`` array as a compact index (one small tuple per image, no dict per
  image), the memory bound of every streaming COCO reader.
* the COCO-Stuff label list (:func:`cocostuff_labels`, :func:`clean_name`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from array import array
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError
from ..storage import Location, is_uri, resolve
from ._base import finite, image_path

log = logging.getLogger(__name__)

LABELS_FILE = Path(__file__).resolve().parent.parent / "data" / "cocostuff_labels.txt"

CHUNK = 1 << 20  # bytes read from the file at a time


# -- non-standard numbers ------------------------------------------------------------------------

_SENTINELS = {"\x00idd:NaN": math.nan, "\x00idd:Infinity": math.inf, "\x00idd:-Infinity": -math.inf}
_SENTINEL_OF = {b"NaN": b'"\\u0000idd:NaN"', b"Infinity": b'"\\u0000idd:Infinity"',
                b"-Infinity": b'"\\u0000idd:-Infinity"'}
# a chunk holding NaN or Infinity needs the careful (token by token) pass; anything else passes through.
# Numbers overflowing a double or int64 are rarer still: a pass that meets one (yajl: "overflow") is
# read again in careful mode, every chunk token by token, skipping the items already yielded.
_FAST = (b"NaN", b"Infinity")
_TOKEN = re.compile(rb'\\.|"|-?Infinity|NaN|-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?')
_QUOTE = re.compile(rb'\\.|"')
_INT64 = 1 << 63


class _Sanitizer:
    """A binary file-like object over ``raw`` that replaces, outside strings, the tokens yajl refuses:
    ``NaN``, ``Infinity``, ``-Infinity`` and numbers overflowing a double (-> sentinel strings that
    :func:`restore` turns back into floats), integers overflowing int64 (-> their float value).
    Chunks are cut after a ``,`` ``]`` or ``}`` so that no number or literal spans two chunks; the
    in-string state is carried across chunks."""

    def __init__(self, raw: Any, careful: bool = False):
        self.raw = raw
        self.careful = careful
        self.pending = b""
        self.eof = False
        self.in_string = False
        self.replaced = 0
        self.offset = 0  # bytes of the file handed out so far

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        while True:
            if self.eof:
                out, self.pending = self.pending, b""
                if out:
                    self.offset += len(out)
                    return self._clean(out)
                return b""
            data = self.raw.read(CHUNK)
            if not data:
                self.eof = True
                continue
            buf = self.pending + data
            cut = max(buf.rfind(b","), buf.rfind(b"]"), buf.rfind(b"}")) + 1
            if cut <= 0:  # no delimiter in a whole chunk (a huge string): keep reading
                self.pending = buf
                if len(buf) < 64 * CHUNK:
                    continue
                cut = len(buf) - 1
                while cut > 0 and buf[cut - 1:cut] == b"\\":
                    cut -= 1
            out, self.pending = buf[:cut], buf[cut:]
            self.offset += len(out)
            return self._clean(out)

    def _clean(self, chunk: bytes) -> bytes:
        if not self.careful and not any(t in chunk for t in _FAST):
            if b"\\" not in chunk:
                if chunk.count(b'"') & 1:
                    self.in_string = not self.in_string
            else:
                for m in _QUOTE.finditer(chunk):
                    if m.group() == b'"':
                        self.in_string = not self.in_string
            return chunk
        out, pos = [], 0
        for m in _TOKEN.finditer(chunk):
            tok = m.group()
            if tok == b'"':
                self.in_string = not self.in_string
                continue
            if self.in_string or tok[:1] == b"\\":
                continue
            rep = _SENTINEL_OF.get(tok)
            if rep is None:
                if b"e" not in tok and b"E" not in tok and b"." not in tok:
                    if abs(int(tok)) < _INT64:
                        continue
                    rep = repr(float(int(tok))).encode()
                else:
                    v = float(tok)
                    if math.isfinite(v):
                        continue
                    rep = _SENTINEL_OF[b"Infinity" if v > 0 else b"-Infinity"]
            out += [chunk[pos:m.start()], rep]
            pos = m.end()
            self.replaced += 1
        if not out:
            return chunk
        out.append(chunk[pos:])
        return b"".join(out)


class _Chunked:
    """A reader handing out at most ``n`` bytes per read from ``src`` (which may return more)."""

    def __init__(self, src: Any, n: int):
        self.src, self.n, self.buf = src, n, b""

    def read(self, n: int = -1) -> bytes:
        if n == 0:  # ijson probes the type with read(0)
            return b""
        if not self.buf:
            self.buf = self.src.read(self.n)
        k = self.n if n < 0 else min(n, self.n)
        out, self.buf = self.buf[:k], self.buf[k:]
        return out


def restore(obj: Any) -> Any:
    """``obj`` with the sentinel strings of :class:`_Sanitizer` turned back into non-finite floats."""
    if isinstance(obj, str):
        return _SENTINELS.get(obj, obj)
    if isinstance(obj, list):
        return [restore(v) for v in obj]
    if isinstance(obj, dict):
        return {k: restore(v) for k, v in obj.items()}
    return obj


@lru_cache(maxsize=1)
def ijson_backend() -> Any:
    """ijson's C backend (yajl2_c, about 10x the pure-Python one); the default backend, with a warning,
    where the C extension is missing."""
    import ijson

    try:
        return ijson.get_backend("yajl2_c")
    except ImportError:
        log.warning("ijson's C backend (yajl2_c) is not available: streaming JSON with %s (slower)", ijson.backend)
        return ijson


class JsonStream:
    """A JSON file (path or URI) read item by item, any number of passes.

    ``items("annotations.item")`` yields the members of the top-level ``annotations`` array;
    ``items("item")`` those of a top-level array. Numbers are floats or ints (never Decimal).
    A parse error is a ConfigError naming the file, the byte offset and ``where`` (the config key)."""

    def __init__(self, path: str | Path, where: str):
        self.path = str(path)
        self.where = where
        self.nonstandard = 0  # tokens rewritten (NaN, Infinity, overflowing numbers), last pass
        self.careful = False  # set once a pass met a number overflowing a double or int64

    def _open(self):
        if is_uri(self.path):
            fs, p = resolve(self.path)
            try:
                return fs.open_input_stream(p)
            except FileNotFoundError:
                raise ConfigError(f"{self.where}: file not found: {self.path}") from None
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            raise ConfigError(f"{self.where}: file not found: {self.path}") from None
        except IsADirectoryError:
            raise ConfigError(f"{self.where}: {self.path} is a folder, expected a JSON file") from None

    def first_char(self) -> str:
        """The first non-blank character of the file ('{' for an object, '[' for an array), '' if empty."""
        with self._open() as fh:
            head = fh.read(4096)
        text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
        return text[:1].decode("latin-1")

    def items(self, prefix: str) -> Iterator[Any]:
        from ijson.common import JSONError

        ijson = ijson_backend()

        done, careful = 0, self.careful
        while True:
            fh = self._open()
            src = _Sanitizer(fh, careful=careful)
            n = 0
            try:
                for obj in ijson.items(src, prefix, use_float=True, buf_size=CHUNK):
                    n += 1
                    if n <= done:  # a careful rereading: these were yielded already
                        continue
                    if src.replaced:
                        obj = restore(obj)
                    yield obj
                return
            except JSONError as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                if not careful and "overflow" in msg:
                    done, careful = n, True
                    self.careful = True  # the next passes over this file start careful
                    continue
                raise ConfigError(f"{self.where}: {self.path} is not valid JSON (near byte {src.offset}: "
                                  f"{msg})") from None
            finally:
                self.nonstandard = src.replaced
                fh.close()

    def head_items(self, key: str, before: tuple[str, ...] = ("annotations",)) -> Iterator[Any]:
        """The items of the top-level array ``key``, reading the file only up to the end of that array
        when it comes early (COCO: ``images`` before ``annotations``): parse events up to there, then
        stop, instead of a pass over the whole file. When a member named in ``before`` (a big one)
        comes first, or the file is unusual in any way, this is the full pass of :meth:`items`."""
        import ijson
        from ijson.common import ObjectBuilder

        fh = self._open()
        src = _Sanitizer(fh, careful=self.careful)
        given = 0  # items handed out: a fallback full pass skips them
        builder = None
        try:
            # small reads: the C parser turns a whole read into events at once (1 MiB of numbers would
            # be ~100K event tuples alive together)
            for prefix, event, value in ijson.parse(_Chunked(src, 1 << 16), use_float=True, buf_size=1 << 16):
                if prefix == "" and event == "map_key" and value in before and given == 0:
                    break  # a big member first: the full pass below
                if prefix == key and event == "end_array":
                    return
                if prefix == f"{key}.item" and event in ("start_map", "start_array") and builder is None:
                    builder = ObjectBuilder()
                if builder is not None:
                    builder.event(event, value)
                    if prefix == f"{key}.item" and event in ("end_map", "end_array"):
                        obj, builder = builder.value, None
                        given += 1
                        yield restore(obj) if src.replaced else obj
                elif prefix == f"{key}.item":  # a scalar item
                    given += 1
                    yield restore(value) if src.replaced else value
        except ijson.JSONError:
            pass  # the full pass reports it properly
        finally:
            fh.close()
        for i, obj in enumerate(self.items(f"{key}.item")):
            if i >= given:
                yield obj

    def tail_items(self, key: str, max_bytes: int = 1 << 18) -> list | None:
        """The items of the top-level array ``key`` when it is the file's *last* member and fits in its
        last ``max_bytes`` (COCO puts the small ``categories`` last): read from the tail, without a pass
        over the file. None when that does not hold; the caller then makes the full pass."""
        loc = Location(self.path)
        try:
            size = loc.facts()[0] if loc.facts() else None
            if not size:
                return None
            with loc.fs.open_input_file(loc.path) as fh:
                start = max(0, size - max_bytes)
                fh.seek(start)
                tail = fh.read()
        except (OSError, TypeError):
            return None
        at = tail.rfind(f'"{key}"'.encode())
        if at < 0:
            return None
        rest = tail[at + len(key) + 2:].decode("utf-8", errors="replace").lstrip()
        del tail
        if not rest.startswith(":"):
            return None
        rest = rest[1:].lstrip()
        if not rest.startswith("["):
            return None
        try:
            value, end = json.JSONDecoder().raw_decode(rest)
        except ValueError:
            return None
        if rest[end:].strip() != "}":  # not the last member of the top-level object: full pass
            return None
        return value if isinstance(value, list) else None

    def kind(self, key: str) -> str:
        """What the top-level member ``key`` holds: ``list``, ``object``, ``string``, ``number``,
        ``boolean``, ``null``; ``missing`` when the object has no such member; ``not an object`` when the
        top level is not an object. Reads only up to that member (used when a pass found no item)."""
        from ijson.common import JSONError

        ijson = ijson_backend()

        fh = self._open()
        src = _Sanitizer(fh, careful=True)
        names = {"start_array": "list", "start_map": "object"}
        try:
            for prefix, event, _ in ijson.parse(src, buf_size=CHUNK):
                if prefix == "":
                    if event in ("start_map", "map_key", "end_map"):
                        continue
                    return "not an object"
                if prefix == key:
                    return names.get(event, event)
            return "missing"
        except JSONError as e:
            raise ConfigError(f"{self.where}: {self.path} is not valid JSON (near byte {src.offset}: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        finally:
            fh.close()

    def require_list(self, key: str, *, optional: bool = False) -> bool:
        """After a pass over ``key.item`` found nothing: a ConfigError unless ``key`` is an empty list
        (or missing and ``optional``). Returns True when the member is present."""
        kind = self.kind(key)
        if kind == "list":
            return True
        if kind == "missing" and optional:
            return False
        if kind == "not an object":
            raise ConfigError(f"{self.where}: {self.path} is not a COCO-style JSON object (field {key!r})")
        if kind == "missing":
            raise ConfigError(f"{self.where}: {self.path} has no {key!r} field")
        raise ConfigError(f"{self.where}: {self.path}: field {key!r} holds {'an' if kind[0] in 'aeiou' else 'a'} "
                          f"{kind}, expected a list")


# -- ids and the image index ---------------------------------------------------------------------

def valid_id(v: Any) -> bool:
    """A usable COCO id: an integer (not a bool) or a non-empty string."""
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v != "")


def sort_key(v: Any) -> tuple:
    """Orders ids of mixed types (ints first, then strings) deterministically."""
    return (0, v, "") if isinstance(v, int) and not isinstance(v, bool) else (1, 0, str(v))


def size_value(v: Any) -> tuple[float | None, str | None]:
    """A width/height from an image entry: (value, None), (None, None) when absent, or
    (None, problem class) when present but unusable."""
    from ._base import BAD_FIELD, NOT_FINITE

    if v is None:
        return None, None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None, BAD_FIELD
    if not math.isfinite(v):
        return None, NOT_FINITE
    if v <= 0:
        return None, BAD_FIELD
    return v, None


class ImageIndex:
    """The ``images`` array of a COCO-style file as a compact, columnar index: image id -> position, and
    per position the file name (a list of str), width and height (one float array) and one optional
    number a reader asks for (``extra_key``, e.g. CrowdPose's ``crowdIndex``; a float array). No dict or
    tuple per image: about 150 bytes an image. Entries without a usable id are counted (``bad``) and
    cannot be referred to; a bad ``file_name`` or size is kept as None plus a problem (a sparse dict)
    that the record reports."""

    __slots__ = ("pos", "names", "sizes", "extras", "problems", "bad", "duplicates", "extra_key")

    def __init__(self, extra_key: str | None = None):
        self.pos: dict[Any, int] = {}
        self.names: list[str | None] = []
        self.sizes = array("d")  # width, height per image; NaN: absent
        self.extras = array("d") if extra_key else None
        self.problems: dict[int, tuple[str, str]] = {}
        self.bad = 0
        self.duplicates = 0
        self.extra_key = extra_key

    def add(self, img: Any) -> None:
        if not isinstance(img, dict) or not valid_id(img.get("id")):
            self.bad += 1
            return
        iid = img["id"]
        if iid in self.pos:
            self.duplicates += 1  # the first entry wins
            return
        i = len(self.names)
        name = img.get("file_name")
        w, wp = size_value(img.get("width"))
        h, hp = size_value(img.get("height"))
        if wp or hp:
            self.problems[i] = ("width", wp) if wp else ("height", hp)
        self.pos[iid] = i
        self.names.append(name if isinstance(name, str) else None)
        self.sizes.extend((math.nan if w is None else w, math.nan if h is None else h))
        if self.extras is not None:
            extra = img.get(self.extra_key)
            self.extras.append(float(extra) if finite(extra) else math.nan)

    def get(self, image_id: Any) -> tuple | None:
        """``(file_name, width, height, extra, problem)`` (None for what is absent) or None for an
        unknown id."""
        i = self.pos.get(image_id) if valid_id(image_id) else None
        if i is None:
            return None
        w, h = self.sizes[2 * i], self.sizes[2 * i + 1]
        extra = self.extras[i] if self.extras is not None else math.nan
        return (self.names[i], None if math.isnan(w) else w, None if math.isnan(h) else h,
                None if math.isnan(extra) else extra, self.problems.get(i))

    def __len__(self) -> int:
        return len(self.names)

    def load(self, stream: JsonStream, prefix: str = "images") -> "ImageIndex":
        n = 0
        for img in stream.head_items(prefix):
            n += 1
            self.add(img)
        if n == 0:
            stream.require_list(prefix)
        return self


class Boxes:
    """Boxes grouped by image position, compact: one float array of all boxes and a linked list
    through them (an int array), no object per image or per box. ``add`` in file order; ``get``
    returns an image's boxes in that order."""

    __slots__ = ("head", "boxes", "next")

    def __init__(self, n_images: int):
        self.head = array("i", [-1]) * n_images
        self.boxes = array("d")
        self.next = array("i")

    def add(self, pos: int, box: list[float]) -> None:
        self.next.append(self.head[pos])
        self.head[pos] = len(self.next) - 1
        self.boxes.extend(box)

    def get(self, pos: int) -> list[list[float]]:
        out, k = [], self.head[pos]
        while k >= 0:
            out.append(self.boxes[4 * k: 4 * k + 4].tolist())
            k = self.next[k]
        out.reverse()
        return out


class ImageFolder:
    """``image_path(root, name)`` for many names under one folder: for a local folder and a plain file
    name (no folder part) the folder is resolved once, not once per image (a realpath per record costs
    more than the rest of a record); anything else goes through :func:`~._base.image_path`."""

    def __init__(self, root: str):
        self.root = root
        self.base = None if is_uri(root) else str(Path(root).resolve())

    def path(self, name: Any) -> str | None:
        if (self.base is not None and isinstance(name, str) and name not in ("", ".", "..")
                and "/" not in name and "\\" not in name and "\x00" not in name):
            return f"{self.base}/{name}"
        return image_path(self.root, name)


def annotation_inputs(src: Any, *files: str) -> list[str]:
    """``input_files()`` of an annotation-file reader: the annotation files and the exclusion list (both
    decide the records). Not the image folder: the records do not depend on the images, and listing and
    stat-ing 118k images (118k requests on an object store) on every plan costs more than the split."""
    out = [f for f in files if f]
    if src.config.exclude_image_ids:
        out.append(src.config.exclude_image_ids)
    return out


DUPLICATE_ID = "duplicate record id"  # the class readers/_edit.py gives repeats too


class Repeats:
    """Finds repeated record ids in a stream read twice, in 8 bytes per id: the first pass
    :meth:`note`\ s a hash of every id, :meth:`freeze` keeps the hashes seen more than once, and the
    second pass asks :meth:`repeat` (True from the second occurrence of an id on; exact strings are
    compared for the few ids whose hash repeats). A repeated id would give two rows one key."""

    def __init__(self):
        self.hashes: array | None = array("q")
        self.dups: set[int] = set()
        self.seen: set[str] = set()

    def note(self, rid: str) -> None:
        self.hashes.append(hash(rid))

    def freeze(self) -> "Repeats":
        import numpy as np

        h = np.sort(np.frombuffer(self.hashes, dtype=np.int64)) if len(self.hashes) else np.zeros(0, np.int64)
        self.dups = set(h[1:][h[1:] == h[:-1]].tolist())
        self.hashes = None
        return self

    def repeat(self, rid: str) -> bool:
        if hash(rid) not in self.dups:
            return False
        if rid in self.seen:
            return True
        self.seen.add(rid)
        return False


def local_or_uri(path: str) -> str:
    """An annotation file as rows name it: absolute local path, or the URI."""
    return path if is_uri(path) else str(Path(path).resolve())


# -- COCO-Stuff labels ---------------------------------------------------------------------------

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


# -- segmentations -------------------------------------------------------------------------------

def segment_payload(seg: Any) -> tuple[dict | None, str | None, str | None]:
    """A COCO ``segmentation`` as the renderers' segment payload: ``({"rle": ...} | {"polygons": ...},
    None, None)``, or ``(None, reason class, problem)`` when it is malformed (polygons: lists of at
    least 6 finite numbers, even count; RLE: ``size`` [h, w] of positive ints and ``counts`` a string
    or a list of non-negative ints)."""
    from ._base import BAD_FIELD, NOT_FINITE

    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            return None, BAD_FIELD, "RLE size is not [height, width]"
        if isinstance(counts, str):
            return {"rle": {"size": size, "counts": counts}}, None, None
        if isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            return {"rle": {"size": size, "counts": counts}}, None, None
        return None, BAD_FIELD, "RLE counts is neither a string nor a list of counts"
    if isinstance(seg, list):
        if not seg:
            return None, BAD_FIELD, "no polygon"
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                return None, BAD_FIELD, "polygon is not a list of at least 3 (x, y) points"
            try:
                total = math.fsum(poly)
            except (TypeError, ValueError):
                total = math.nan
            if not math.isfinite(total):  # slow path only for the bad ones
                for v in poly:
                    if isinstance(v, bool) or not isinstance(v, (int, float)):
                        return None, BAD_FIELD, "polygon holds a value that is not a number"
                    if not math.isfinite(v):
                        return None, NOT_FINITE, "polygon holds NaN or Infinity"
        return {"polygons": seg}, None, None
    return None, BAD_FIELD, "no segmentation" if seg is None else "segmentation is neither polygons nor RLE"
