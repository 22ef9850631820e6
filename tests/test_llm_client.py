"""The LLM client against a real HTTP server on loopback, through the real ``openai`` client."""

import time

import pytest

from instructdiffusion_data.llm import (
    BudgetExhausted,
    LLMClient,
    LLMError,
    SqliteCache,
    check_instruction,
    parse_instruction,
    request_key,
)
from instructdiffusion_data.llm.validate import InvalidResponse

from .helpers_llm import FakeOpenAIServer


@pytest.fixture()
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def _client(srv, tmp_path=None, **kw):
    cfg = {"base_url": srv.base_url, "model": "test-model", "backoff_base_s": 0.01, "backoff_max_s": 0.5,
           "cache_path": str(tmp_path / "llm.sqlite") if tmp_path else None}
    cfg.update(kw)
    return LLMClient(cfg, seed=1)


def _ask(obj):
    return [{"role": "system", "content": "answer in JSON"}, {"role": "user", "content": f"Object to remove: {obj}"}]


def test_answer_request_shape_and_api_key(server, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sk-test-123")
    c = _client(server, api_key_env="MY_LLM_KEY", temperature=0.2, max_tokens=64)
    res = c.complete(_ask("dog"), seed=7)
    assert parse_instruction(res.text) == "remove the dog from the picture"
    assert not res.cached and res.attempts == 1
    assert res.prompt_tokens == 7 and res.completion_tokens == 7  # the server counts words
    req = server.chat_requests()[0]
    assert req["auth"] == "Bearer sk-test-123"
    body = req["body"]
    assert body["model"] == "test-model" and body["temperature"] == 0.2 and body["max_tokens"] == 64
    assert body["response_format"] == {"type": "json_object"} and body["seed"] == 7
    assert c.stats["prompt_tokens"] == 7 and c.stats["completion_tokens"] == 7


def test_retries_on_429_and_5xx_then_succeeds(server):
    server.state.fail_next = [429, 500, 503]
    c = _client(server)
    res = c.complete(_ask("cat"))
    assert parse_instruction(res.text) == "remove the cat from the picture"
    assert res.attempts == 4
    assert len(server.chat_requests()) == 4
    assert c.stats["retries"] == 3 and c.stats["requests"] == 4


def test_retry_after_header_is_honoured(server):
    server.state.fail_next = [429]
    server.state.retry_after = "0.4"
    c = _client(server, backoff_base_s=0.001)
    t0 = time.perf_counter()
    c.complete(_ask("cat"))
    assert time.perf_counter() - t0 >= 0.4


def test_backoff_grows_exponentially_with_jitter(server):
    c = _client(server, backoff_base_s=0.1, backoff_max_s=1.0)
    delays = [[c._backoff(a, RuntimeError()) for a in range(1, 6)] for _ in range(20)]
    for d in delays:
        for a, v in enumerate(d, start=1):
            step = min(1.0, 0.1 * 2 ** (a - 1))
            assert step / 2 <= v <= step
    assert len({round(d[0], 6) for d in delays}) > 1  # jittered


def test_retries_exhausted_and_non_retryable(server):
    server.state.fail_next = [500] * 10
    c = _client(server, max_retries=2)
    with pytest.raises(LLMError, match="after 3 attempts: HTTP 500"):
        c.complete(_ask("cat"))
    assert len(server.chat_requests()) == 3
    server.state.fail_next = [400]
    with pytest.raises(LLMError, match="rejected: HTTP 400"):
        c.complete(_ask("owl"))
    assert len(server.chat_requests()) == 4  # a 400 is not retried
    server.state.fail_next = [408, 409]
    assert parse_instruction(c.complete(_ask("owl")).text) == "remove the owl from the picture"
    assert len(server.chat_requests()) == 7


def test_timeout_is_retried(server):
    server.state.delay_s = 0.6
    c = _client(server, timeout_s=0.15, max_retries=1)
    t0 = time.perf_counter()
    with pytest.raises(LLMError, match="APITimeoutError"):
        c.complete(_ask("cat"))
    assert time.perf_counter() - t0 < 1.5
    assert c.stats["retries"] == 1
    server.state.delay_s = 0.0
    assert parse_instruction(c.complete(_ask("cat")).text) == "remove the cat from the picture"


def test_unreadable_body_is_retried_then_fails(server):
    server.state.garbage_body = True
    c = _client(server, max_retries=1)
    with pytest.raises(LLMError, match="unreadable answer"):
        c.complete(_ask("cat"))
    assert len(server.chat_requests()) == 2


def test_cache_second_run_makes_zero_requests(server, tmp_path):
    objs = ["dog", "cat", "red car", "tree"]
    first = _client(server, tmp_path).complete_many([_ask(o) for o in objs])
    assert len(server.chat_requests()) == 4 and not any(r.cached for r in first)
    again = _client(server, tmp_path)  # a new process would see the same file
    second = again.complete_many([_ask(o) for o in objs])
    assert len(server.chat_requests()) == 4  # nothing asked twice
    assert [r.text for r in second] == [r.text for r in first]
    assert all(r.cached for r in second) and again.stats["cache_hits"] == 4 and again.stats["requests"] == 0
    # the parameters are part of the key: another temperature is another request
    _client(server, tmp_path, temperature=0.1).complete(_ask("dog"))
    assert len(server.chat_requests()) == 5
    assert len(SqliteCache(tmp_path / "llm.sqlite")) == 5


def test_request_key_covers_model_messages_params():
    k = request_key("m", _ask("dog"), {"temperature": 0.7})
    assert k == request_key("m", _ask("dog"), {"temperature": 0.7})
    assert len({k, request_key("m2", _ask("dog"), {"temperature": 0.7}), request_key("m", _ask("cat"), {"temperature": 0.7}),
                request_key("m", _ask("dog"), {"temperature": 0.5})}) == 4


def test_request_budget_stops_and_is_shared_through_the_cache_file(server, tmp_path):
    c = _client(server, tmp_path, max_requests=2, concurrency=1)
    res = c.complete_many([_ask(o) for o in ["a dog", "a cat", "a car", "a tree", "a boat"]])
    assert [type(r).__name__ for r in res] == ["Completion"] * 2 + ["BudgetExhausted"] * 3
    assert len(server.chat_requests()) == 2 and c.stats["budget_refused"] == 3
    # another worker on the same file shares the ledger; cached answers stay free
    other = _client(server, tmp_path, max_requests=2)
    with pytest.raises(BudgetExhausted, match="request budget spent"):
        other.complete(_ask("a boat"))
    assert other.complete(_ask("a dog")).cached
    assert len(server.chat_requests()) == 2
    assert SqliteCache(tmp_path / "llm.sqlite").spent("default") == (2, sum(r.prompt_tokens + r.completion_tokens for r in res[:2]))


def test_token_budget(server, tmp_path):
    c = _client(server, tmp_path, max_total_tokens=10, concurrency=1)
    res = c.complete_many([_ask("dog"), _ask("cat")])
    assert res[0].prompt_tokens + res[0].completion_tokens >= 10
    assert isinstance(res[1], BudgetExhausted) and "token budget" in str(res[1])


def test_concurrency_is_bounded(server):
    server.state.delay_s = 0.2
    c = _client(server, concurrency=3)
    t0 = time.perf_counter()
    res = c.complete_many([_ask(f"thing{i}") for i in range(9)])
    elapsed = time.perf_counter() - t0
    assert all(not isinstance(r, Exception) for r in res)
    assert server.state.max_inflight == 3
    assert elapsed < 9 * 0.2  # ran in parallel
    # answers come back in request order
    assert [parse_instruction(r.text) for r in res] == [f"remove the thing{i} from the picture" for i in range(9)]


def test_client_pickles_for_ray_workers(server, tmp_path):
    import pickle

    c = _client(server, tmp_path)
    c.complete(_ask("dog"))
    c2 = pickle.loads(pickle.dumps(c))
    assert c2.complete(_ask("dog")).cached


@pytest.mark.parametrize("text,reason", [
    ("remove the dog", None),
    ("please change the running dog to a cute cat", None),
    ("", "instruction empty"),
    ("remove the {object} now", "leftover placeholder"),
    ("I'm sorry, I cannot remove the dog", "refusal"),
    ("As an AI I would remove the dog", "refusal"),
    ("dog", "too short"),
    ("remove the dog " + "very " * 60, "too long"),
    ("make the sky brighter", "does not mention the edited object"),
    ("remove both dogs", None),  # plural of the object still names it
])
def test_check_instruction(text, reason):
    got = check_instruction(text, ["the brown dog"])
    assert (got is None) if reason is None else (reason in got)


def test_parse_instruction():
    assert parse_instruction('```json\n{"instruction": "remove  the dog"}\n```') == "remove the dog"
    for bad in ["", "remove the dog", '{"text": "x"}', "[1, 2]"]:
        with pytest.raises(InvalidResponse):
            parse_instruction(bad)
