"""A production client for any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp server).

:class:`LLMClient` wraps the real ``openai`` client and adds what a data job needs:

- a per-request timeout, and retries with exponential backoff plus jitter on 429, 5xx (and 408/409/425), timeouts,
  connection errors and unreadable (non-JSON) answer bodies (``Retry-After`` is honoured, capped by
  ``backoff_max_s``); other HTTP errors (400, 401, 404) fail at once;
- bounded concurrency: :meth:`LLMClient.complete_many` runs at most ``concurrency`` requests at a time
  in a thread pool;
- a persistent cache (:mod:`.cache`, SQLite) keyed by ``sha256(model, messages, params)``: an answer
  is bought once, a rerun reads it back and makes zero requests;
- a budget (``max_requests``, ``max_total_tokens``) booked in the cache file's ledger under
  ``budget_scope``, shared by all processes using that file; when spent, :class:`BudgetExhausted` is
  raised for every further uncached request (cached answers are still served: they are free);
- statistics (requests, retries, cache hits, tokens, errors) in :attr:`LLMClient.stats`.

The API key is read from the environment variable named by ``api_key_env`` (never from the config
file). Local servers usually accept any key; when the variable is unset, ``"none"`` is sent.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..config import rng
from .cache import BudgetExhausted, CachedResponse, SqliteCache, request_key

log = logging.getLogger(__name__)

# statuses retried besides 429 and 5xx (which the openai client maps to RateLimitError / InternalServerError)
RETRY_STATUSES = (408, 409, 425)

__all__ = ["BudgetExhausted", "Completion", "LLMClient", "LLMConfig", "LLMError"]


@dataclass
class LLMConfig:
    """Where and how to ask. ``base_url`` None means no endpoint: callers use their template path."""

    base_url: str | None = None  # e.g. https://api.openai.com/v1, http://localhost:8000/v1 (vLLM), http://localhost:8080/v1 (llama.cpp)
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key
    temperature: float = field(default=0.7, metadata=rng(0, 2))
    max_tokens: int = field(default=128, metadata=rng(1))  # per answer
    json_mode: bool = True  # send response_format={"type": "json_object"}
    timeout_s: float = field(default=30.0, metadata=rng(0.001))  # per request
    # retries after the first attempt, on 429 / 5xx / timeout / connection error
    max_retries: int = field(default=5, metadata=rng(0))
    backoff_base_s: float = field(default=0.5, metadata=rng(0))  # first retry waits about this long, doubling each time
    backoff_max_s: float = field(default=30.0, metadata=rng(0))
    concurrency: int = field(default=4, metadata=rng(1))  # requests in flight at once (per worker)
    cache_path: str | None = "cache/llm.sqlite"  # None: in-memory cache (this process only)
    # budget: paid requests in total under budget_scope (0: none may be bought, the cache still answers)
    max_requests: int | None = field(default=None, metadata=rng(0))
    # budget: prompt + completion tokens in total under budget_scope
    max_total_tokens: int | None = field(default=None, metadata=rng(0))
    budget_scope: str = "default"  # ledger entry the budget is counted in (shared through the cache file)
    extra_body: dict = field(default_factory=dict)  # server-specific options (e.g. vLLM guided decoding)


class LLMError(Exception):
    """A request failed for good (non-retryable status, or retries exhausted). ``reason`` is the drop
    class (``llm request failed`` / ``llm request rejected``), ``detail`` the attempts and the error."""

    def __init__(self, reason: str, **detail):
        self.reason = reason
        self.detail = detail
        attempts, error = detail.get("attempts"), detail.get("error")
        text = f"{reason} after {attempts} attempts" if attempts else reason
        super().__init__(f"{text}: {error}" if error else text)


@dataclass
class Completion:
    text: str
    cached: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0  # HTTP attempts made for this answer (0 when cached)


class LLMClient:
    def __init__(self, config: LLMConfig | dict | None = None, *, seed: int = 0):
        from .. import config as cfgmod

        self.config: LLMConfig = cfgmod.build(LLMConfig, config or {}, where="llm")
        if not self.config.base_url:
            raise ValueError("LLMClient needs llm.base_url; use the template path when no endpoint is configured")
        self.cache = SqliteCache(self.config.cache_path)
        self._rand = random.Random(seed)
        self._stats_lock = threading.Lock()
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "cache_hits": 0, "prompt_tokens": 0,
                                      "completion_tokens": 0, "errors": 0, "budget_refused": 0}
        self._client = None
        self._client_lock = threading.Lock()

    # -- the openai client, created lazily (the object pickles cheaply for Ray) -----------------
    @property
    def client(self):
        with self._client_lock:
            if self._client is None:
                import openai

                # one INFO line per HTTP request from the transport drowns a data job's log; the
                # stage logs counts instead (a logger the user configured is left alone)
                for name in ("httpx", "httpx2"):
                    if logging.getLogger(name).level == logging.NOTSET:
                        logging.getLogger(name).setLevel(logging.WARNING)
                key = os.environ.get(self.config.api_key_env) or "none"
                # our own retry loop counts and logs attempts; the library's is turned off
                self._client = openai.OpenAI(base_url=self.config.base_url, api_key=key,
                                             timeout=self.config.timeout_s, max_retries=0)
            return self._client

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_client"] = None
        state["cache"] = None
        state["_stats_lock"] = None
        state["_client_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._stats_lock = threading.Lock()
        self._client_lock = threading.Lock()
        self.cache = SqliteCache(self.config.cache_path)

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for k, v in deltas.items():
                self.stats[k] = self.stats.get(k, 0) + v

    def params(self, **overrides: Any) -> dict[str, Any]:
        """Generation parameters sent with (and hashed into the cache key of) each request."""
        p: dict[str, Any] = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        if self.config.json_mode:
            p["response_format"] = {"type": "json_object"}
        if self.config.extra_body:
            p["extra_body"] = self.config.extra_body
        p.update({k: v for k, v in overrides.items() if v is not None})
        return p

    # -- one request ---------------------------------------------------------------------------
    def complete(self, messages: list[dict], **overrides: Any) -> Completion:
        """The answer to ``messages``: from the cache, or bought (budget permitting) and cached.
        Raises :class:`BudgetExhausted` or :class:`LLMError`."""
        params = self.params(**overrides)
        key = request_key(self.config.model, messages, params)
        return self._cached(key) or self._buy(key, messages, params)

    def _cached(self, key: str) -> Completion | None:
        hit = self.cache.get(key)
        if hit is None:
            return None
        self._count(cache_hits=1)
        return Completion(hit.text, True, hit.prompt_tokens, hit.completion_tokens, 0)

    def _buy(self, key: str, messages: list[dict], params: dict[str, Any]) -> Completion:
        cfg = self.config
        try:
            self.cache.reserve(cfg.budget_scope, cfg.max_requests, cfg.max_total_tokens)
        except BudgetExhausted:
            self._count(budget_refused=1)
            raise
        text, usage, attempts = self._request(messages, params)
        resp = CachedResponse(text, usage[0], usage[1])
        self.cache.put(key, cfg.model, resp)
        self.cache.charge_tokens(cfg.budget_scope, usage[0] + usage[1])
        self._count(prompt_tokens=usage[0], completion_tokens=usage[1])
        return Completion(text, False, usage[0], usage[1], attempts)

    def _request(self, messages: list[dict], params: dict[str, Any]) -> tuple[str, tuple[int, int], int]:
        import openai

        cfg = self.config
        p = dict(params)
        extra_body = p.pop("extra_body", None)
        attempt = 0
        while True:
            attempt += 1
            self._count(requests=1)
            try:
                resp = self.client.chat.completions.create(model=cfg.model, messages=messages,
                                                           extra_body=extra_body, timeout=cfg.timeout_s, **p)
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError, openai.APIResponseValidationError, ValueError) as e:
                # ValueError: a body that is not JSON at all (a proxy's error page): retried like a 5xx
                if attempt > cfg.max_retries:
                    self._count(errors=1)
                    raise LLMError("llm request failed", attempts=attempt, error=_describe(e)) from None
                delay = self._backoff(attempt, e)
                log.info("llm: %s, retry %d/%d in %.2fs", _describe(e), attempt, cfg.max_retries, delay)
                self._count(retries=1)
                time.sleep(delay)
                continue
            except openai.APIStatusError as e:
                if e.status_code not in RETRY_STATUSES or attempt > cfg.max_retries:
                    self._count(errors=1)
                    if e.status_code in RETRY_STATUSES:
                        raise LLMError("llm request failed", attempts=attempt, error=_describe(e)) from None
                    raise LLMError("llm request rejected", error=_describe(e)) from None
                delay = self._backoff(attempt, e)
                log.info("llm: %s, retry %d/%d in %.2fs", _describe(e), attempt, cfg.max_retries, delay)
                self._count(retries=1)
                time.sleep(delay)
                continue
            choice = resp.choices[0] if getattr(resp, "choices", None) else None
            text = (choice.message.content if choice and choice.message else None) or ""
            usage = getattr(resp, "usage", None)
            tokens = (int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0))
            return text, tokens, attempt

    def _backoff(self, attempt: int, exc: Exception) -> float:
        cfg = self.config
        base = min(cfg.backoff_max_s, cfg.backoff_base_s * (2 ** (attempt - 1)))
        delay = base * (0.5 + 0.5 * self._rand.random())  # jitter: between half and all of the step
        retry_after = _retry_after(exc)
        if retry_after is not None:
            delay = max(delay, min(retry_after, cfg.backoff_max_s))
        return delay

    # -- many requests -------------------------------------------------------------------------
    def complete_many(self, requests: list[list[dict]], per_request: list[dict] | None = None,
                      **overrides: Any) -> list[Completion | Exception]:
        """Answer each message list; each result is a :class:`Completion` or the exception
        (``BudgetExhausted``, ``LLMError``) for that request. ``per_request[i]`` adds parameters to
        request ``i`` (e.g. its ``seed``). Cached answers are read first, in this thread; the misses
        are bought with at most ``concurrency`` requests in flight, in request order."""
        results: list[Completion | Exception | None] = [None] * len(requests)
        misses: list[tuple[int, str, dict]] = []
        for i, messages in enumerate(requests):
            params = self.params(**dict(overrides, **(per_request[i] if per_request else {})))
            key = request_key(self.config.model, messages, params)
            results[i] = self._cached(key)
            if results[i] is None:
                misses.append((i, key, params))

        def buy(item: tuple[int, str, dict]) -> Completion | Exception:
            i, key, params = item
            try:
                return self._buy(key, requests[i], params)
            except (BudgetExhausted, LLMError) as e:
                return e

        workers = max(1, min(self.config.concurrency, len(misses)))
        if workers == 1:
            bought = [buy(m) for m in misses]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                bought = list(pool.map(buy, misses))
        for (i, _, _), res in zip(misses, bought):
            results[i] = res
        return results  # type: ignore[return-value]


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    if status:
        return f"HTTP {status}"
    if isinstance(exc, ValueError):
        return "unreadable answer"
    return type(exc).__name__


def _retry_after(exc: Exception) -> float | None:
    resp = getattr(exc, "response", None)
    headers = getattr(resp, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
