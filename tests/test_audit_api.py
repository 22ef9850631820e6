"""The auditor API through the ASGI client, on small real outputs written by the ShardWriter."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from instructdiffusion_data.audit.app import create_app
from instructdiffusion_data.audit.labels import alignment_picks, labels_path, overrides
from instructdiffusion_data.imageio import decode, decode_gray
from tests.helpers_audit import (
    ROOTS,
    build_outputs,
    corrupt_member,
    keypoint_rows,
    make_format1,
    removal_rows,
    write_output,
)

TOKEN = "s3cret-token-for-tests"
HOSTILE = [
    "' OR 1=1 --",
    "x'); DROP TABLE samples; --",
    "\" OR \"\"=\"",
    "%",
    "_",
    "\\",
    "'; ATTACH '/tmp/evil.db' AS evil; --",
    "1; SELECT * FROM read_csv('/etc/passwd')",
    "aesthetic_tgt<5.0' OR '1'='1",
    "\u00e9\u4e2d\U0001f600",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("audit")
    root = base / "root"
    outs = build_outputs(root)
    app = create_app(root, token=TOKEN, cache_dir=base / "cache", refresh_s=0)
    return {"root": root, "outs": outs, "client": TestClient(app), "app": app, "base": base}


def sidecar_rows(out: Path) -> list[dict]:
    rows = []
    for split in ("train", "rejected"):
        for p in sorted((out / split).glob("*.parquet")):
            for r in pq.read_table(p).to_pylist():
                rows.append({**r, "split": split, "meta": json.loads(r["meta"])})
    return rows


def all_rows(env) -> list[dict]:
    return [{**r, "output": name} for name, out in env["outs"].items() for r in sidecar_rows(out)]


def classes(r: dict) -> list[str]:
    """A sidecar row's drop classes, in order (its drop_detail entries)."""
    return [json.loads(d)["class"] for d in r.get("drop_detail") or []]


def resolved(obj, roots=ROOTS):
    """``obj`` with the root tokens of its strings expanded, as the sample view shows it."""
    from instructdiffusion_data.roots import resolve_path

    if isinstance(obj, str):
        return resolve_path(obj, roots)
    if isinstance(obj, dict):
        return {k: resolved(v, roots) for k, v in obj.items()}
    if isinstance(obj, list):
        return [resolved(v, roots) for v in obj]
    return obj


def get_all(client, **params) -> list[dict]:
    res = client.get("/api/samples", params={**params, "page_size": 200})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["total"] == len(body["rows"])
    return body["rows"]


def test_outputs_and_counts_match_the_sidecars(env):
    c = env["client"]
    outs = {o["output"]: o for o in c.get("/api/outputs").json()}
    assert set(outs) == set(env["outs"])
    for name, out in env["outs"].items():
        rows = sidecar_rows(out)
        kept = [r for r in rows if r["keep"]]
        assert outs[name]["splits"]["train"]["rows"] == len(kept)
        assert outs[name]["splits"]["rejected"]["rows"] == len(rows) - len(kept)
        counts = c.get("/api/counts", params={"output": name}).json()
        assert counts["splits"].get("train", 0) == len(kept)
        tasks = {}
        for r in rows:
            tasks[r["task"]] = tasks.get(r["task"], 0) + 1
        assert counts["tasks"] == tasks
    counts = c.get("/api/counts", params={"output": "ieiw_removal/v1", "split": "rejected"}).json()
    expect, first = {}, {}
    for r in sidecar_rows(env["outs"]["ieiw_removal/v1"]):
        for part in classes(r):  # the drop classes as written (drop_detail), never parsed from drop_reason
            expect[part] = expect.get(part, 0) + 1
        if r["drop_class"]:
            first[r["drop_class"]] = first.get(r["drop_class"], 0) + 1
    assert counts["reasons"] == expect
    assert counts["reasons"]["image file missing"] == 1
    assert set(expect) == {"aesthetic_tgt below minimum", "giqa_tgt below minimum", "image file missing"}
    # drop_classes: the first class of each row, what the manifest counts
    manifest = json.loads((env["outs"]["ieiw_removal/v1"] / "manifest.json").read_text())
    assert counts["drop_classes"] == first == manifest["splits"]["rejected"]["drop_reasons"]


def test_filter_by_reason_task_dataset_and_text(env):
    c = env["client"]
    truth = all_rows(env)
    got = get_all(c, reason="aesthetic_tgt below minimum")
    want = {r["key"] for r in truth if "aesthetic_tgt below minimum" in classes(r)}
    assert want and {r["key"] for r in got} == want
    assert all(not r["keep"] for r in got)
    got = get_all(c, reason="giqa_tgt below minimum")  # a second class of a row counts too
    want = {r["key"] for r in truth if "giqa_tgt below minimum" in classes(r)}
    assert want and {r["key"] for r in got} == want
    assert any(r["drop_class"] != "giqa_tgt below minimum" for r in truth if r["key"] in want)
    assert get_all(c, reason="aesthetic_tgt<5.0") == []  # the old text is no class of a format 2 output
    got = get_all(c, task="keypoint", split="train")
    assert {r["key"] for r in got} == {r["key"] for r in truth if r["task"] == "keypoint" and r["keep"]}
    got = get_all(c, q="LEFT shoulder")
    assert {r["key"] for r in got} == {r["key"] for r in truth if "left shoulder" in (r["instruction"] or "")}
    got = get_all(c, reason="image file missing")
    assert len(got) == 1 and got[0]["has_src"] is False and got[0]["has_tgt"] is False
    assert all(r["has_src"] and r["has_tgt"] for r in get_all(c, output="keypoints_coco/v1"))
    got = get_all(c, dataset="sa1b", output="ieiw_replacement/v1")
    assert len(got) == 4 and all(r["dataset"] == "sa1b" for r in got)


