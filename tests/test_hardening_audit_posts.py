"""Issue 14 item 8: label posts are typed, bounded, and the token is checked before the body is read.

Before: a non-string ``comment`` answered 500, ``auditor: null`` was stored as "None", and the body was
read and parsed before the token check with no size limit (an unauthenticated 400 MB POST held 1.4 GB).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from fastapi.testclient import TestClient

from instructdiffusion_data.audit.app import create_app
from tests.helpers_audit import alignment_rows, keypoint_rows, write_output

TOKEN = "hardening-token"
H = {"X-Audit-Token": TOKEN}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("posts")
    root = base / "root"
    kp = write_output(root / "kp" / "v1", keypoint_rows(3), name="kp")
    write_output(root / "al" / "v1", alignment_rows(1), name="al")
    app = create_app(root, token=TOKEN, cache_dir=base / "cache", refresh_s=0)
    c = TestClient(app, raise_server_exceptions=False)
    row = c.get("/api/samples", params={"output": "kp/v1"}).json()["rows"][0]
    return {"app": app, "c": c, "root": root, "kp": kp, "row": row, "base": base}


def label(env, **kw):
    row = env["row"]
    return {"output": row["output"], "split": row["split"], "key": row["key"], "verdict": "accept",
            "auditor": "ann", "comment": "fine", **kw}


def stored(env) -> list[tuple]:
    from instructdiffusion_data.audit.labels import labels_path

    db = labels_path(env["kp"])
    if not db.is_file():
        return []
    with sqlite3.connect(db) as con:
        return con.execute("SELECT auditor, verdict, comment FROM labels ORDER BY id").fetchall()


@pytest.mark.parametrize("field, value", [
    ("comment", 5), ("comment", ["a"]), ("comment", {"a": 1}), ("auditor", None), ("auditor", 7),
    ("verdict", None), ("key", 3), ("output", ["kp/v1"]),
])
def test_wrong_types_are_422_naming_the_field(env, field, value):
    before = stored(env)
    res = env["c"].post("/api/labels", json=label(env, **{field: value}), headers=H)
    assert res.status_code == 422, res.text
    detail = res.json()["detail"]
    assert isinstance(detail, str) and detail.startswith(f"{field}:")
    assert stored(env) == before  # nothing written, in particular no auditor "None"


def test_good_labels_and_null_comment_still_work(env):
    c = env["c"]
    assert c.post("/api/labels", json=label(env, comment=None), headers=H).status_code == 200
    assert c.post("/api/labels", json=label(env, verdict="reject"), headers=H).status_code == 200
    assert stored(env)[-2:] == [("ann", "accept", ""), ("ann", "reject", "fine")]
    assert all(a != "None" for a, _, _ in stored(env))
    bad = c.post("/api/labels", content=b"{not json", headers={**H, "Content-Type": "application/json"})
    assert bad.status_code == 422 and isinstance(bad.json()["detail"], str)
    assert c.post("/api/labels", json=[1, 2], headers=H).status_code == 422


def test_pick_and_export_are_typed_too(env):
    c = env["c"]
    group = c.get("/api/align/groups", params={"output": "al/v1"}).json()["rows"][0]["group_id"]
    for body in ({"output": "al/v1", "group": group, "keys": "k", "auditor": "ann"},
                 {"output": "al/v1", "group": group, "keys": [1], "auditor": "ann"},
                 {"output": "al/v1", "group": group, "keys": [], "auditor": None},
                 {"output": "al/v1", "group": group, "keys": [], "auditor": "ann", "comment": 3}):
        res = c.post("/api/align/pick", json=body, headers=H)
        assert res.status_code == 422 and isinstance(res.json()["detail"], str), res.text
    assert c.post("/api/align/pick", json={"output": "al/v1", "group": group, "keys": [], "auditor": "ann"},
                  headers=H).status_code == 200
    assert c.post("/api/align/export", json={"output": 5}, headers=H).status_code == 422


def test_large_bodies_are_413(env):
    c = env["c"]
    big = label(env, comment="x" * (70 << 10))
    assert c.post("/api/labels", json=big, headers=H).status_code == 413

    def chunks():  # no Content-Length: counted while reading
        yield b'{"comment": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}'
    res = c.post("/api/labels", content=chunks(), headers={**H, "Content-Type": "application/json"})
    assert res.status_code == 413
    for path in ("/api/align/pick", "/api/align/export"):
        assert c.post(path, content=b"{" + b" " * (70 << 10) + b"}", headers=H).status_code == 413


def _asgi_post(app, path: str, headers: dict, total: int, chunk: int = 1 << 20) -> tuple[int, int]:
    """POST ``total`` bytes through the ASGI app, handing the body out one chunk per receive();
    returns (status, bytes the app pulled)."""
    pulled = 0
    status = None

    async def receive():
        nonlocal pulled
        if pulled >= total:
            return {"type": "http.disconnect"}
        n = min(chunk, total - pulled)
        pulled += n
        return {"type": "http.request", "body": b"x" * n, "more_body": pulled < total}

    async def send(msg):
        nonlocal status
        if msg["type"] == "http.response.start":
            status = msg["status"]

    hdrs = [(k.lower().encode(), v.encode()) for k, v in {"content-type": "application/json",
                                                           "content-length": str(total), **headers}.items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": hdrs,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    return status, pulled


@pytest.mark.parametrize("path", ["/api/labels", "/api/align/pick", "/api/align/export"])
def test_token_is_checked_before_the_body_is_read(env, path):
    total = 400 << 20  # 400 MB announced and offered
    status, pulled = _asgi_post(env["app"], path, {}, total)
    assert status == 401 and pulled <= 1 << 20, (status, pulled)
    status, pulled = _asgi_post(env["app"], path, {"x-audit-token": "wrong"}, total)
    assert status == 401 and pulled <= 1 << 20
    ro = create_app(env["root"], token=None, cache_dir=env["base"] / "ro-cache")
    status, pulled = _asgi_post(ro, path, H, total)
    assert status == 403 and pulled <= 1 << 20
    # with the token, the size limit answers before the body is read
    status, pulled = _asgi_post(env["app"], path, H, total)
    assert status == 413 and pulled <= 1 << 20
    # a lying Content-Length does not get past the counted limit either
    status, pulled = _asgi_post(env["app"], path, {**H, "content-length": "10"}, 200 << 10, chunk=8 << 10)
    assert status == 413 and pulled <= (64 << 10) + (8 << 10)
