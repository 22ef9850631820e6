"""``idd``: the command line. Subcommands live in :mod:`instructdiffusion_data.commands`.

Errors a user can act on print one line and exit with 2, no traceback: a :class:`~.errors.UserError`, and
an operating-system error about where the output goes (full disk, quota, read-only file system, no
permission, an output folder gone), also when it comes wrapped in another exception (Ray's
``RayTaskError.cause``, ``raise ... from``). Anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import pkgutil
import re
import sys
from pathlib import Path

from . import __version__
from .errors import UserError

log = logging.getLogger("idd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idd", description="InstructDiffusion data engine")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import commands

    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"{commands.__name__}.{mod}").register(sub)
    return parser


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose < 0 else logging.INFO if verbose == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


# errno -> (what happened, verb before the path, what to do; "{out}" is where to choose another output)
_OS_ERRORS = {
    errno.ENOSPC: ("no space left on device", "writing", "free space or choose another {out}"),
    errno.EDQUOT: ("disk quota exceeded", "writing", "free space or choose another {out}"),
    errno.EROFS: ("read-only file system", "writing", "choose a writable {out}"),
    errno.EACCES: ("permission denied", "on", "make it writable or choose another {out}"),
    errno.EPERM: ("operation not permitted", "on", "make it writable or choose another {out}"),
    errno.ENOENT: ("no such file or directory", "writing", "the output folder was removed or is not reachable: "
                                                           "recreate it (a rerun resumes) or choose another {out}"),
    errno.ENOTDIR: ("not a directory", "writing", "a file is in the way of the output folder: move it or "
                                                  "choose another {out}"),
}
_OUTPUT_ONLY = (errno.ENOENT, errno.ENOTDIR)  # elsewhere more likely a bug: those keep their traceback
_QUOTED = re.compile(r"'([^']+)'")  # pyarrow's file systems name the path only in the message


def _chain(exc: BaseException):
    """``exc`` and every exception it wraps: ``__cause__``, ``__context__``, ``.cause`` (Ray's RayTaskError),
    the members of an exception group; each once."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
        if isinstance(e, BaseExceptionGroup):
            todo += list(e.exceptions)


def _output_roots(args: argparse.Namespace | None) -> list[Path]:
    roots = []
    for name in ("out", "output"):
        v = getattr(args, name, None)
        if isinstance(v, str) and v and "://" not in v:
            roots.append(Path(v).absolute())
    return roots


def _is_output_path(path: str | None, roots: list[Path]) -> bool:
    if not path:
        return False
    p = Path(path).absolute()
    if p.name.endswith(".tmp") or ".tmp-" in p.name:  # the writers' temporary files are always outputs
        return True
    return any(p == r or r in p.parents for r in roots)


def _paths(e: OSError) -> tuple[str | None, str | None]:
    names = [os.fsdecode(f) if isinstance(f, (str, bytes, os.PathLike)) else None for f in (e.filename, e.filename2)]
    if names[0] is None:
        found = _QUOTED.findall(str(e.strerror or (e.args[-1] if e.args else "")))
        names = (found + [None, None])[:2]
    return names[0], names[1]


def describe_os_error(exc: BaseException, outputs: list[str | os.PathLike] = (), flag: str = "--out") -> str | None:
    """``WHAT writing PATH: WHAT TO DO`` for an OS error a user can act on, found in ``exc`` or what it wraps;
    None for anything else. ENOENT and ENOTDIR count only on an output path (under one of ``outputs``, or a
    writer's temporary file): elsewhere they are more likely a bug, which keeps its traceback. ``flag`` is
    what the hint tells the user to change."""
    roots = [Path(o).absolute() for o in outputs if o and "://" not in str(o)]
    for e in _chain(exc):
        if not isinstance(e, OSError) or e.errno not in _OS_ERRORS:
            continue
        path, path2 = _paths(e)
        if e.errno in _OUTPUT_ONLY and not (_is_output_path(path, roots) or _is_output_path(path2, roots)):
            continue
        what, verb, todo = _OS_ERRORS[e.errno]
        if path is None:  # file.write() does not say which file: name the output instead
            where = f" {verb} under {roots[0]}" if roots else ""
        else:
            where = f" {verb} {path}" + (f" -> {path2}" if path2 else "")
        line = f"{what}{where}: {todo.format(out=flag)}"
        return line.replace("\r", "\\r").replace("\n", "\\n")  # one line whatever the path holds
    return None


def os_error_line(exc: BaseException, args: argparse.Namespace) -> str | None:
    """:func:`describe_os_error` with the command's output arguments (``--out``, ``OUTPUT``)."""
    return describe_os_error(exc, _output_roots(args), "--out" if hasattr(args, "out") else "folder")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(args.verbose)
    try:
        from .imageio import pixel_limit

        pixel_limit()  # a malformed IDD_MAX_PIXELS stops here, not in every row
        rc = args.func(args)
    except UserError as e:
        print(f"idd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"idd {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - only actionable OS errors are turned into one line
        line = os_error_line(e, args)
        if line is None:
            raise
        print(f"idd {args.command}: error: {line}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
