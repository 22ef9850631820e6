"""Generations of an output: what ``idd filter`` rewrites, switched by one small pointer (docs/reliability.md).

An output ``<out>/<name>/<version>`` written by ``idd run`` is *generation 0*: its own ``train/``,
``rejected/`` and ``manifest.json``. ``idd filter`` in place never touches them; it writes *generation N*
beside them and then switches one pointer::

    <root>/manifest.json, train/, rejected/          generation 0 (what idd run wrote)
    <root>/generations/0001/{train,rejected}/, manifest.json, filter_report.json, .idd-generation.json
    <root>/CURRENT.json                              {"generation": 1, "path": "generations/0001",
                                                      "committed": [0, 1], ...}

The pointer is the only commit point: written under a temporary name and renamed on a local disk, one
PUT on an object store (an object is visible only when its upload is complete). No pointer means
generation 0. A generation folder whose number is not in the pointer's ``committed`` list was left by a
filter killed before its switch: every reader ignores it, and the next :func:`new_generation` removes
the files the engine wrote there (shard files, manifest, report, the ``.idd-generation.json`` marker),
never anything else. Committed generations are kept (a mixture written earlier names the one it read).

Every reader of an output resolves the current generation with :func:`current`. Writers hold
:func:`lock` (an advisory lock on ``generations/.lock`` on a local disk, released by the kernel when
the process dies) so that a second ``idd filter`` never takes a running one's folder for a leftover;
object stores have no such lock: run one filter per output at a time there.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from . import faults
from .errors import UserError
from .storage import Location

log = logging.getLogger(__name__)

POINTER = "CURRENT.json"
GENERATIONS = "generations"
MARKER = ".idd-generation.json"
MANIFEST = "manifest.json"  # the writer's name (writer.MANIFEST); not imported to keep this module light
POINTER_FORMAT = "instructdiffusion-data/generation/1"

_GEN_NAME = re.compile(r"^\d{4,}$")
# what the engine writes inside a generation folder (and nothing else is ever deleted there)
_TMP = r"(?:\.tmp(?:-[0-9a-z]+)?)?"  # the writer's temporary names: ".tmp", ".tmp-<attempt>"
_ENGINE_FILE = re.compile(
    rf"^(?:\.idd-generation\.json|manifest\.json{_TMP}|filter_report\.json{_TMP}|"
    rf"filter_report/[A-Za-z0-9_.-]+\.png|(?:train|rejected)/\d{{6}}\.(?:tar|parquet|stats\.json){_TMP}|"
    rf"(?:(?:train|rejected)/)?\.(?:manifest\.json|\d{{6}}\.stats\.json)\.tmp-\d+)$")  # write_atomic's


def as_location(root: str | os.PathLike | Location) -> Location:
    return root if isinstance(root, Location) else Location(root)


def gen_name(n: int) -> str:
    return f"{n:04d}"


def gen_rel(n: int) -> str:
    """The generation's folder relative to the output root ("" for generation 0)."""
    return "" if n == 0 else f"{GENERATIONS}/{gen_name(n)}"


def local_path(loc: Location) -> Path | str:
    """A local Path for a local location, the URI string otherwise."""
    return Path(loc.path) if loc.local else str(loc)


@dataclass
class Generation:
    """One generation of an output: its number, its folder and (when read) its manifest."""

    root: Location
    number: int
    loc: Location
    manifest: dict | None = None
    committed: list[int] = field(default_factory=lambda: [0])

    @property
    def rel(self) -> str:
        return gen_rel(self.number)

    @property
    def path(self) -> Path | str:
        """The generation folder: a Path on a local disk, a URI string on an object store."""
        return local_path(self.loc)

    @property
    def manifest_loc(self) -> Location:
        return self.loc / MANIFEST

    def file(self, rel: str) -> Location:
        """A file of the generation by its manifest path (``train/000000.tar``)."""
        loc = self.loc
        for part in rel.split("/"):
            loc = loc / part
        return loc

    def describe(self) -> dict:
        return {"generation": self.number, "path": self.rel or "."}


def _gen_loc(root: Location, n: int) -> Location:
    return root if n == 0 else root / GENERATIONS / gen_name(n)


