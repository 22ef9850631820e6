"""Benchmark of the auditor page on a synthetic output of 100,000 rows.

Writes the output with the production ShardWriter (100 shards x 1,000 rows; tiny 64x48 JPEG source and
target, a PNG mask on every fourth row, scores and filter thresholds in meta, 1 row in 5 dropped with a
reason), then, through the ASGI client (the whole FastAPI stack, no network):

* index build: the DuckDB index over the 200 parquet sidecars (``create_app``);
* time to first page: ``/api/outputs`` + ``/api/counts`` + the first page of 48 samples;
* time to filter: by drop reason, text search, score range, and sort by a score (median of 3 each),
  beside the baseline of the same reason filter done without the index (read every sidecar with
  pyarrow and filter in Python, what a script would do), ratio printed;
* a page of 100 thumbnails: cold (empty disk cache: read by offset from the tar, decode, resize, encode,
  store), warm (cache hit) and with no cache at all; ratio printed. The same again on a page of 100
  realistic 512x384 images (a second small output), where decoding dominates.

    .venv/bin/python bench/bench_audit.py [--rows 100000] [--keep DIR]

Results are printed and written to ``bench/results/audit.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instructdiffusion_data.imageio import encode_jpeg, encode_png
from instructdiffusion_data.schema import drop, make_key, new_row
from instructdiffusion_data.writer import ShardWriter

TASKS = ("edit_remove", "edit_add", "edit_replace", "keypoint", "semantic_seg")
DATASETS = ("phrasecut", "sa1b", "coco", "cocostuff")
PHRASES = ("red car", "dog", "green bench", "street sign", "kite", "umbrella", "person", "bicycle")


def image_pool(n: int, w: int, h: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 255, (1, 1, 3), dtype=np.uint8)
        y, x = np.mgrid[0:h, 0:w]
        img = np.clip(base + np.stack([x * 255 // w, y * 255 // h, (x + y) * 128 // (w + h)], -1), 0, 255)
        img = img.astype(np.uint8)
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        img[y0:y0 + h // 3, x0:x0 + w // 3] = rng.integers(0, 255, 3, dtype=np.uint8)
        out.append(encode_jpeg(img, quality=85))
    return out


def synth_rows(start: int, n: int, imgs: list[bytes], mask: bytes, rng: np.random.Generator) -> list[dict]:
    rows = []
    thr = {"aesthetic_tgt_min": 4.5, "giqa_tgt_min": 0.25}
    for i in range(start, start + n):
        task, ds = TASKS[i % len(TASKS)], DATASETS[i % len(DATASETS)]
        sc = {"aesthetic_src": float(rng.normal(5.5, 0.6)), "aesthetic_tgt": float(rng.normal(5.2, 0.7)),
              "giqa_tgt": float(rng.uniform(0, 1))}
        meta = {"record_id": str(i // 2), "file": f"/data/{ds}/{i // 2}.jpg", "scores": sc,
                "filter": {"thresholds": thr}, "seed": i, "pair_id": f"p{i // 2}" if task.startswith("edit") else None}
        row = new_row(key=make_key(ds, i, task), task=task, dataset=ds, src=imgs[i % len(imgs)],
                      tgt=imgs[(i * 7 + 3) % len(imgs)], mask=mask if i % 4 == 0 else None,
                      instruction=f"remove the {PHRASES[i % len(PHRASES)]} number {i}", meta=meta)
        if sc["aesthetic_tgt"] < thr["aesthetic_tgt_min"]:
            drop(row, f"aesthetic_tgt<{thr['aesthetic_tgt_min']}")
        elif sc["giqa_tgt"] < thr["giqa_tgt_min"] and i % 2:
            drop(row, f"giqa_tgt<{thr['giqa_tgt_min']}")
        rows.append(row)
    return rows


def write_synthetic(out: Path, rows: int, per_shard: int, size: tuple[int, int], seed: int = 0) -> float:
    t0 = time.perf_counter()
    imgs = image_pool(256, *size, seed=seed)
    m = np.zeros((size[1], size[0]), np.uint8)
    m[size[1] // 4: size[1] // 2, size[0] // 4: size[0] // 2] = 255
    mask = encode_png(m)
    rng = np.random.default_rng(seed)
    w = ShardWriter(out)
    for s in range(0, rows, per_shard):
        w.write_shard(s // per_shard, synth_rows(s, min(per_shard, rows - s), imgs, mask, rng))
    w.write_manifest(config={"bench": "audit"}, extra={"name": out.parent.name, "version": out.name,
                                                       "mixture_weight": 1.0})
    return time.perf_counter() - t0


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    times, res = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), res


def ok(res):
    if res.status_code != 200:
        raise SystemExit(f"{res.request.url}: {res.status_code} {res.text[:200]}")
    return res


def thumbs_page(client, output: str, n: int = 100) -> float:
    rows = ok(client.get("/api/samples", params={"output": output, "page_size": n, "page": 3})).json()["rows"]
    t0 = time.perf_counter()
    for r in rows:
        ok(client.get("/api/image", params={"output": r["output"], "split": r["split"], "key": r["key"],
                                            "kind": "src", "thumb": 1}))
    return time.perf_counter() - t0


def thumbs_inprocess(app, root: Path, output: str, cache: Path, n: int = 100) -> dict:
    """The thumbnail path alone (no HTTP): sidecar look-up, then read by offset + decode + resize + encode
    (no cache / cold) or a cache hit (warm)."""
    from instructdiffusion_data.audit.images import (
        ThumbCache,
        make_thumbnail,
        read_member,
    )
    from instructdiffusion_data.audit.query import Filters

    cat = app.state.catalog
    rows = cat.search(Filters(output=output), page=3, page_size=n)["rows"]  # the grid page primes the locations
    t0 = time.perf_counter()
    full = [cat.location(r["output"], r["split"], r["key"]) for r in rows]
    lookup = time.perf_counter() - t0
    tars = [root / r["output"] / r["tar"] for r in full]
    shutil.rmtree(cache, ignore_errors=True)
    th = ThumbCache(cache)

    def cached():
        t0 = time.perf_counter()
        for t, r in zip(tars, full):
            th.get(t, r["src_offset"], r["src_size"], "image")
        return time.perf_counter() - t0

    cold, warm = cached(), cached()
    t0 = time.perf_counter()
    for t, r in zip(tars, full):
        make_thumbnail(read_member(t, r["src_offset"], r["src_size"]), "image", th.max_side)
    return {"lookup_s": lookup, "cold_cache_s": cold, "warm_cache_s": warm, "no_cache_s": time.perf_counter() - t0}


def baseline_reason_filter(out: Path, reason: str, page_size: int) -> int:
    """The same filter without the index: every sidecar read with pyarrow, rows filtered in Python."""
    import pyarrow.parquet as pq

    hits = []
    for split in ("train", "rejected"):
        for p in sorted((out / split).glob("*.parquet")):
            t = pq.read_table(p, columns=["key", "drop_reason", "meta"]).to_pylist()
            hits += [r for r in t if reason in (r["drop_reason"] or "").split(";")]
    hits.sort(key=lambda r: r["key"])
    for r in hits[:page_size]:
        json.loads(r["meta"])
    return len(hits)


class Served:
    """The app under uvicorn in a thread, with an httpx client on it."""

    def __init__(self, app):
        import socket
        import threading

        import httpx
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)

    def get(self, url, params=None):
        return self.client.get(url, params=params)

    def close(self):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5, help="passes of each timing (medians reported)")
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from instructdiffusion_data.audit.app import create_app

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-audit-"))
    root = work / "root"
    res: dict = {"rows": args.rows}
    try:
        big = root / "synthetic" / "v1"
        if not (big / "manifest.json").is_file():
            res["generate_s"] = write_synthetic(big, args.rows, args.per_shard, (64, 48))
        real = root / "realistic" / "v1"
        if not (real / "manifest.json").is_file():
            write_synthetic(real, 500, 500, (512, 384), seed=1)
        tar_bytes = sum(p.stat().st_size for p in big.rglob("*.tar"))
        res["tar_mb"] = tar_bytes / 2**20
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)

        t0 = time.perf_counter()
        app = create_app(root, cache_dir=cache, refresh_s=3600)
        res["index_build_s"] = time.perf_counter() - t0
        c = Served(app)

        t0 = time.perf_counter()
        ok(c.get("/api/outputs"))
        counts = ok(c.get("/api/counts", params={"output": "synthetic/v1"})).json()
        first = ok(c.get("/api/samples", params={"output": "synthetic/v1", "page_size": 48})).json()
        res["first_page_s"] = time.perf_counter() - t0
        assert first["total"] == args.rows, first["total"]
        reason = next(iter(counts["reasons"]))
        filters = {
            "reason": {"output": "synthetic/v1", "reason": reason, "page_size": 48},
            "text": {"output": "synthetic/v1", "q": "umbrella number 7", "page_size": 48},
            "score_range": {"output": "synthetic/v1", "score": "aesthetic_tgt:5.0:5.5", "page_size": 48},
            "sort_by_score": {"output": "synthetic/v1", "sort": "score:giqa_tgt", "order": "desc", "page_size": 48},
            "combined": {"output": "synthetic/v1", "split": "rejected", "task": "edit_remove", "q": "car",
                         "score": "giqa_tgt:0.1:", "sort": "score:aesthetic_tgt", "page_size": 48},
        }
        res["filter_s"], res["filter_hits"] = {}, {}
        for name, params in filters.items():
            dt, r = timed(lambda p=params: ok(c.get("/api/samples", params=p)).json(), repeat=args.repeat)
            res["filter_s"][name] = dt
            res["filter_hits"][name] = r["total"]
        dt, hits = timed(lambda: baseline_reason_filter(big, reason, 48), repeat=1)
        assert hits == res["filter_hits"]["reason"], (hits, res["filter_hits"]["reason"])
        res["baseline_reason_filter_s"] = dt
        res["histograms_s"] = timed(lambda: ok(c.get("/api/histograms", params={"output": "synthetic/v1"})),
                                    repeat=1)[0]

        nocache = Served(create_app(root, cache_dir=None, use_cache=False, refresh_s=3600))
        for label, output in (("tiny_64x48", "synthetic/v1"), ("realistic_512x384", "realistic/v1")):
            cold, warm, none = [], [], []
            for _ in range(args.repeat):  # interleaved, medians: the machine is shared
                shutil.rmtree(cache, ignore_errors=True)
                cold.append(thumbs_page(c, output))
                warm.append(thumbs_page(c, output))
                none.append(thumbs_page(nocache, output))
            res[f"thumbs100_{label}"] = {"cold_cache_s": statistics.median(cold), "warm_cache_s": statistics.median(warm),
                                         "no_cache_s": statistics.median(none)}
            runs = [thumbs_inprocess(app, root, output, work / "cache-inprocess") for _ in range(args.repeat)]
            res[f"thumbs100_{label}_inprocess"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        nocache.close()
        c.close()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    import os

    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine: noisy)")
    print(f"synthetic output: {res['rows']} rows, {res['tar_mb']:.0f} MiB of tars"
          + (f", written in {res['generate_s']:.1f}s" if "generate_s" in res else ""))
    print(f"index build (DuckDB over sidecars)   {res['index_build_s']:8.3f} s")
    print(f"time to first page (outputs+counts+48){res['first_page_s']:8.3f} s")
    for name, dt in res["filter_s"].items():
        print(f"filter {name:28s}  {dt:8.3f} s   ({res['filter_hits'][name]} hits)")
    print(f"baseline reason filter (pyarrow+Python) {res['baseline_reason_filter_s']:6.3f} s   "
          f"ratio {res['baseline_reason_filter_s'] / res['filter_s']['reason']:.1f}x")
    print(f"histograms (all scores)              {res['histograms_s']:8.3f} s")
    for label in ("tiny_64x48", "realistic_512x384"):
        t = res[f"thumbs100_{label}"]
        print(f"100 thumbnails {label:18s} no cache {t['no_cache_s']:.3f} s, cold cache {t['cold_cache_s']:.3f} s, "
              f"warm cache {t['warm_cache_s']:.3f} s  (no cache / warm = {t['no_cache_s'] / t['warm_cache_s']:.1f}x)")
        t = res[f"thumbs100_{label}_inprocess"]
        print(f"   same, without HTTP ({label}): sidecar look-ups {t['lookup_s']:.3f} s; thumbnails no cache "
              f"{t['no_cache_s']:.3f} s, cold {t['cold_cache_s']:.3f} s, warm {t['warm_cache_s']:.3f} s  "
              f"(no cache / warm = {t['no_cache_s'] / t['warm_cache_s']:.1f}x)")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "audit.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
