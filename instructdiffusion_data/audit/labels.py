"""Auditor labels: append-only SQLite *beside* the output, ``<out>/<name>/.audit/<version>/labels.sqlite``
for the output ``<out>/<name>/<version>``.

Beside, not inside: ``idd run --overwrite`` removes the output folder, ``idd filter`` writes new
generations of it, and the labels must outlive both (they name samples by key, which stays the same
across reruns and re-filters). Labels written by older versions inside the output
(``<output>/audit/labels.sqlite``) are still read: the first access moves them beside the output
(rows copied with SQLite's backup API, merged into the new file when one exists already, then the old
file removed). See docs/reliability.md, "Generations".

Table (documented in docs/audit.md, "Labels")::

    labels(id INTEGER PRIMARY KEY, ts TEXT, auditor TEXT, output TEXT, key TEXT, verdict TEXT,
           comment TEXT, group_id TEXT)

``verdict`` is ``accept``, ``reject`` or ``align_pick``. Rows are only ever inserted (triggers refuse
UPDATE and DELETE), so the whole history stays. For accept/reject the newest row per key wins
(:func:`overrides`, read by ``idd filter``). An alignment review of one group is one *submission*: rows
sharing ``ts``, ``auditor`` and ``group_id``, one per picked key (0-2), or a single row with ``key`` NULL
when the auditor picked none; the newest submission of each auditor for a group is the one that counts
(:func:`alignment_picks`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from ..errors import UserError

VERDICTS = ("accept", "reject", "align_pick")
MAX_PICKS = 2
LABELS_DIR = ".audit"  # beside the versions of an output: <out>/<name>/.audit/<version>/labels.sqlite
LABELS_NAME = "labels.sqlite"
LEGACY_LABELS_FILE = Path("audit") / LABELS_NAME  # inside the output (before generations)

log = logging.getLogger(__name__)
_migrate_lock = threading.Lock()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels(id INTEGER PRIMARY KEY, ts TEXT, auditor TEXT, output TEXT, key TEXT,
                                  verdict TEXT, comment TEXT, group_id TEXT);
CREATE INDEX IF NOT EXISTS labels_key ON labels(key);
CREATE TRIGGER IF NOT EXISTS labels_no_update BEFORE UPDATE ON labels
BEGIN SELECT RAISE(ABORT, 'labels are append-only'); END;
CREATE TRIGGER IF NOT EXISTS labels_no_delete BEFORE DELETE ON labels
BEGIN SELECT RAISE(ABORT, 'labels are append-only'); END;
"""


def labels_home(output_dir: str | Path) -> Path:
    """Where the labels of the output ``<out>/<name>/<version>`` live: ``<out>/<name>/.audit/<version>/``."""
    out = Path(os.path.abspath(output_dir))
    return out.parent / LABELS_DIR / out.name


def output_of_labels(path: str | Path) -> Path:
    """The output folder a labels file belongs to (both layouts)."""
    p = Path(os.path.abspath(path))
    if p.parent.parent.name == LABELS_DIR:
        return p.parent.parent.parent / p.parent.name
    return p.parent.parent  # <output>/audit/labels.sqlite


def labels_path(output_dir: str | Path) -> Path:
    """The labels file of an output; a file at the old place inside the output is moved here first."""
    new = labels_home(output_dir) / LABELS_NAME
    old = Path(os.path.abspath(output_dir)) / LEGACY_LABELS_FILE
    if old.is_file():
        try:
            migrate(old, new)
        except (OSError, sqlite3.Error) as e:
            log.warning("%s: cannot move the labels beside the output (%s); reading them where they are", old, e)
            return old
    return new


_ROW_COLS = ("ts", "auditor", "output", "key", "verdict", "comment", "group_id")


def migrate(old: Path, new: Path) -> None:
    """Move the labels file ``old`` to ``new``: copied whole (SQLite backup), or its rows merged into
    ``new`` when that exists (rows already there are not added twice); then ``old`` is removed."""
    with _migrate_lock:
        if not old.is_file():
            return
        new.parent.mkdir(parents=True, exist_ok=True)
        src = sqlite3.connect(str(old), timeout=10)
        try:
            if not new.exists():
                tmp = new.with_name(f"{new.name}.tmp-{os.getpid()}-{threading.get_ident()}")
                tmp.unlink(missing_ok=True)
                dst = sqlite3.connect(str(tmp))
                try:
                    src.backup(dst)
                    dst.executescript(_SCHEMA)  # the triggers, for a file made before they existed
                finally:
                    dst.close()
                try:
                    os.link(tmp, new)  # never replaces a file another process made meanwhile
                    tmp.unlink()
                except FileExistsError:
                    tmp.unlink()
                    _merge(src, new)
            else:
                _merge(src, new)
        finally:
            src.close()
        old.unlink()
        for extra in (old.with_name(old.name + "-journal"), old.with_name(old.name + "-wal"),
                      old.with_name(old.name + "-shm")):
            extra.unlink(missing_ok=True)
        try:
            old.parent.rmdir()
        except OSError:
            pass
        log.info("auditor labels moved from %s to %s", old, new)


def _merge(src: sqlite3.Connection, new: Path) -> None:
    rows = src.execute(f"SELECT {', '.join(_ROW_COLS)} FROM labels ORDER BY id").fetchall()
    with _db(new, True) as con:
        have = set(con.execute(f"SELECT {', '.join(_ROW_COLS)} FROM labels").fetchall())
        for r in rows:
            if tuple(r) not in have:
                con.execute(f"INSERT INTO labels({', '.join(_ROW_COLS)}) VALUES ({', '.join('?' * len(_ROW_COLS))})", r)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _connect(path: Path, create: bool) -> sqlite3.Connection:
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.is_file():
        raise UserError(f"{path}: no labels file")
    con = sqlite3.connect(str(path), timeout=10)
    if create:
        con.executescript(_SCHEMA)
    return con


