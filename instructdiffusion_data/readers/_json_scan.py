"""A few fields of every item of one top-level array, read without parsing the rest (:func:`scan_fields`).

The COCO keypoint readers make one pass over ``annotations`` only for each person's image id, box, crowd
flag and ids (the boxes of every person in an image, and repeated ids), before the pass that builds the
records. Parsing every polygon and keypoint number for that costs as much as the real pass; this module
reads the structure instead, a window of bytes at a time, with numpy: the positions of quotes and
brackets give what is inside a string and the nesting depth of every bracket; the wanted member names are
found at the item's depth, and only their values are decoded (one ``json.loads`` per window, so a value
reads exactly as a parser reads it, NaN included).

It is exact for what it accepts and refuses the rest: a string with an escape (``\\``), a wanted value
with a number the streaming parser reads differently (over 18 digits, a 3-digit exponent), an item that is
not an object, an item larger than 64 MiB, or a structure that does not add up raises
:class:`ScanUnsupported`, and the caller parses instead. A file that is not valid JSON is not diagnosed
here: the parsing pass that follows reports it.
"""

from __future__ import annotations

import json
from typing import BinaryIO, Iterator

import numpy as np

CHUNK = 1 << 20  # bytes read at a time: the window and its index arrays stay ~10 MB
_MAX_CARRY = 64 << 20
_WS = b" \t\r\n"
_WS_CODES = np.frombuffer(_WS, np.uint8)
# numbers the streaming parser rewrites (see _json_stream): bytes mapped to digit / e / sign / other and
# searched for 19 digits or a 3-digit exponent
_CLASSES = bytes(48 if 48 <= b <= 57 else 101 if b in b"eE" else 43 if b in b"+-" else 32 for b in range(256))
_RISKY = (b"0" * 19, b"e000", b"e+000")


class ScanUnsupported(Exception):
    """The file holds something this scan does not read exactly: parse it."""


class _Needle:
    """A quoted member name, compared against the bytes after many quotes at once: first the byte after
    the quote (shared by all names, computed once per window), then the rest on the few candidates."""

    def __init__(self, name: str):
        self.name = name
        self.raw = f'"{name}"'.encode()
        self.codes = np.frombuffer(self.raw, np.uint8)

    def at(self, a: np.ndarray, q: np.ndarray, after: np.ndarray, cut: int) -> np.ndarray:
        """The quotes ``q`` (with ``after`` = the byte after each) that start this name, before ``cut``."""
        q = q[(after == self.codes[1]) & (q + len(self.raw) <= cut)]
        hit = np.ones(len(q), bool)
        for i in range(2, len(self.raw)):
            hit &= a[q + i] == self.codes[i]
        return q[hit]


def scan_fields(fh: BinaryIO, key: str, fields: tuple[str, ...], chunk: int = CHUNK) -> Iterator[dict]:
    """For each item of the array in the top-level member ``key`` (every such member, in file order, as
    a streaming parser's ``key.item`` gives them): a dict of the members named in ``fields`` that the
    item has (the last one wins when a name repeats, as in a parsed object)."""
    scan = _Scan(key, fields)
    carry, eof = b"", False
    while not eof:
        data = fh.read(chunk)
        eof = not data
        buf = carry + data
        if not buf:
            if scan.depth != 0:
                raise ScanUnsupported("unbalanced at the end of the file")
            break
        if b"\\" in buf:
            raise ScanUnsupported("a string with an escape")
        if scan.depth == 0 and not carry and buf.lstrip(_WS)[:1] != b"{":
            raise ScanUnsupported("the top level is not an object")
        cut, items = scan.window(buf, eof)
        if cut < 0:  # no item ends in this window: read on
            if len(buf) > _MAX_CARRY:
                raise ScanUnsupported("an item larger than the window")
            carry = buf
            continue
        yield from items
        carry = buf[cut:]


