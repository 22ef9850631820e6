"""Auditor labels: append-only SQLite at ``<output dir>/audit/labels.sqlite``.

Table (the contract in HELPER-BRIEF / shards/README)::

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

import sqlite3
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from ..errors import UserError

VERDICTS = ("accept", "reject", "align_pick")
MAX_PICKS = 2
LABELS_FILE = Path("audit") / "labels.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels(id INTEGER PRIMARY KEY, ts TEXT, auditor TEXT, output TEXT, key TEXT,
                                  verdict TEXT, comment TEXT, group_id TEXT);
CREATE INDEX IF NOT EXISTS labels_key ON labels(key);
CREATE TRIGGER IF NOT EXISTS labels_no_update BEFORE UPDATE ON labels
BEGIN SELECT RAISE(ABORT, 'labels are append-only'); END;
CREATE TRIGGER IF NOT EXISTS labels_no_delete BEFORE DELETE ON labels
BEGIN SELECT RAISE(ABORT, 'labels are append-only'); END;
"""


def labels_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / LABELS_FILE


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
    """The labels of one output."""

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