def read_pointer(root: str | os.PathLike | Location) -> dict | None:
    """The pointer of an output (None: no pointer, generation 0). UserError naming the file and field
    when it is unreadable."""
    root = as_location(root)
    ptr = root / POINTER
    try:
        if not ptr.is_file():
            return None
        doc = json.loads(ptr.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{ptr}: unreadable generation pointer ({e})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{ptr}: expected a JSON object")
    n = doc.get("generation")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise UserError(f"{ptr}: field generation: expected a whole number >= 0, got {n!r}")
    committed = doc.get("committed", [0, n])
    if (not isinstance(committed, list)
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in committed)):
        raise UserError(f"{ptr}: field committed: expected a list of generation numbers, got {committed!r}")
    doc["committed"] = sorted(set(committed) | {0, n})
    return doc


def read_manifest(loc: Location) -> dict:
    """A manifest.json as a dict; UserError naming the file when it is missing or not JSON."""
    try:
        doc = json.loads(loc.read_text())
    except FileNotFoundError:
        raise UserError(f"{loc}: missing") from None
    except OSError as e:
        raise UserError(f"{loc}: cannot read ({e})") from None
    except ValueError as e:
        raise UserError(f"{loc}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{loc}: expected a JSON object")
    return doc


def is_output(path: str | os.PathLike | Location) -> bool:
    """True when ``path`` is an output root (holds manifest.json or a generation pointer)."""
    loc = as_location(path)
    try:
        return (loc / MANIFEST).is_file() or (loc / POINTER).is_file()
    except OSError:
        return False


def current(root: str | os.PathLike | Location, *, load_manifest: bool = True) -> Generation:
    """The current generation of the output at ``root`` (the pointer's, or generation 0 without one)."""
    root = as_location(root)
    ptr = read_pointer(root)
    n = ptr["generation"] if ptr else 0
    gen = Generation(root, n, _gen_loc(root, n), committed=ptr["committed"] if ptr else [0])
    if load_manifest:
        m = gen.manifest_loc
        if not m.is_file():
            if n == 0:
                raise UserError(f"{root}: not a shard output (no {MANIFEST})")
            raise UserError(f"{root / POINTER}: names generation {n}, but {m} is missing")
        gen.manifest = read_manifest(m)
    return gen


def generation(root: str | os.PathLike | Location, n: int, *, load_manifest: bool = True) -> Generation:
    """Generation ``n`` of an output (committed or not: callers decide)."""
    root = as_location(root)
    gen = Generation(root, n, _gen_loc(root, n))
    if load_manifest:
        gen.manifest = read_manifest(gen.manifest_loc)
    return gen


def _subdirs(loc: Location) -> list[Location]:
    sel = pafs.FileSelector(loc.path, allow_not_found=True, recursive=False)
    return [loc / posixpath.basename(i.path) for i in loc.fs.get_file_info(sel)
            if i.type == pafs.FileType.Directory]


def generation_dirs(root: str | os.PathLike | Location) -> dict[int, Location]:
    """``{number: folder}`` of every ``generations/NNNN`` folder (committed or not)."""
    root = as_location(root)
    out = {}
    for d in _subdirs(root / GENERATIONS):
        if _GEN_NAME.match(d.name):
            out[int(d.name)] = d
    return dict(sorted(out.items()))


def _files(loc: Location) -> list[str]:
    """Every file below ``loc``, as paths relative to it (posix)."""
    sel = pafs.FileSelector(loc.path, allow_not_found=True, recursive=True)
    base = loc.path.rstrip("/") + "/"
    return sorted(i.path[len(base):] for i in loc.fs.get_file_info(sel)
                  if i.type == pafs.FileType.File and i.path.startswith(base))


def clear_engine_files(loc: Location) -> list[str]:
    """Delete the files the engine writes into a generation folder (and then empty folders); return
    what is left that the engine did not write (nothing is deleted there)."""
    foreign = []
    for rel in _files(loc):
        if _ENGINE_FILE.match(rel):
            target = loc
            for part in rel.split("/"):
                target = target / part
            try:
                target.delete_file()
            except FileNotFoundError:
                pass
        else:
            foreign.append(rel)
    if not foreign and loc.local:
        for sub in ("train", "rejected", "filter_report", ""):
            p = Path(loc.path) / sub if sub else Path(loc.path)
            try:
                p.rmdir()
            except (FileNotFoundError, OSError):
                pass
    return foreign