def test_score_ranges_and_sort_by_score(env):
    c = env["client"]
    got = get_all(c, score="aesthetic_tgt:4.5:5.3")
    truth = [r for r in all_rows(env) if 4.5 <= r["meta"].get("scores", {}).get("aesthetic_tgt", -1) <= 5.3]
    assert {r["key"] for r in got} == {r["key"] for r in truth} and got
    rows = get_all(c, output="ieiw_removal/v1", sort="score:giqa_tgt", order="desc")
    vals = [r["scores"].get("giqa_tgt") for r in rows]
    present = [v for v in vals if v is not None]
    assert present == sorted(present, reverse=True) and vals[-1] is None  # the imageless row has no score
    res = c.get("/api/samples", params={"score": "aesthetic_tgt:abc:"})
    assert res.status_code == 422
    # the values come from the typed float32 columns: the page's name and the column's own name agree
    typed = get_all(c, score="aesthetic_classical_tgt:4.5:5.3")
    assert {r["key"] for r in typed} == {r["key"] for r in got}
    asc = [r["key"] for r in get_all(c, output="ieiw_removal/v1", sort="score:aesthetic_tgt")]
    assert asc == [r["key"] for r in get_all(c, output="ieiw_removal/v1", sort="score:aesthetic_classical_tgt")]
    g = next(r for r in rows if r["scores"].get("giqa_tgt") is not None)
    assert g["scores"]["giqa_tgt"] == round(g["scores"]["giqa_tgt"], 6)  # 0.2, not 0.20000000298023224
    assert {n for n in c.get("/api/counts").json()["score_names"]} >= {"aesthetic_tgt", "giqa_tgt", "aesthetic_src"}


def test_pagination_is_bounded_and_complete(env):
    c = env["client"]
    total = c.get("/api/samples", params={"page_size": 1}).json()["total"]
    keys = []
    for page in range(100):
        body = c.get("/api/samples", params={"page_size": 5, "page": page}).json()
        keys += [(r["output"], r["key"]) for r in body["rows"]]
        if not body["rows"]:
            break
    assert len(keys) == total == len(set(keys)) == len(all_rows(env))
    assert c.get("/api/samples", params={"page_size": 201}).status_code == 422
    assert c.get("/api/samples", params={"page_size": 0}).status_code == 422
    assert c.get("/api/samples", params={"page": -1}).status_code == 422
    assert c.get("/api/align/groups", params={"page_size": 100000}).status_code == 422


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_filter_values_are_data_not_sql(env, hostile):
    c = env["client"]
    before = c.get("/api/counts").json()["total"]
    for field in ("task", "dataset", "reason"):
        res = c.get("/api/samples", params={field: hostile})
        assert res.status_code == 200, (field, res.text)
        assert res.json()["total"] == 0, (field, hostile)
    # text search matches the literal string (wildcards % _ \\ escaped), in instruction or key
    want = sum(1 for r in all_rows(env) if hostile.lower() in (r["instruction"] or "").lower()
               or hostile.lower() in r["key"].lower())
    res = c.get("/api/samples", params={"q": hostile})
    assert res.status_code == 200 and res.json()["total"] == want, hostile
    res = c.get("/api/samples", params={"score": f"{hostile}:0:1"})
    assert res.status_code in (200, 422) and (res.status_code == 422 or res.json()["total"] == 0)
    res = c.get("/api/samples", params={"sort": f"score:{hostile}"})
    assert res.status_code == 200 and res.json()["total"] == before
    res = c.get("/api/samples", params={"sort": hostile, "page_size": 200})
    assert res.status_code == 200 and res.json()["total"] == before
    assert c.get("/api/sample", params={"output": "ieiw_removal/v1", "split": "train", "key": hostile}).status_code == 404
    assert c.get("/api/align/group", params={"output": "alignment_bench/v1", "group": hostile}).status_code == 404
    assert c.get("/api/counts").json()["total"] == before


def test_path_traversal_is_404(env):
    c = env["client"]
    key = get_all(c, output="keypoints_coco/v1")[0]["key"]
    for output in ("../../etc", "/etc", "keypoints_coco/v1/../../keypoints_coco/v1", "keypoints_coco/v1/..",
                   str(env["outs"]["keypoints_coco/v1"]), "keypoints_coco/v1/train"):
        res = c.get("/api/image", params={"output": output, "split": "train", "key": key, "kind": "src"})
        assert res.status_code == 404, output
        assert c.get("/api/samples", params={"output": output}).status_code == 404
    assert c.get("/api/image", params={"output": "keypoints_coco/v1", "split": "../train", "key": key}).status_code == 404
    for url in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/../../writer.py",
                "/static//etc/passwd", "/../../etc/passwd"):
        res = c.get(url)
        assert res.status_code == 404, url
        assert b"import" not in res.content and b"root:" not in res.content