@contextmanager
def _db(path: Path, create: bool):
    con = _connect(path, create)
    try:
        with con:  # commits
            yield con
    finally:
        con.close()


class LabelStore:
    """The labels of one output (stored beside it: :func:`labels_path`)."""

    def __init__(self, output_dir: str | Path, output_name: str):
        self.path = labels_path(output_dir)
        self.output = output_name

    def _check(self, auditor: str, comment: str | None) -> tuple[str, str]:
        auditor = (auditor or "").strip()
        if not auditor or len(auditor) > 100:
            raise UserError("auditor name is required (at most 100 characters)")
        comment = (comment or "").strip()
        if len(comment) > 2000:
            raise UserError("comment is longer than 2000 characters")
        return auditor, comment

    def add(self, key: str, verdict: str, auditor: str, comment: str | None = None) -> dict:
        if verdict not in ("accept", "reject"):
            raise UserError(f"verdict must be accept or reject, not {verdict!r}")
        auditor, comment = self._check(auditor, comment)
        ts = now()
        with _db(self.path, True) as con:
            cur = con.execute("INSERT INTO labels(ts, auditor, output, key, verdict, comment, group_id) "
                              "VALUES (?, ?, ?, ?, ?, ?, NULL)", (ts, auditor, self.output, key, verdict, comment))
            rid = cur.lastrowid
        return {"id": rid, "ts": ts, "auditor": auditor, "key": key, "verdict": verdict, "comment": comment}

    def pick(self, group_id: str, keys: list[str], auditor: str, comment: str | None = None) -> dict:
        keys = list(dict.fromkeys(keys))
        if len(keys) > MAX_PICKS:
            raise UserError(f"pick at most {MAX_PICKS} candidates, not {len(keys)}")
        auditor, comment = self._check(auditor, comment)
        ts = now()
        with _db(self.path, True) as con:
            for k in keys or [None]:
                con.execute("INSERT INTO labels(ts, auditor, output, key, verdict, comment, group_id) "
                            "VALUES (?, ?, ?, ?, 'align_pick', ?, ?)", (ts, auditor, self.output, k, comment, group_id))
        return {"ts": ts, "auditor": auditor, "group_id": group_id, "keys": keys}

    def history(self, key: str | None = None, group_id: str | None = None, limit: int = 200) -> list[dict]:
        if not self.path.is_file():
            return []
        with _db(self.path, False) as con:
            con.row_factory = sqlite3.Row
            if key is not None:
                rows = con.execute("SELECT * FROM labels WHERE key = ? ORDER BY id DESC LIMIT ?", (key, limit))
            elif group_id is not None:
                rows = con.execute("SELECT * FROM labels WHERE group_id = ? ORDER BY id DESC LIMIT ?", (group_id, limit))
            else:
                rows = con.execute("SELECT * FROM labels ORDER BY id DESC LIMIT ?", (limit,))
            return [dict(r) for r in rows]

    def verdicts(self, keys: list[str]) -> dict[str, str]:
        """Newest accept/reject for each of ``keys`` that has one."""
        if not keys or not self.path.is_file():
            return {}
        out: dict[str, str] = {}
        with _db(self.path, False) as con:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                marks = ",".join("?" * len(chunk))
                for k, v in con.execute(
                        f"""SELECT key, verdict FROM labels WHERE id IN (SELECT max(id) FROM labels
                            WHERE verdict IN ('accept', 'reject') AND key IN ({marks}) GROUP BY key)""", chunk):
                    out[k] = v
        return out


def overrides(output_dir: str | Path) -> dict[str, str]:
    """``{key: "accept" | "reject"}``: the newest accept/reject label of each key of an output (for ``idd filter``)."""
    from ..storage import is_uri

    if is_uri(str(output_dir)):
        return {}  # labels are written by the auditor page, on a local disk
    path = labels_path(output_dir)
    if not path.is_file():
        return {}
    with _db(path, False) as con:
        return dict(con.execute("""SELECT key, verdict FROM labels WHERE id IN (SELECT max(id) FROM labels
                                   WHERE verdict IN ('accept', 'reject') AND key IS NOT NULL GROUP BY key)"""))


def alignment_picks(path: str | Path) -> list[dict]:
    """The picks that count: for each (group, auditor) the newest submission; rows with a key, deduplicated by key.
    Returns [{"key", "group_id", "auditor", "ts", "output", "comment"}] sorted by group and key."""
    path = Path(path)
    with _db(path, False) as con:
        con.row_factory = sqlite3.Row
        try:
            rows = [dict(r) for r in con.execute(
                """SELECT l.* FROM labels l JOIN (
                       SELECT group_id, auditor, max(id) AS last FROM labels WHERE verdict = 'align_pick'
                       GROUP BY group_id, auditor) n
                     ON l.group_id = n.group_id AND l.auditor = n.auditor
                   WHERE l.verdict = 'align_pick'
                     AND l.ts = (SELECT ts FROM labels WHERE id = n.last)
                     AND l.key IS NOT NULL
                   ORDER BY l.group_id, l.key, l.id""")]
        except sqlite3.DatabaseError as e:
            raise UserError(f"{path}: not a labels database ({e})") from None
    seen, out = set(), []
    for r in rows:
        if r["key"] not in seen:
            seen.add(r["key"])
            out.append({k: r[k] for k in ("key", "group_id", "auditor", "ts", "output", "comment")})
    return out
