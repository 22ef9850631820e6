"""End to end in a real headless Chromium (Debian's ``chromium``, driven by Playwright through its executable
path; nothing is downloaded): open the page, filter by reason, open a sample, label it with the token, pick
alignment candidates and export them. Screenshots go to ``tests/artifacts/``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.helpers_audit import build_outputs

CHROMIUM = os.environ.get("IDD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"
TOKEN = "browser-test-token"

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the set-up
    sync_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sync_playwright is None, reason="the playwright Python package is not installed "
                                                        "(pip install -r requirements.txt)"),
    pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                       reason=f"chromium not found at {CHROMIUM} (apt-get install -y chromium)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from instructdiffusion_data.audit.app import create_app

    base = tmp_path_factory.mktemp("audit-browser")
    outs = build_outputs(base / "root")
    app = create_app(base / "root", token=TOKEN, cache_dir=base / "cache", refresh_s=0)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and th.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}/", "outs": outs, "base": base}
    srv.should_exit = True
    th.join(10)


@pytest.fixture(scope="module")
def page(server):
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        # Playwright's wait_for_function evaluates strings, which the page's CSP forbids: this context bypasses
        # it; test_page_runs_under_its_content_security_policy checks the page itself under the CSP.
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
        pg = ctx.new_page()
        pg.set_default_timeout(15000)
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)  # CSP violations too
        pg.goto(server["url"])
        pg.wait_for_selector("body[data-ready='1']", timeout=20000)
        pg.errors = errors
        pg.browser_ = browser
        yield pg
        browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"audit-{name}.png"), full_page=False)


def wait_images(page, selector: str) -> None:
    page.wait_for_function(
        "sel => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)",
        arg=selector, timeout=15000)


def test_browse_filter_label_and_export(server, page):
    # the outputs are listed with their kept / rejected counts
    outputs = page.locator("#outputs .name").all_inner_texts()
    assert outputs == sorted(server["outs"])
    page.select_option("#filters select[name=output]", "ieiw_removal/v1")
    page.wait_for_function("document.querySelector('#filters select[name=reason]').options.length > 2")
    page.select_option("#filters select[name=reason]", "aesthetic_tgt below minimum")
    page.wait_for_function("document.querySelector('.pageinfo').textContent.includes('(6 samples)')", timeout=10000)
    cards = page.locator("#grid .card")
    assert cards.count() == 6
    for i in range(cards.count()):
        assert "aesthetic_tgt below minimum" in cards.nth(i).locator(".badge.reason").all_inner_texts()
    page.check("#overlay")
    page.wait_for_function("document.querySelectorAll('#grid img.mask').length == 6")
    wait_images(page, "#grid img")
    shot(page, "01-grid-filtered")

    # open a sample: full-size images, every meta field, the pair neighbour
    first = cards.nth(0)
    key = first.get_attribute("data-key")
    first.click()
    page.wait_for_selector("#sample:not([hidden]) #meta")
    wait_images(page, "#sample .full img")
    meta_keys = page.locator("#meta tr td:first-child").all_inner_texts()
    for field in ("pair_id", "scores.aesthetic_tgt", "filter.thresholds.aesthetic_tgt_min", "seed", "model", "file"):
        assert field in meta_keys
    values = dict(zip(meta_keys, page.locator("#meta tr td:nth-child(2)").all_inner_texts()))
    assert values["file"].startswith("/data/phrasecut/images/")  # the {source.images} token resolved
    drops = dict(zip(page.locator("#drops tr td:first-child").all_inner_texts(),
                     page.locator("#drops tr td:nth-child(2)").all_inner_texts()))
    assert drops["drop[0].class"] == "aesthetic_tgt below minimum" and drops["drop[0].threshold"] == "5"
    assert page.locator("#pair .neighbour").count() == 1
    assert page.locator("#accept").is_disabled()
    second = cards.nth(1).get_attribute("data-key")
    page.keyboard.press("ArrowRight")  # step to the next sample of the page and back
    page.wait_for_function(f"document.querySelector('#sample .key:not(.hint)').textContent.endsWith('{second}')")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(f"document.querySelector('#sample .key:not(.hint)').textContent.endsWith('{key}')")
    shot(page, "02-sample")

    # unlock with the token and label it
    page.fill("#auditor", "e2e-auditor")
    page.fill("#token", TOKEN)
    page.click("#unlock")
    page.wait_for_selector("#mode.on")
    page.wait_for_selector("#accept:not([disabled])")
    page.fill("#label-comment", "target looks washed out")
    page.click("#reject")
    page.wait_for_selector("#label-history li")
    assert "e2e-auditor" in page.locator("#label-history li").first.inner_text()
    from instructdiffusion_data.audit.labels import labels_path

    db = labels_path(server["outs"]["ieiw_removal/v1"])  # beside the output (docs/reliability.md)
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT auditor, key, verdict, comment FROM labels").fetchall()
    assert rows == [("e2e-auditor", key, "reject", "target looks washed out")]
    shot(page, "03-labelled")
    page.click("#close")
    page.select_option("#filters select[name=reason]", "")
    page.select_option("#filters select[name=label]", "reject")
    page.wait_for_function("document.querySelector('.pageinfo').textContent.includes('(1 samples)')")
    assert page.locator("#grid .card").get_attribute("data-key") == key
    assert page.locator("#grid .card .badge.reject").count() == 1
    page.select_option("#filters select[name=label]", "")

    # counts and histograms with the thresholds drawn
    page.click(".tabs button[data-tab=stats]")
    page.wait_for_selector(".hist[data-score=aesthetic_tgt] line.threshold", state="attached")
    assert page.locator(".hist[data-score=aesthetic_tgt] line.threshold").first.get_attribute("data-value") == "5"
    shot(page, "04-stats")

    # alignment: pick two candidates of a group, save, export
    page.select_option("#filters select[name=output]", "alignment_bench/v1")
    page.click(".tabs button[data-tab=align]")
    page.wait_for_selector(".groupcard")
    page.locator(".groupcard").first.click()
    page.wait_for_selector(".candidate")
    wait_images(page, ".candidate img")
    page.locator(".candidate").nth(1).click()
    page.locator(".candidate").nth(2).click()
    assert page.locator(".candidate.picked").count() == 2
    picked = [page.locator(".candidate").nth(i).get_attribute("data-key") for i in (1, 2)]
    page.click("#save-picks")
    page.wait_for_function("document.querySelectorAll('#group li').length > 0")
    page.click("#export")
    page.wait_for_function("document.querySelector('#export-result').textContent.includes('exported')")
    assert "exported 2 picks" in page.inner_text("#export-result")
    shot(page, "05-alignment")
    out = server["base"] / "root" / "alignment_bench" / ".audit" / "v1" / "alignment"  # beside the labels
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["rows"] == 2
    import pyarrow.parquet as pq
    assert sorted(pq.read_table(out / "train" / "000000.parquet").column("key").to_pylist()) == sorted(picked)
    assert page.errors == []


def test_page_runs_under_its_content_security_policy(server, page):
    ctx = page.browser_.new_context(viewport={"width": 1200, "height": 800})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    res = pg.goto(server["url"])
    assert "default-src 'self'" in res.headers["content-security-policy"]
    pg.wait_for_selector("body[data-ready='1']", timeout=15000)
    pg.click(".tabs button[data-tab=stats]")
    pg.wait_for_selector(".counts .bar", timeout=15000)
    pg.click(".tabs button[data-tab=samples]")
    pg.locator("#grid .card").first.click()
    pg.wait_for_selector("#sample:not([hidden]) #meta", timeout=15000)
    assert errors == []
    ctx.close()