def test_tar_path_outside_output_in_sidecar_is_404(env, tmp_path):
    root = tmp_path / "root"
    out = write_output(root / "kp" / "v1", keypoint_rows(2), name="kp")
    secret = tmp_path / "secret.tar"
    secret.write_bytes(b"\xff\xd8" + b"secret" * 100)
    p = out / "train" / "000000.parquet"
    t = pq.read_table(p)
    rows = t.to_pylist()
    for r in rows:
        r["tar"] = "../../../../secret.tar"
    pq.write_table(t.from_pylist(rows, schema=t.schema), p)
    c = TestClient(create_app(root, cache_dir=tmp_path / "cache"))
    res = c.get("/api/image", params={"output": "kp/v1", "split": "train", "key": rows[0]["key"], "kind": "src"})
    assert res.status_code == 404 and b"secret" not in res.content


def test_images_come_from_the_tar_members(env):
    c = env["client"]
    out = env["outs"]["ieiw_removal/v1"]
    row = next(r for r in sidecar_rows(out) if r["keep"])
    with tarfile.open(out / row["split"] / row["tar"]) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
    params = {"output": "ieiw_removal/v1", "split": row["split"], "key": row["key"]}
    for kind in ("src", "tgt", "mask"):
        res = c.get("/api/image", params={**params, "kind": kind})
        assert res.status_code == 200
        assert res.content == members[row[f"{kind}_member"]]
    thumb = c.get("/api/image", params={**params, "kind": "tgt", "thumb": 1})
    assert thumb.headers["content-type"] == "image/jpeg" and thumb.headers["x-content-type-options"] == "nosniff"
    small, full = decode(thumb.content), decode(members[row["tgt_member"]])
    assert small.shape == full.shape  # 96x72 fits the 256 thumbnail box: not upscaled
    assert np.abs(small.astype(int) - full.astype(int)).mean() < 6
    ov = c.get("/api/image", params={**params, "kind": "mask", "thumb": 1, "style": "overlay"})
    import cv2
    rgba = cv2.imdecode(np.frombuffer(ov.content, np.uint8), cv2.IMREAD_UNCHANGED)
    mask = decode_gray(members[row["mask_member"]])
    assert rgba.shape[2] == 4 and ((rgba[..., 3] > 0) == (mask > 0)).all()
    assert c.get("/api/image", params={**params, "kind": "bogus"}).status_code == 422


def test_thumbnail_cache_hits_on_disk(env):
    c, thumbs = env["client"], env["app"].state.thumbs
    row = get_all(c, output="keypoints_coco/v1")[1]
    params = {"output": row["output"], "split": row["split"], "key": row["key"], "kind": "src", "thumb": 1}
    first = c.get("/api/image", params=params).content
    hits, misses = thumbs.hits, thumbs.misses
    second = c.get("/api/image", params=params).content
    assert second == first and thumbs.hits == hits + 1 and thumbs.misses == misses
    cached = [p for p in (env["base"] / "cache").rglob("*.jpg") if p.read_bytes() == first]
    assert len(cached) == 1


def test_corrupt_member_gives_error_tile_not_500(tmp_path):
    root = tmp_path / "root"
    out = write_output(root / "kp" / "v1", keypoint_rows(3), name="kp")
    bad = sidecar_rows(out)[1]["key"]
    corrupt_member(out, bad, "tgt")
    c = TestClient(create_app(root, token=TOKEN, cache_dir=tmp_path / "cache"), raise_server_exceptions=False)
    grid = c.get("/api/samples", params={"output": "kp/v1"})
    assert grid.status_code == 200 and bad in [r["key"] for r in grid.json()["rows"]]
    for thumb in (0, 1):
        res = c.get("/api/image", params={"output": "kp/v1", "split": "train", "key": bad, "kind": "tgt", "thumb": thumb})
        assert res.status_code == 200 and res.headers["content-type"] == "image/png"
        assert "corrupt" in res.headers["x-audit-error"]
        assert decode(res.content).shape == (160, 160, 3)
    ok = c.get("/api/image", params={"output": "kp/v1", "split": "train", "key": bad, "kind": "src", "thumb": 1})
    assert ok.status_code == 200 and "x-audit-error" not in ok.headers
    assert c.get("/api/sample", params={"output": "kp/v1", "split": "train", "key": bad}).status_code == 200
    # a truncated tar (member past the end of the file) is an error tile too
    tar = out / "train" / "000000.tar"
    tar.write_bytes(tar.read_bytes()[:1024])
    last = sidecar_rows(out)[-1]["key"]
    res = c.get("/api/image", params={"output": "kp/v1", "split": "train", "key": last, "kind": "tgt"})
    assert res.status_code == 200 and "truncated" in res.headers["x-audit-error"]