class _Scan:
    def __init__(self, key: str, fields: tuple[str, ...]):
        self.target = _Needle(key)
        self.names = [_Needle(f) for f in fields]
        self.depth = 0  # nesting depth at the start of the next window
        self.region = False  # the next window starts inside a target array

    def window(self, buf: bytes, eof: bool) -> tuple[int, list[dict]]:
        """(where the next window starts, the items of this one); (-1, []) when no item ends here."""
        a = np.frombuffer(buf, np.uint8)
        qpos = np.flatnonzero(a == 0x22)
        low = a | 0x20  # '[' -> '{', ']' -> '}'
        bpos = np.flatnonzero((low == 0x7B) | (low == 0x7D))
        bpos = bpos[(np.searchsorted(qpos, bpos) & 1) == 0]  # outside strings
        d = np.where(low[bpos] == 0x7B, 1, -1)
        dep = np.cumsum(d) + self.depth  # depth after each bracket
        if eof:
            if len(qpos) & 1 or (dep[-1] if len(dep) else self.depth) != 0:
                raise ScanUnsupported("unbalanced at the end of the file")
            cut, n = len(buf), len(bpos)
        else:
            ends = np.flatnonzero((d < 0) & (dep <= 2))
            if not len(ends):
                return -1, []
            n = int(ends[-1]) + 1
            cut = int(bpos[n - 1]) + 1
        if n and (dep[:n] < 0).any():
            raise ScanUnsupported("unbalanced brackets")
        bp, bd, bdep = bpos[:n], d[:n], dep[:n]
        qpos = qpos[qpos < cut]
        after = a[np.minimum(qpos + 1, len(a) - 1)]
        events = self._regions(buf, a, after, cut, qpos, bp, bd, bdep)
        items = self._items(buf, a, after, cut, qpos, bp, bd, bdep, events)
        if events:
            self.region = events[-1][1]
        if n:
            self.depth = int(bdep[-1])
        return cut, items

    def _depth_at(self, pos: np.ndarray, bp: np.ndarray, bdep: np.ndarray) -> np.ndarray:
        """Nesting depth just before each position."""
        k = np.searchsorted(bp, pos)
        return np.where(k > 0, bdep[np.maximum(k - 1, 0)], self.depth) if len(bp) else np.full(len(pos), self.depth)

    def _regions(self, buf, a, after, cut, qpos, bp, bd, bdep) -> list[tuple[int, bool]]:
        """Where target arrays open (True) and close (False) in this window, in order."""
        opens = []
        hits = self.target.at(a, qpos, after, cut)
        for p in hits[self._depth_at(hits, bp, bdep) == 1].tolist():
            v = _after_colon(buf, p + len(self.target.raw), cut)
            if 0 <= v < cut and buf[v] == 0x5B:  # an array (anything else gives no item, as when parsed)
                opens.append(v)
        closes = bp[(bd < 0) & (bdep == 1)]  # a close back to depth 1 ends the array open at the time
        events: list[tuple[int, bool]] = []
        starts = ([-1] if self.region else []) + opens
        for s in starts:
            k = int(np.searchsorted(closes, s, side="right"))
            if s >= 0:
                events.append((s, True))
            if k < len(closes):
                events.append((int(closes[k]), False))
        events.sort()
        return events

    def _inside(self, pos: np.ndarray, events: list[tuple[int, bool]]) -> np.ndarray:
        state = np.full(len(pos), self.region)
        for at, is_open in events:
            state[pos > at] = is_open
        return state

    def _items(self, buf, a, after, cut, qpos, bp, bd, bdep, events) -> list[dict]:
        io = bp[(bd > 0) & (bdep == 3)]  # items open (depth 2 -> 3) ...
        ic = bp[(bd < 0) & (bdep == 2)]  # ... and close, inside a target array
        io, ic = io[self._inside(io, events)], ic[self._inside(ic, events)]
        self._check_layout(buf, a, cut, io, ic, events)
        if not len(io):
            return []
        if (a[io] != 0x7B).any():
            raise ScanUnsupported("an item that is not an object")
        items: list[dict] = [{} for _ in range(len(io))]
        commas = np.flatnonzero(a[:cut] == 0x2C)
        closes = bp[bd < 0]
        found = []  # (name positions, item, value start, value end, field index)
        for f, needle in enumerate(self.names):
            pos = needle.at(a, qpos, after, cut)
            if not len(pos):
                continue
            pos = pos[self._depth_at(pos, bp, bdep) == 3]
            item = np.searchsorted(io, pos, side="right") - 1
            ok = (item >= 0) & (pos < ic[np.maximum(item, 0)])
            pos, item = pos[ok], item[ok]
            v = _value_starts(buf, a, pos + len(needle.raw), cut)
            keep = v >= 0  # no colon after it: a string value that reads like the name
            pos, item, v = pos[keep], item[keep], v[keep]
            if len(pos):
                e = _value_ends(a, v, cut, qpos, bp, bd, bdep, commas, closes)
                found.append((pos, item, v, e, np.full(len(pos), f)))
        if not found:
            return items
        pos, item, v, e, f = (np.concatenate(x) for x in zip(*found))
        order = np.argsort(pos, kind="stable")
        item, v, e, f = item[order], v[order], e[order], f[order]
        text = _join(buf, v, e)
        if any(t in text.translate(_CLASSES) for t in _RISKY):
            raise ScanUnsupported("a number read differently by the parser")
        try:
            values = json.loads(text)
        except ValueError:
            raise ScanUnsupported("a value that does not parse") from None
        names = [n.name for n in self.names]
        for k, fi, value in zip(item.tolist(), f.tolist(), values):
            items[k][names[fi]] = value
        return items

    def _check_layout(self, buf, a, cut, io, ic, events) -> None:
        """Inside a target array, only the objects found, separated by commas: no scalar or array item
        slipped between them."""
        if len(io) != len(ic) or (len(io) and ((ic < io).any() or (io[1:] < ic[:-1]).any())):
            raise ScanUnsupported("an item spans the window")
        # the spans of the window inside target arrays
        spans, start = [], (0 if self.region else None)
        for at, is_open in events:
            if is_open:
                start = at + 1
            elif start is not None:
                spans.append((start, at))
                start = None
        if start is not None:
            spans.append((start, cut))
        o, c = io.tolist(), ic.tolist()
        k = 0
        for s, t in spans:
            prev = s
            first = True
            while k < len(o) and o[k] < t:
                gap = buf[prev:o[k]].strip(_WS)
                # the first item of an array opened here follows '['; one continued from the last window
                # follows the comma after the previous window's last item
                want = b"" if first and s > 0 else b","
                if gap != want:
                    raise ScanUnsupported("something between two items")
                prev, first = c[k] + 1, False
                k += 1
            if buf[prev:t].strip(_WS):
                raise ScanUnsupported("something after the last item")


