"""The auditor page on a real demo output: the PhraseCut demo data through the shipped removal pipeline (plus
the weight-free quality filter), without Ray. Checks the removal <-> addition pair, the filter's thresholds in
the histograms, that `idd filter` honours the labels given on the page, and the page in Chromium."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from instructdiffusion_data.audit.app import create_app

pytestmark = pytest.mark.slow
TOKEN = "demo-token-123"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from instructdiffusion_data.config import load_pipeline_config
    from instructdiffusion_data.demo import phrasecut
    from instructdiffusion_data.runner import run

    base = tmp_path_factory.mktemp("audit-demo")
    phrasecut.generate(base / "demo_data", 4, 0)
    cfg = yaml.safe_load((REPO / "configs" / "pipelines" / "ieiw_removal.yaml").read_text())
    cfg["source"]["root"] = str(base / "demo_data" / "phrasecut")
    assert cfg["stages"][-1]["type"] == "quality_filter"  # the shipped config filters by default
    (base / "removal.yaml").write_text(yaml.safe_dump(cfg))
    run(load_pipeline_config(str(base / "removal.yaml"), []), out=str(base / "shards"), use_ray=False)
    app = create_app(base / "shards", token=TOKEN, cache_dir=base / "cache", refresh_s=0)
    return {"base": base, "root": base / "shards", "out": base / "shards" / "ieiw_removal" / "v2",
            "client": TestClient(app), "app": app}


def rows(c, **params):
    body = c.get("/api/samples", params={**params, "page_size": 200}).json()
    assert body["total"] == len(body["rows"])
    return body["rows"]


def test_demo_output_pairs_and_thresholds(demo):
    c = demo["client"]
    assert [o["output"] for o in c.get("/api/outputs").json()] == ["ieiw_removal/v2"]
    removal = rows(c, output="ieiw_removal/v2", task="edit_remove", split="train")
    assert removal
    body = c.get("/api/sample", params={"output": "ieiw_removal/v2", "split": "train",
                                         "key": removal[0]["key"]}).json()
    assert body["meta"]["pair_id"] and [p["task"] for p in body["pair"]] == ["edit_add"]
    # the sidecar holds the path relative to a named root; the page shows the real file
    assert body["roots"] and Path(body["meta"]["file"]).is_file()
    assert body["meta"]["file"].startswith(str(demo["base"] / "demo_data"))
    add = body["pair"][0]
    # the addition's source is the removal's target: same bytes, served from two different tar members
    tgt = c.get("/api/image", params={"output": "ieiw_removal/v2", "split": "train", "key": removal[0]["key"],
                                      "kind": "tgt"}).content
    src = c.get("/api/image", params={"output": "ieiw_removal/v2", "split": add["split"], "key": add["key"],
                                      "kind": "src"}).content
    assert tgt == src and len(tgt) > 1000
    hs = {h["score"]: h for h in c.get("/api/histograms", params={"output": "ieiw_removal/v2"}).json()}
    used = body["meta"]["filter"]["thresholds"]
    assert {t["value"] for t in hs["aesthetic_tgt"]["thresholds"]} == {used["aesthetic_tgt_min"]}


def test_idd_filter_honours_the_page_labels(demo):
    from instructdiffusion_data.cli import main as idd

    c, h = demo["client"], {"X-Audit-Token": TOKEN}
    kept = rows(c, output="ieiw_removal/v2", split="train")
    scores = sorted(r["scores"]["aesthetic_tgt"] for r in kept)
    t = statistics.median(scores)
    low = next(r for r in kept if r["scores"]["aesthetic_tgt"] < t)  # the new threshold would drop it
    high = next(r for r in kept if r["scores"]["aesthetic_tgt"] > t)  # ... and keep this one
    for r, verdict in ((low, "accept"), (high, "reject")):
        res = c.post("/api/labels", headers=h, json={"output": "ieiw_removal/v2", "split": "train", "key": r["key"],
                                                     "verdict": verdict, "auditor": "ann", "comment": ""})
        assert res.status_code == 200
    assert idd(["filter", str(demo["out"]), "--set", f"aesthetic_tgt_min={t}"]) == 0
    after = {r["key"]: r for r in rows(c, output="ieiw_removal/v2")}  # the page re-indexes the new split
    assert after[low["key"]]["split"] == "train"
    assert after[high["key"]]["split"] == "rejected" and after[high["key"]]["drop_reason"] == "audit:reject"
    moved = 0
    for r in kept:  # every other previously kept row: kept exactly when it passes the new threshold
        if r["key"] not in (low["key"], high["key"]):
            now = after[r["key"]]["split"]
            assert (now == "train") == (r["scores"]["aesthetic_tgt"] >= t), r["key"]
            moved += now == "rejected"
    assert moved > 0
    assert after[low["key"]]["label"] == "accept" and after[high["key"]]["label"] == "reject"
    from instructdiffusion_data.generations import current

    manifest = current(demo["out"]).manifest  # the filter's new generation, the one the page shows
    assert manifest["splits"]["train"]["rows"] == len(rows(c, output="ieiw_removal/v2", split="train"))


def test_demo_page_in_chromium(demo):
    from tests.test_audit_browser import (
        ARGS,
        ARTIFACTS,
        CHROMIUM,
        free_port,
        sync_playwright,
    )

    if sync_playwright is None or not Path(CHROMIUM).is_file():
        pytest.skip(f"needs the playwright package and chromium at {CHROMIUM}")
    import threading
    import time

    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(demo["app"], host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    while not srv.started:
        assert th.is_alive()
        time.sleep(0.05)
    try:
        ARTIFACTS.mkdir(exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
            page.set_default_timeout(15000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("body[data-ready='1']")
            page.select_option("#filters select[name=task]", "edit_remove")
            page.select_option("#filters select[name=split]", "train")
            page.wait_for_selector("#grid .card .badge.task")
            page.wait_for_function("[...document.querySelectorAll('#grid .card .badge.task')]"
                                   ".every(b => b.textContent === 'edit_remove')")
            page.locator("#grid .card").first.click()
            page.wait_for_selector("#sample:not([hidden]) #pair .neighbour")
            assert "edit_add" in page.inner_text("#pair")
            assert page.locator("#full-mask").count() == 1
            page.screenshot(path=str(ARTIFACTS / "audit-demo-sample.png"))
            browser.close()
    finally:
        srv.should_exit = True
        th.join(10)