def test_sample_view_meta_pair_and_reference(env):
    c = env["client"]
    row = get_all(c, output="ieiw_removal/v1", task="edit_remove", split="train")[0]
    body = c.get("/api/sample", params={"output": row["output"], "split": row["split"], "key": row["key"]}).json()
    truth = next(r for r in sidecar_rows(env["outs"]["ieiw_removal/v1"]) if r["key"] == row["key"])
    assert truth["meta"]["file"].startswith("{source.images}/")  # written with its root token ...
    assert body["meta"] == resolved(truth["meta"])  # ... shown resolved through the manifest's roots
    assert body["meta"]["file"] == f"/data/phrasecut/images/{truth['meta']['record_id']}.jpg"
    assert body["roots"] == ROOTS
    missing = get_all(c, reason="image file missing")[0]
    body_m = c.get("/api/sample", params={"output": missing["output"], "split": "rejected",
                                           "key": missing["key"]}).json()
    assert body_m["drops"] == [{"class": "image file missing", "file": "/data/phrasecut/images/missing.jpg",
                                "record": "missing"}]
    assert "{source." not in json.dumps(body_m)
    assert [p["task"] for p in body["pair"]] == ["edit_add"]
    assert body["pair"][0]["key"] != row["key"]
    rep = get_all(c, output="ieiw_replacement/v1", dataset="sa1b")[0]
    body = c.get("/api/sample", params={"output": rep["output"], "split": rep["split"], "key": rep["key"]}).json()
    assert body["reference"]["fields"]["key"] == body["meta"]["reference"]["key"]
    assert body["reference"]["fields"]["source_image"].startswith("/data/sa1b/")  # extra keys kept, resolved
    ref = c.get("/api/reference", params={"output": rep["output"], "split": rep["split"], "key": rep["key"]})
    gallery = next(r for r in sidecar_rows(env["outs"]["ieiw_replacement/v1"])
                   if r["key"] == body["meta"]["reference"]["key"])
    with tarfile.open(env["outs"]["ieiw_replacement/v1"] / gallery["split"] / gallery["tar"]) as tf:
        assert ref.status_code == 200 and ref.content == tf.extractfile(gallery["src_member"]).read()
    kp = get_all(c, output="keypoints_coco/v1")[0]
    assert c.get("/api/reference", params={"output": kp["output"], "split": kp["split"],
                                            "key": kp["key"]}).status_code == 404


def test_token_rules_and_append_only_labels(env, tmp_path):
    c = env["client"]
    row = get_all(c, output="keypoints_coco/v1")[2]
    body = {"output": row["output"], "split": row["split"], "key": row["key"], "verdict": "reject",
            "comment": "x'); DROP TABLE labels; --", "auditor": "ann"}
    assert c.post("/api/labels", json=body).status_code == 401
    assert c.post("/api/labels", json=body, headers={"X-Audit-Token": TOKEN + "x"}).status_code == 401
    assert c.post("/api/auth", headers={"X-Audit-Token": "nope"}).status_code == 401
    assert c.post("/api/auth", headers={"X-Audit-Token": TOKEN}).status_code == 200
    h = {"X-Audit-Token": TOKEN}
    assert c.post("/api/labels", json={**body, "auditor": ""}, headers=h).status_code == 400
    assert c.post("/api/labels", json={**body, "verdict": "align_pick"}, headers=h).status_code == 400
    assert c.post("/api/labels", json={**body, "key": "nope"}, headers=h).status_code == 404
    assert c.post("/api/labels", json=body, headers=h).status_code == 200
    assert c.post("/api/labels", json={**body, "verdict": "accept", "auditor": "bob", "comment": ""},
                  headers=h).status_code == 200
    out = env["outs"]["keypoints_coco/v1"]
    db = labels_path(out)  # beside the output: <root>/keypoints_coco/.audit/v1/labels.sqlite
    assert db == out.parent / ".audit" / out.name / "labels.sqlite"
    con = sqlite3.connect(db)
    cols = [(r[1], r[2], r[5]) for r in con.execute("PRAGMA table_info(labels)")]
    assert cols == [("id", "INTEGER", 1), ("ts", "TEXT", 0), ("auditor", "TEXT", 0), ("output", "TEXT", 0),
                    ("key", "TEXT", 0), ("verdict", "TEXT", 0), ("comment", "TEXT", 0), ("group_id", "TEXT", 0)]
    rows = con.execute("SELECT auditor, output, key, verdict, comment FROM labels ORDER BY id").fetchall()
    assert rows == [("ann", "keypoints_coco/v1", row["key"], "reject", "x'); DROP TABLE labels; --"),
                    ("bob", "keypoints_coco/v1", row["key"], "accept", "")]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE labels SET verdict = 'reject'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM labels")
    con.close()
    assert overrides(out) == {row["key"]: "accept"}  # the newest wins
    grid = {r["key"]: r["label"] for r in get_all(c, output="keypoints_coco/v1")}
    assert grid[row["key"]] == "accept" and sum(v is not None for v in grid.values()) == 1
    assert [r["key"] for r in get_all(c, label="accept")] == [row["key"]]
    assert [r["key"] for r in get_all(c, label="labelled", output="keypoints_coco/v1")] == [row["key"]]
    assert get_all(c, label="reject") == []
    assert c.get("/api/samples", params={"label": "' OR 1=1 --"}).status_code == 422
    hist = c.get("/api/labels", params={"output": "keypoints_coco/v1", "key": row["key"]}).json()
    assert [x["verdict"] for x in hist] == ["accept", "reject"]
    # a server without a token is read-only whatever the client sends
    ro = TestClient(create_app(env["root"], token=None, cache_dir=tmp_path / "c"))
    assert ro.get("/api/info").json()["writable"] is False
    assert ro.post("/api/labels", json=body, headers=h).status_code == 403
    assert ro.post("/api/align/pick", json={"output": "alignment_bench/v1", "group": "bench-0", "keys": []},
                   headers=h).status_code == 403