def _after_colon(buf: bytes, i: int, end: int) -> int:
    """Position of the value after a member name ending at ``i`` (the colon skipped); -1 when none."""
    while i < end and buf[i] in _WS:
        i += 1
    if i >= end or buf[i] != 0x3A:
        return -1
    i += 1
    while i < end and buf[i] in _WS:
        i += 1
    return i


def _value_starts(buf: bytes, a: np.ndarray, after: np.ndarray, cut: int) -> np.ndarray:
    """Where each value starts, given where its member name ends (-1 where no colon follows)."""
    v = np.full(len(after), -1, np.int64)
    at = lambda x: a[np.minimum(x, cut - 1)]  # noqa: E731
    colon = (after < cut) & (at(after) == 0x3A)
    plain = colon & (after + 1 < cut) & ~np.isin(at(after + 1), _WS_CODES)
    v[plain] = after[plain] + 1  # "name":value
    spaced = colon & (after + 2 < cut) & (at(after + 1) == 0x20) & ~np.isin(at(after + 2), _WS_CODES)
    v[spaced] = after[spaced] + 2  # "name": value (json.dumps)
    for k in np.flatnonzero(v < 0).tolist():  # anything else, byte by byte
        v[k] = _after_colon(buf, int(after[k]), cut)
    return v


def _next(sorted_pos: np.ndarray, v: np.ndarray, big: int) -> np.ndarray:
    k = np.searchsorted(sorted_pos, v)
    return np.where(k < len(sorted_pos), sorted_pos[np.minimum(k, len(sorted_pos) - 1)], big) if len(sorted_pos) \
        else np.full(len(v), big)


def _value_ends(a, v, cut, qpos, bp, bd, bdep, commas, closes) -> np.ndarray:
    """Where each value ends: a scalar at the next comma or closing bracket (blanks before it are harmless
    to the parser), a string at its closing quote, an array or object at the bracket that closes it."""
    first = a[np.minimum(v, cut - 1)]
    end = np.minimum(_next(commas, v, cut), _next(closes, v, cut))
    s = first == 0x22
    if s.any():
        q = np.searchsorted(qpos, v[s], side="right")
        if (q >= len(qpos)).any():
            raise ScanUnsupported("an unclosed string")
        end[s] = qpos[q] + 1
    b = (first == 0x5B) | (first == 0x7B)
    if b.any():
        i = np.searchsorted(bp, v[b])  # the value's own bracket
        j = np.minimum(i + 1, len(bp) - 1)
        flat = (i + 1 < len(bp)) & (bd[j] < 0) & (bdep[j] == 3)  # closed by the next bracket
        e = np.where(flat, bp[j] + 1, -1)
        for m in np.flatnonzero(~flat).tolist():  # nested: on to the bracket back at depth 3
            later = np.flatnonzero(bdep[int(i[m]) + 1:] == 3)
            if not len(later):
                raise ScanUnsupported("an unclosed value")
            e[m] = bp[int(i[m]) + 1 + later[0]] + 1
        end[b] = e
    if (end <= v).any():
        raise ScanUnsupported("an empty value")
    return end


def _join(buf: bytes, v: np.ndarray, e: np.ndarray) -> bytes:
    """``[`` + the bytes ``buf[v:e]`` of every value joined by commas + ``]``, gathered at once."""
    ab = np.frombuffer(buf + b",", np.uint8)
    length = e - v + 1  # the value and a comma after it
    start = np.cumsum(length) - length
    idx = np.arange(int(length.sum())) - np.repeat(start - v, length)
    idx[start + length - 1] = len(buf)  # the comma
    return b"[" + ab[idx].tobytes()[:-1] + b"]"
