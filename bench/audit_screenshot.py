"""Regenerates docs/audit-screenshot.png: the auditor page on demo outputs, in headless Chromium.

    .venv/bin/python bench/audit_screenshot.py ROOT [--out docs/audit-screenshot.png] [--output NAME --split rejected]

ROOT is a folder of outputs (e.g. ``shards/`` after ``make demo``). Needs Debian's chromium and the
playwright Python package (no browser download).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "audit-screenshot.png"))
    ap.add_argument("--output", default=None, help="output to show (default: the first)")
    ap.add_argument("--split", default="", help="train / rejected / '' for both")
    ap.add_argument("--sample", type=int, default=-1, help="also open the N-th sample of the grid")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)
    import uvicorn
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from instructdiffusion_data.audit.app import create_app

    app = create_app(args.root, cache_dir=tempfile.mkdtemp(prefix="audit-shot-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 900}, bypass_csp=True)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("body[data-ready='1']")
            if args.output:
                page.select_option("#filters select[name=output]", args.output)
            if args.split:
                page.select_option("#filters select[name=split]", args.split)
            page.check("#overlay")
            page.wait_for_timeout(500)
            page.wait_for_function("[...document.querySelectorAll('#grid img')]"
                                   ".filter(i => i.getBoundingClientRect().top < innerHeight).every(i => i.complete)")
            if args.sample >= 0:
                page.locator("#grid .card").nth(args.sample).click()
                page.wait_for_selector("#sample:not([hidden]) #meta")
                page.wait_for_function("[...document.querySelectorAll('#sample img')].every(i => i.complete)")
            page.screenshot(path=args.out)
            browser.close()
    finally:
        srv.should_exit = True
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