def test_alignment_picks_and_export(env, tmp_path):
    from instructdiffusion_data.cli import main as idd

    c, h = env["client"], {"X-Audit-Token": TOKEN}
    groups = c.get("/api/align/groups", params={"output": "alignment_bench/v1"}).json()
    assert groups["total"] == 3 and all(g["candidates"] == 4 for g in groups["rows"])
    g0, g1, g2 = (g["group_id"] for g in groups["rows"])
    cands = c.get("/api/align/group", params={"output": "alignment_bench/v1", "group": g0}).json()["candidates"]
    assert [x["guidance_scale"] for x in cands] == [3.0, 5.0, 7.5, 10.0]
    k = [x["key"] for x in cands]
    pick = lambda group, keys, who="ann": c.post("/api/align/pick", headers=h, json={
        "output": "alignment_bench/v1", "group": group, "keys": keys, "auditor": who})
    assert pick(g0, k[:3]).status_code == 400  # at most two
    other = c.get("/api/align/group", params={"output": "alignment_bench/v1", "group": g1}).json()["candidates"]
    assert pick(g0, [other[0]["key"]]).status_code == 422  # not a candidate of this group
    assert pick(g0, [k[3]]).status_code == 200
    assert pick(g0, [k[1], k[2]]).status_code == 200  # a later submission replaces the earlier one
    assert pick(g1, [other[0]["key"]], who="bob").status_code == 200
    assert pick(g1, [], who="bob").status_code == 200  # bob changed his mind: none is good
    g2keys = c.get("/api/align/group", params={"output": "alignment_bench/v1", "group": g2}).json()["candidates"]
    assert pick(g2, [g2keys[0]["key"]], who="cy").status_code == 200
    labels = labels_path(env["outs"]["alignment_bench/v1"])
    picks = alignment_picks(labels)
    assert sorted(p["key"] for p in picks) == sorted([k[1], k[2], g2keys[0]["key"]])

    out = tmp_path / "align"
    assert idd(["export-alignment", str(labels), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["rows"] == 3 and manifest["splits"]["rejected"]["rows"] == 0
    exported = sidecar_rows(out)
    assert sorted(r["key"] for r in exported) == sorted(p["key"] for p in picks)
    src = {r["key"]: r for r in sidecar_rows(env["outs"]["alignment_bench/v1"])}
    import webdataset as wds
    samples = list(wds.WebDataset(str(out / "train" / "000000.tar"), shardshuffle=False))
    assert len(samples) == 3
    with tarfile.open(env["outs"]["alignment_bench/v1"] / "train" / "000000.tar") as tf:
        for s in samples:
            key = s["__key__"]
            assert s["tgt.jpg"] == tf.extractfile(src[key]["tgt_member"]).read()
            assert s["txt"].decode() == src[key]["instruction"]
            meta = json.loads(s["json"])["meta"]
            assert meta["alignment"]["group_id"] in (g0, g2) and meta["guidance_scale"] == src[key]["meta"]["guidance_scale"]
    # the trainer reads it as an output (data.outputs) and decodes its pairs
    from trainer.data import decode_pair
    from trainer.datasets import specs_from_outputs

    spec = specs_from_outputs([str(out)], {})[0]
    assert spec.name == "alignment" and spec.samples == 3 and len(spec.shards) == 1
    # a weight of 0 in the manifest (benchmarks, candidates) keeps an output out of data.outputs globs,
    # unless the trainer config weights it
    from instructdiffusion_data.errors import ConfigError

    man = out / "manifest.json"
    saved = man.read_text()
    man.write_text(json.dumps(dict(json.loads(saved), mixture_weight=0)))
    with pytest.raises(ConfigError, match="positive weight"):
        specs_from_outputs([str(out)], {})
    assert specs_from_outputs([str(out)], {"alignment": 1.0})[0].samples == 3
    man.write_text(saved)
    src_img, tgt_img, text, doc = decode_pair(samples[0])
    assert src_img.shape == tgt_img.shape and text and doc["meta"]["alignment"]["auditor"] in ("ann", "cy")
    # exporting again over an earlier export replaces it; any other non-empty folder is refused
    assert idd(["export-alignment", str(labels), "--out", str(out)]) == 0
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    assert idd(["export-alignment", str(labels), "--out", str(tmp_path / "busy")]) == 2
    # the page's export button writes the same under the output's audit folder
    res = c.post("/api/align/export", json={"output": "alignment_bench/v1"}, headers=h)
    assert res.status_code == 200 and res.json()["splits"]["train"] == 3
    assert c.post("/api/align/export", json={"output": "alignment_bench/v1"}).status_code == 401


def test_histograms_draw_filter_thresholds(env):
    c = env["client"]
    hs = c.get("/api/histograms", params={"output": "ieiw_removal/v1"}).json()
    by = {(h["dataset"], h["score"]): h for h in hs}
    h = by[("phrasecut", "aesthetic_tgt")]
    assert {t["value"] for t in h["thresholds"]} == {5.0}
    assert {t["label"] for t in h["thresholds"]} == {"rule aesthetic_tgt<5, thresholds.aesthetic_tgt_min"}
    truth = [r["meta"]["scores"]["aesthetic_tgt"] for r in sidecar_rows(env["outs"]["ieiw_removal/v1"])
             if r["meta"].get("scores")]
    assert sum(h["kept"]) + sum(h["dropped"]) == len(truth)
    assert h["min"] == pytest.approx(min(truth)) and h["max"] == pytest.approx(max(truth))  # float32 columns
    assert sum(h["dropped"]) == sum(1 for r in sidecar_rows(env["outs"]["ieiw_removal/v1"])
                                    if r["meta"].get("scores") and not r["keep"])
    assert {t["value"] for t in by[("phrasecut", "giqa_tgt")]["thresholds"]} == {0.3}
    assert by[("phrasecut", "aesthetic_src")]["thresholds"] == []


def test_new_output_shows_up_without_restart(env, tmp_path):
    root = tmp_path / "root"
    write_output(root / "a" / "v1", keypoint_rows(2), name="a")
    c = TestClient(create_app(root, cache_dir=tmp_path / "cache", refresh_s=0))
    assert [o["output"] for o in c.get("/api/outputs").json()] == ["a/v1"]
    write_output(root / "b" / "v1", keypoint_rows(3), name="b")
    assert [o["output"] for o in c.get("/api/outputs").json()] == ["a/v1", "b/v1"]
    assert c.get("/api/samples", params={"output": "b/v1"}).json()["total"] == 3
    shutil.rmtree(root / "a")
    assert c.get("/api/samples", params={"output": "a/v1"}).status_code == 404


def test_cli_binds_loopback_by_default_and_needs_the_token_variable(monkeypatch, tmp_path):
    from instructdiffusion_data.cli import build_parser
    from instructdiffusion_data.cli import main as idd

    args = build_parser().parse_args(["audit", str(tmp_path)])
    assert args.host == "127.0.0.1" and args.port == 8080 and args.token_env is None
    monkeypatch.delenv("IDD_TEST_NO_SUCH_VAR", raising=False)
    assert idd(["audit", str(tmp_path), "--token-env", "IDD_TEST_NO_SUCH_VAR"]) == 2
    assert idd(["audit", str(tmp_path / "missing")]) == 2


def test_reference_patch_sources(tmp_path):
    """meta["reference"] through contracts.ReferencePatch: the embedded RGBA patch, the gallery's full patch,
    the source file cropped to bbox (its {source.x} token resolved through the manifest's roots, read only
    under the root or an --allow-dir), a malformed reference (404, the error in the sample view), and
    patches that do not decode or are too large (error tiles)."""
    import base64

    import cv2

    from instructdiffusion_data.imageio import encode_png
    from tests.test_hardening_image_limits import huge_png

    root, outside = tmp_path / "root", tmp_path / "demo_data"
    outside.mkdir()
    big = np.zeros((40, 50, 3), np.uint8)
    big[10:20, 5:25] = (0, 200, 0)
    (outside / "ref.png").write_bytes(encode_png(big))
    root.mkdir()
    (root / "inside.png").write_bytes(encode_png(big))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 77
    rgba[2:6, 2:6, 3] = 255  # the object's mask
    patch = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))[1].tobytes()
    gallery = root / "gallery"
    (gallery / "patches").mkdir(parents=True)
    (gallery / "patches" / "000000.tar").write_bytes(b"\0" * 512 + patch + b"\0" * 100)
    b64 = lambda data: base64.b64encode(data).decode()
    refs = [{"patch_png_b64": b64(patch), "label": "dog"},
            {"file": str(root / "inside.png"), "bbox": [5, 10, 20, 10]},
            {"file": "{source.refs}/ref.png", "bbox": [5, 10, 20, 10], "label": "cat"},
            "no/such/file.png",
            {"patch_png_b64": b64(b"not an image")},
            {"gallery": "{stages.2.gallery}", "patch": {"tar": "patches/000000.tar", "offset": 512, "size": len(patch)}},
            {"patch_png_b64": b64(huge_png())}]
    rows = keypoint_rows(len(refs))
    for r, ref in zip(rows, refs):
        r["meta"]["reference"] = ref
    write_output(root / "rep" / "v1", rows, name="rep",
                 roots={"source.refs": str(outside), "stages.2.gallery": str(gallery)})
    keys = [r["key"] for r in rows]
    for allow, expect in (([], [200, 200, 404, 404, 200, 200, 200]), ([outside], [200, 200, 200, 404, 200, 200, 200])):
        c = TestClient(create_app(root, cache_dir=tmp_path / "cache", allow_dirs=allow))
        got = [c.get("/api/reference", params={"output": "rep/v1", "split": "train", "key": k}) for k in keys]
        assert [g.status_code for g in got] == expect
        for i in (0, 5):  # RGBA, the mask as alpha: from meta and from the gallery
            assert got[i].headers["content-type"] == "image/png" and "x-audit-error" not in got[i].headers
            back = cv2.cvtColor(cv2.imdecode(np.frombuffer(got[i].content, np.uint8), cv2.IMREAD_UNCHANGED),
                                cv2.COLOR_BGRA2RGBA)
            assert np.array_equal(back, rgba)
        crop = decode(got[1].content)
        assert crop.shape == (10, 20, 3) and (crop == (0, 200, 0)).all()
        if allow:
            assert np.array_equal(decode(got[2].content), crop)  # {source.refs} resolved to demo_data
        assert "corrupt" in got[4].headers["x-audit-error"]
        assert "too large" in got[6].headers["x-audit-error"]
        body = c.get("/api/sample", params={"output": "rep/v1", "split": "train", "key": keys[2]}).json()
        assert body["reference"]["fields"]["label"] == "cat"
        assert body["reference"]["fields"]["file"] == str(outside / "ref.png")
        body = c.get("/api/sample", params={"output": "rep/v1", "split": "train", "key": keys[3]}).json()
        assert body["reference"]["fields"] == {"value": "no/such/file.png"}
        assert "reference is not an object" in body["reference"]["error"]


