"""Fault injection at commit points, for the fault suite (docs/reliability.md).

Every place where the engine makes something durable (a file renamed into place, a marker written,
a pointer switched) calls :func:`point` with a stable name, e.g. ``writer.rename``. In production the
call costs one dictionary lookup. Two environment variables turn it into a test harness:

- ``IDD_FAULT_AT=<pattern>:<n>`` kills this process with SIGKILL (no cleanup, no ``finally``, exactly
  like ``kill -9``) at the *n*-th commit point whose name matches the ``fnmatch`` pattern
  (``*:5`` dies at the fifth commit point of any kind, ``filter.*:1`` at the first of ``idd filter``).
- ``IDD_FAULT_LOG=<file>`` appends the name of every commit point reached, one per line, so a test
  can first count the points of a clean run and then kill the run at each of them in turn.

Counting is per process. Ray workers inherit the variables, so a worker can be killed the same way;
since Ray replaces a killed worker with a fresh process (whose count starts again), ``IDD_FAULT_ONCE=
<file>`` makes the fault fire once in all: the first process to fire creates the file, later ones
see it and go on.
"""

from __future__ import annotations

import fnmatch
import os
import signal

_counts: dict[str, int] = {}


def _spec() -> tuple[str, int] | None:
    raw = os.environ.get("IDD_FAULT_AT")
    if not raw:
        return None
    pattern, _, n = raw.rpartition(":")
    try:
        return (pattern or "*"), int(n)
    except ValueError:
        return None


def point(name: str) -> None:
    """A commit point named ``name``: log it, and die here when the fault spec says so."""
    log_file = os.environ.get("IDD_FAULT_LOG")
    if log_file:
        with open(log_file, "a", encoding="utf-8") as fh:
            fh.write(name + "\n")
    spec = _spec()
    if spec is None:
        return
    pattern, n = spec
    if not fnmatch.fnmatchcase(name, pattern):
        return
    _counts[pattern] = _counts.get(pattern, 0) + 1
    if _counts[pattern] == n:
        once = os.environ.get("IDD_FAULT_ONCE")
        if once:
            try:
                fd = os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.write(fd, name.encode())
            os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
