"""Persistent request cache and spending ledger for LLM calls, in one SQLite file.

The cache maps ``sha256(model + messages + params)`` (see :func:`request_key`) to the raw text of the
answer and its token usage, so a rerun of the same pipeline pays nothing twice: every answer already
bought is read back, whatever worker or process asks. The *ledger* counts paid requests and tokens
per budget scope; :class:`SqliteCache.reserve` checks and books one request atomically
(``BEGIN IMMEDIATE``), so several Ray workers sharing one cache file share one budget.

The file uses WAL journaling and a busy timeout; one connection per thread.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT,
    text TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    created REAL
);
CREATE TABLE IF NOT EXISTS ledger (
    scope TEXT PRIMARY KEY,
    requests INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0
);
"""


def request_key(model: str, messages: list[dict], params: dict[str, Any]) -> str:
    """The cache key of one request: sha256 of model, messages and generation parameters."""
    blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class CachedResponse:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class BudgetExhausted(Exception):
    """The configured request or token budget is spent; the caller stops asking."""


class SqliteCache:
    """Thread-safe, multi-process SQLite store of answers and of the spending ledger."""

    def __init__(self, path: str | Path | None):
        # path None: an in-memory store (this process only), used when no cache file is configured
        self.path = str(path) if path else None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._memory: sqlite3.Connection | None = None
        if self.path:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        if self.path is None:
            if self._memory is None:
                self._memory = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            return self._memory
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    # -- answers -------------------------------------------------------------------------------
    def get(self, key: str) -> CachedResponse | None:
        with self._lock if self.path is None else _nolock():
            row = self._conn().execute(
                "SELECT text, prompt_tokens, completion_tokens FROM responses WHERE key=?", (key,)).fetchone()
        return CachedResponse(row[0], row[1] or 0, row[2] or 0) if row else None

    def put(self, key: str, model: str, resp: CachedResponse) -> None:
        with self._lock if self.path is None else _nolock():
            self._conn().execute(
                "INSERT OR REPLACE INTO responses(key, model, text, prompt_tokens, completion_tokens, created) "
                "VALUES (?,?,?,?,?,?)", (key, model, resp.text, resp.prompt_tokens, resp.completion_tokens, time.time()))

    def __len__(self) -> int:
        with self._lock if self.path is None else _nolock():
            return self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    # -- budget ledger -------------------------------------------------------------------------
    def reserve(self, scope: str, max_requests: int | None, max_tokens: int | None) -> None:
        """Book one paid request under ``scope``; raise :class:`BudgetExhausted` when the request
        budget is spent or the tokens already used reach the token budget."""
        with self._lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT requests, tokens FROM ledger WHERE scope=?", (scope,)).fetchone()
                requests, tokens = row if row else (0, 0)
                if max_requests is not None and requests >= max_requests:
                    raise BudgetExhausted(f"request budget spent ({requests}/{max_requests} requests)")
                if max_tokens is not None and tokens >= max_tokens:
                    raise BudgetExhausted(f"token budget spent ({tokens}/{max_tokens} tokens)")
                conn.execute("INSERT INTO ledger(scope, requests, tokens) VALUES (?,1,0) "
                             "ON CONFLICT(scope) DO UPDATE SET requests = requests + 1", (scope,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def charge_tokens(self, scope: str, tokens: int) -> None:
        with self._lock:
            self._conn().execute("INSERT INTO ledger(scope, requests, tokens) VALUES (?,0,?) "
                                 "ON CONFLICT(scope) DO UPDATE SET tokens = tokens + excluded.tokens", (scope, tokens))

    def spent(self, scope: str) -> tuple[int, int]:
        """(requests, tokens) booked under ``scope``."""
        with self._lock:
            row = self._conn().execute("SELECT requests, tokens FROM ledger WHERE scope=?", (scope,)).fetchone()
        return (row[0], row[1]) if row else (0, 0)


class _nolock:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