def test_thresholds_from_the_quality_filter_layout():
    from instructdiffusion_data.audit.query import (
        thresholds_from_filter,
        thresholds_from_reason,
    )

    doc = json.dumps({"thresholds": {"aesthetic_tgt_min": 4.5, "giqa_tgt_min": 0.2, "aesthetic_diff_max": 1.5},
                      "classical": {"aesthetic_tgt": {"sharpness": 9.0}}, "prior_drop": None, "audit": "accept"})
    assert thresholds_from_filter(doc, "aesthetic_tgt") == {"thresholds.aesthetic_tgt_min": 4.5}
    assert thresholds_from_filter(doc, "aesthetic_diff") == {"thresholds.aesthetic_diff_max": 1.5}
    assert thresholds_from_filter(doc, "giqa_src") == {}
    assert thresholds_from_filter("{not json", "x") == {} and thresholds_from_filter(None, "x") == {}
    assert thresholds_from_reason("aesthetic_tgt<4.5", "aesthetic_tgt") == {"rule aesthetic_tgt<4.5": 4.5}
    assert thresholds_from_reason("aesthetic_tgt<x", "aesthetic_tgt") == {}
    # the rule classes of models/quality.py: the threshold is a drop detail, not part of the class
    from instructdiffusion_data.models.quality import failures

    f = failures({"aesthetic_tgt": 3.0, "background_change": 40.0},
                 {"aesthetic_tgt_min": 4.5, "background_change_max": 12.0})
    assert [x.cls for x in f] == ["aesthetic_tgt below minimum", "background_change above maximum"]
    assert thresholds_from_reason(f[0].cls, "aesthetic_tgt", f[0].detail()["threshold"]) == {
        "rule aesthetic_tgt<4.5": 4.5}
    assert thresholds_from_reason(f[1].cls, "background_change", 12.0) == {"rule background_change>12": 12.0}
    assert thresholds_from_reason(f[0].cls, "aesthetic_laion_tgt", 4.5) == {"rule aesthetic_tgt<4.5": 4.5}
    assert thresholds_from_reason(f[0].cls, "aesthetic_tgt") == {}  # no threshold detail: nothing drawn
    assert thresholds_from_reason(f[0].cls, "giqa_tgt", 4.5) == {}
    assert thresholds_from_reason("aesthetic_tgt below minimum (value=3.0, threshold=4.5)", "aesthetic_tgt") == {
        "rule aesthetic_tgt<4.5": 4.5}  # the display text of a format 1 sidecar
    assert thresholds_from_reason("clip_sim_dir below minimum", "clip_sim_dir", 0.2) == {"rule clip_sim_dir<0.2": 0.2}


