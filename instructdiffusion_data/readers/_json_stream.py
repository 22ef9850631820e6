"""A JSON annotation file read as a stream (:class:`JsonStream`), for the COCO-family readers and others.

``ijson`` on its C backend (yajl2_c), so a 238 MB ``person_keypoints_train2017.json`` is never held whole:
each pass yields one item of one array at a time. Python's ``json`` writes bare ``NaN`` / ``Infinity``
tokens, and yajl also refuses numbers that overflow a double or an int64; the stream rewrites those tokens
(outside strings) to sentinels that come back as ``float('nan')`` / ``inf`` in the items, so a reader
rejects the record that holds them (``NOT_FINITE``) instead of the whole file failing to parse. A file
that is not JSON, or whose top level is not what the format says (``"annotations": {}``, ``images``
missing), is one :class:`~..errors.ConfigError` line naming the file and the field.

Speed: a pass that needs only a few members of each item (:meth:`JsonStream.fields`) reads the structure
instead of parsing (:mod:`._json_scan`, about 3x faster), and parses where that scan cannot read the file
exactly.
"""

from __future__ import annotations

import json
import logging
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError
from ..storage import Location, is_uri, resolve

log = logging.getLogger(__name__)

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

    def fields(self, key: str, fields: tuple[str, ...]) -> Iterator[Any]:
        """For each item of the top-level array ``key``: a dict of just the members named in ``fields``
        (an item that is not an object as it is). The same as projecting :meth:`items`, several times
        faster on big files: :func:`~._json_scan.scan_fields` reads the structure without parsing the rest;
        where it cannot, the parsing pass takes over after the items already given."""
        from ._json_scan import ScanUnsupported, scan_fields

        done = 0
        if not self.careful:
            fh = self._open()
            try:
                for obj in scan_fields(fh, key, fields):
                    done += 1
                    yield obj
                return
            except ScanUnsupported as e:
                log.debug("%s: %s: parsing %s after %d items (%s)", self.where, self.path, key, done, e)
            finally:
                fh.close()
        for i, obj in enumerate(self.items(f"{key}.item")):
            if i >= done:
                yield {f: obj[f] for f in fields if f in obj} if isinstance(obj, dict) else obj

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
