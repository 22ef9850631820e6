"""A small OpenAI-compatible chat server on loopback for the LLM tests, and a record source.

The server answers ``POST /v1/chat/completions`` deterministically from the prompt: it reads the
"Object to remove/add:" or "Object in the source image:" / "It becomes:" lines and answers
``{"instruction": "remove the <object>"}`` (or "change the <a> to <b>"). Switches inject failures:

- ``server.state.fail_next``: list of HTTP statuses (429, 500, 503) returned, in order, by the next requests;
- ``server.state.delay_s``: sleep before answering (timeouts);
- object names containing ``refusebait`` -> a refusal, ``badjson`` -> content that is not JSON,
  ``holder`` -> a leftover ``{object}``, ``offtopic`` -> an instruction not naming the object,
  ``flaky`` -> off-topic the first time a prompt is seen, a good answer when it is asked again.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from instructdiffusion_data.schema import make_key, new_row
from instructdiffusion_data.stage import Source, SourceConfig


@dataclass
class ServerState:
    requests: list = field(default_factory=list)
    fail_next: list = field(default_factory=list)
    retry_after: str | None = None
    delay_s: float = 0.0
    garbage_body: bool = False
    seen: set = field(default_factory=set)  # prompts answered once ("flaky" objects)
    inflight: int = 0
    max_inflight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


REWRITES = [
    "Could you make the {ph} vanish from this shot?", "I want the {ph} gone.", "Scrub out the {ph}, please.",
    "Let's lose the {ph}.", "Photoshop the {ph} away.", "No more {ph} in this picture, thanks.",
    "Can the {ph} be taken out?", "Cut the {ph} out of the scene.", "Edit out the {ph}.", "Hide the {ph} completely.",
]


def expansion_answer(prompt: str, seed: int) -> str:
    """Template rewrites: 2 new valid ones per seed, plus an exact duplicate, a case/punctuation
    duplicate, a near duplicate, a changed placeholder and a refusal."""
    originals = [ln[2:] for ln in prompt.split("Templates:\n", 1)[1].split("\n\n", 1)[0].splitlines() if ln.startswith("- ")]
    ph = re.search(r"\{[a-z_]+\}", originals[0]).group(0)
    longest = max(originals, key=len)
    items = [
        REWRITES[(2 * seed) % 10].format(ph=ph),
        originals[0],
        originals[0].upper().rstrip(".") + "!",
        longest.rstrip(".") + " please.",
        "Remove the {wrong} now.",
        f"I'm sorry, but I cannot rewrite the {ph}.",
        REWRITES[(2 * seed + 1) % 10].format(ph=ph),
    ]
    return json.dumps({"templates": items})


def answer_for(prompt: str, seed: int = 0) -> str:
    """The deterministic answer content for a user prompt."""
    if "Templates:" in prompt:
        return expansion_answer(prompt, seed)
    m_obj = re.search(r"Object (?:to remove|to add|in the source image): (.+)", prompt)
    m_tgt = re.search(r"It becomes: (.+)", prompt)
    obj = m_obj.group(1).strip() if m_obj else "thing"
    if "refusebait" in obj:
        return json.dumps({"instruction": "I'm sorry, but I cannot help with editing this image."})
    if "badjson" in obj:
        return "Sure! Here is your instruction: remove the " + obj
    if "holder" in obj:
        return json.dumps({"instruction": "remove the {object} from the photo"})
    if "offtopic" in obj:
        return json.dumps({"instruction": "make the sky a little brighter"})
    if "to remove" in prompt:
        text = f"remove the {obj} from the picture"
    elif "to add" in prompt:
        text = f"add {obj} to the picture"
    else:
        text = f"please change the {obj} to {m_tgt.group(1).strip() if m_tgt else 'something'}"
    return json.dumps({"instruction": text})


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        state: ServerState = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        with state.lock:
            state.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            status = state.fail_next.pop(0) if state.fail_next else 200
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._send(404, b'{"error": {"message": "not found"}}')
        with state.lock:
            state.inflight += 1
            state.max_inflight = max(state.max_inflight, state.inflight)
        try:
            if state.delay_s:
                time.sleep(state.delay_s)
        finally:
            with state.lock:
                state.inflight -= 1
        if status != 200:
            headers = {"Retry-After": state.retry_after} if (status == 429 and state.retry_after) else {}
            err = {"error": {"message": f"injected {status}", "type": "server_error", "code": status}}
            return self._send(status, json.dumps(err).encode(), headers)
        if state.garbage_body:
            return self._send(200, b"<html>not json at all")
        user = "\n".join(m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user")
        content = answer_for(user, int(body.get("seed") or 0))
        if "flaky" in user:  # off-topic the first time a prompt is seen, fine when asked again
            with state.lock:
                first = user not in state.seen
                state.seen.add(user)
            if first:
                content = json.dumps({"instruction": "make the sky a little brighter"})
        prompt_tokens = sum(len(m.get("content", "").split()) for m in body.get("messages", []))
        resp = {
            "id": f"chatcmpl-{len(state.requests)}", "object": "chat.completion", "created": 1700000000,
            "model": body.get("model", "test-model"),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content.split()),
                      "total_tokens": prompt_tokens + len(content.split())},
        }
        self._send(200, json.dumps(resp).encode())


class FakeOpenAIServer:
    """``with FakeOpenAIServer() as srv: srv.base_url`` -> ``http://127.0.0.1:PORT/v1``."""

    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = ServerState()
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def state(self) -> ServerState:
        return self.httpd.state

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def chat_requests(self) -> list:
        return [r for r in self.state.requests if r["path"].rstrip("/") == "/v1/chat/completions"]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


# -- a record source of edit rows for runner tests ('tests.helpers_llm:EditRowsSource') -------
@dataclass
class EditRowsConfig(SourceConfig):
    objects: list = field(default_factory=lambda: ["dog", "red car"])
    task: str = "edit_remove"
    targets: list = field(default_factory=list)  # edit_replace: ref_label per object


class EditRowsSource(Source):
    name = "edit_rows"
    Config = EditRowsConfig

    def records(self):
        for i, obj in enumerate(self.config.objects):
            meta = {"record_id": str(i), "phrase": obj}
            if self.config.task == "edit_replace":
                meta = {"record_id": str(i), "src_label": obj, "ref_label": self.config.targets[i]}
            yield new_row(key=make_key("edits", i, "rec"), task=self.config.task, dataset="edits", meta=meta)