def test_format1_sidecars_fall_back_to_the_reason_text(tmp_path):
    """Sidecars without drop_class / drop_detail / typed scores (format 1): classes are the reason text without
    its trailing details, thresholds come from the old ``aesthetic_tgt<5.0`` text and scores from meta. A split
    mixing both formats (an output taken down or filtered shard by shard) is read as one."""
    root = tmp_path / "root"
    old = write_output(root / "old" / "v1", removal_rows(), name="old", per_shard=7)
    mixed = write_output(root / "mixed" / "v1", removal_rows(), name="mixed", per_shard=7)
    new_rows = {r["key"]: r for r in sidecar_rows(old)}
    make_format1(old)
    shards = sorted((mixed / "rejected").glob("*.parquet"))
    assert len(shards) >= 2
    mixed_copy = tmp_path / "first"
    mixed_copy.mkdir()
    shutil.copy(shards[0], mixed_copy / "x.parquet")
    make_format1(mixed)  # then put one format 2 shard back: rejected/ holds both formats
    shutil.copy(mixed_copy / "x.parquet", shards[0])
    assert "drop_class" not in pq.read_schema(shards[1]).names and "drop_class" in pq.read_schema(shards[0]).names
    c = TestClient(create_app(root, cache_dir=tmp_path / "cache", refresh_s=0))
    for output in ("old/v1", "mixed/v1"):
        counts = c.get("/api/counts", params={"output": output, "split": "rejected"}).json()
        expect = {}
        for r in new_rows.values():
            for cls in classes(r):
                cls = {"aesthetic_tgt below minimum": "aesthetic_tgt<5.0",
                       "giqa_tgt below minimum": "giqa_tgt<0.3"}.get(cls, cls)
                expect[cls] = expect.get(cls, 0) + 1
        if output == "mixed/v1":  # the format 2 shard's rows keep their classes
            back = {r["key"]: r for r in pq.read_table(shards[0]).to_pylist()}
            for r in back.values():
                for cls in classes(r):
                    old_cls = {"aesthetic_tgt below minimum": "aesthetic_tgt<5.0",
                               "giqa_tgt below minimum": "giqa_tgt<0.3"}.get(cls, cls)
                    expect[old_cls] -= 1
                    expect[cls] = expect.get(cls, 0) + 1
            expect = {k: v for k, v in expect.items() if v}
        assert counts["reasons"] == expect, output
        assert counts["reasons"]["image file missing"] == 1  # "(file=..., record=...)" stripped
        rows = get_all(c, output=output, reason="image file missing")
        assert len(rows) == 1
        hs = {h["score"]: h for h in c.get("/api/histograms", params={"output": output}).json()}
        assert {t["value"] for t in hs["aesthetic_tgt"]["thresholds"]} == {5.0}
        assert {t["value"] for t in hs["giqa_tgt"]["thresholds"]} == {0.3}
        # the scores of format 1 rows come from meta (no typed columns), exactly
        got = {r["key"]: r["scores"] for r in get_all(c, output=output)}
        for key, sc in got.items():
            want = new_rows[key]["meta"].get("scores") or {}
            assert set(sc) == set(want)
            assert all(sc[k] == pytest.approx(v, rel=1e-6) for k, v in want.items())