def garbage(root: str | os.PathLike | Location) -> dict[int, Location]:
    """Generation folders not committed by the pointer: left by a filter killed before its switch."""
    root = as_location(root)
    ptr = read_pointer(root)
    committed = set(ptr["committed"]) if ptr else {0}
    return {n: d for n, d in generation_dirs(root).items() if n not in committed}


def collect_garbage(root: str | os.PathLike | Location) -> list[int]:
    """Remove what the engine wrote in uncommitted generation folders; return the numbers still taken
    (folders holding files the engine did not write: left alone, with a warning)."""
    kept = []
    for n, d in garbage(root).items():
        log.info("%s: removing incomplete generation %d (left by a filter that did not finish)", d, n)
        foreign = clear_engine_files(d)
        if foreign:
            log.warning("%s: not a generation this engine wrote (%s ...); left alone", d, foreign[0])
            kept.append(n)
    return kept


@contextmanager
def lock(root: str | os.PathLike | Location):
    """Hold the output's generation lock (local disks; a no-op on object stores). UserError when another
    process holds it."""
    root = as_location(root)
    if not root.local:
        yield
        return
    import fcntl

    d = Path(root.path) / GENERATIONS
    d.mkdir(parents=True, exist_ok=True)
    fh = open(d / ".lock", "a+")  # noqa: SIM115 - closed below
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{root}: another idd filter is writing a generation of this output") from None
        yield
    finally:
        fh.close()


def new_generation(root: str | os.PathLike | Location, *, note: dict | None = None) -> Generation:
    """Prepare the next generation folder of ``root`` (after removing uncommitted leftovers) and write
    its marker. Nothing reads it until :func:`commit`."""
    root = as_location(root)
    ptr = read_pointer(root)
    committed = set(ptr["committed"]) if ptr else {0}
    taken = set(collect_garbage(root))
    taken |= set(generation_dirs(root)) & committed
    n = max(committed | taken) + 1
    loc = _gen_loc(root, n)
    loc.mkdir()
    marker = {"generation": n, "from": ptr["generation"] if ptr else 0,
              "created": datetime.now(UTC).isoformat(timespec="seconds"), **(note or {})}
    (loc / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True))
    return Generation(root, n, loc, committed=sorted(committed))


def write_atomic(loc: Location, text: str, tmp_dir: Location | None = None) -> None:
    """Write a small file whole: temporary name (beside it, or in ``tmp_dir`` on the same disk), fsync and
    rename on a local disk; one PUT on an object store."""
    if loc.local:
        path = Path(loc.path)
        tmp = (Path(tmp_dir.path) if tmp_dir is not None else path.parent) / f".{path.name}.tmp-{os.getpid()}"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        try:
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
    else:
        loc.write_text(text)


def commit(root: str | os.PathLike | Location, gen: Generation, *, point: str = "filter.pointer",
           extra: dict[str, Any] | None = None) -> dict:
    """Make ``gen`` the current generation: one pointer write (the commit point ``point``)."""
    root = as_location(root)
    if not gen.manifest_loc.is_file():
        raise RuntimeError(f"{gen.loc}: generation has no {MANIFEST}; refusing to point at it")
    ptr = read_pointer(root)
    committed = sorted((set(ptr["committed"]) if ptr else {0}) | {gen.number})
    doc = {"format": POINTER_FORMAT, "generation": gen.number, "path": gen.rel, "committed": committed,
           "previous": ptr["generation"] if ptr else 0,
           "switched": datetime.now(UTC).isoformat(timespec="seconds"), **(extra or {})}
    # the temporary pointer lives in generations/ (removed with it), never as a stray file at the root
    write_atomic(root / POINTER, json.dumps(doc, indent=1, sort_keys=True), tmp_dir=root / GENERATIONS)
    faults.point(point)
    gen.committed = committed
    return doc