def test_alignment_export_lands_beside_the_labels(env):
    c, h = env["client"], {"X-Audit-Token": TOKEN}
    group = c.get("/api/align/groups", params={"output": "alignment_bench/v1"}).json()["rows"][0]
    assert c.post("/api/align/pick", headers=h, json={"output": "alignment_bench/v1", "group": group["group_id"],
                                                     "keys": group["keys"][:1], "auditor": "zed"}).status_code == 200
    res = c.post("/api/align/export", json={"output": "alignment_bench/v1"}, headers=h).json()
    assert res["out"] == "alignment_bench/.audit/v1/alignment"  # outside the output: only the engine writes there
    out = env["root"] / res["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["roots"] == ROOTS  # the copied rows' path tokens still resolve
    assert not (env["outs"]["alignment_bench/v1"] / "audit").exists()


def test_unreadable_sidecar_skips_that_split_only(tmp_path):
    root = tmp_path / "root"
    write_output(root / "good" / "v1", keypoint_rows(2), name="good")
    bad = write_output(root / "bad" / "v1", keypoint_rows(3), name="bad")
    (bad / "train" / "000000.parquet").write_bytes(b"PAR1 this is not parquet")
    c = TestClient(create_app(root, cache_dir=tmp_path / "cache"))
    outs = {o["output"]: o for o in c.get("/api/outputs").json()}
    assert outs["good/v1"]["errors"] == [] and "train: sidecars unreadable" in outs["bad/v1"]["errors"][0]
    assert c.get("/api/samples", params={"output": "good/v1"}).json()["total"] == 2
    assert c.get("/api/samples", params={"output": "bad/v1"}).json()["total"] == 0


def test_thumbnail_cache_stays_under_its_limit(env, tmp_path):
    from instructdiffusion_data.audit.images import ThumbCache

    out = env["outs"]["alignment_bench/v1"]
    rs = [r for r in sidecar_rows(out) if r["keep"]]
    tar = out / "train" / rs[0]["tar"]
    one = len(ThumbCache(tmp_path / "probe").get(tar, rs[0]["src_offset"], rs[0]["src_size"], "image")[0])
    cache = ThumbCache(tmp_path / "c", max_bytes=int(one * 4.5))
    first = rs[0]
    for r in rs[:8]:
        cache.get(tar, r["src_offset"], r["src_size"], "image")
        cache.get(tar, first["src_offset"], first["src_size"], "image")  # kept in use: never pruned
    files = [p for p in (tmp_path / "c").rglob("*.jpg")]
    assert sum(p.stat().st_size for p in files) <= one * 4.5 and len(files) >= 2
    hits = cache.hits
    cache.get(tar, first["src_offset"], first["src_size"], "image")
    assert cache.hits == hits + 1
