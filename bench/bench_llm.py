"""Benchmark of the LLM client: requests/s against a loopback OpenAI-compatible server that answers
after a fixed latency (a stand-in for a remote model's time to answer), at several concurrency
levels, and cache hits/s on the rerun. The baseline is concurrency 1, measured in the same run.

    .venv/bin/python bench/bench_llm.py --n 64 --latency 0.05 --concurrency 1 4 16

The ideal speed-up at concurrency c is min(c, n) (latency-bound); what is left over is the cost of
the client, the cache and the thread pool. The cache rerun shows what a resumed job pays per row.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from instructdiffusion_data.llm import LLMClient
from tests.helpers_llm import FakeOpenAIServer


def _serve(latency: float, port_q, stop_ev) -> None:
    with FakeOpenAIServer() as srv:
        srv.state.delay_s = latency
        port_q.put(srv.base_url)
        stop_ev.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = ap.parse_args()
    import multiprocessing as mp

    # the server runs in its own process: its JSON work does not share the client's GIL
    ctx = mp.get_context("spawn")
    port_q, stop_ev = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(args.latency, port_q, stop_ev), daemon=True)
    proc.start()
    base_url = port_q.get(timeout=60)
    try:
        _run(args, base_url)
    finally:
        stop_ev.set()
        proc.join(5)
    return 0


def _run(args, base_url: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for c in args.concurrency:
            cache = Path(tmp) / f"c{c}.sqlite"
            client = LLMClient({"base_url": base_url, "model": "bench", "cache_path": str(cache), "concurrency": c})
            reqs = [[{"role": "user", "content": f"Object to remove: thing {c} {i}"}] for i in range(args.n)]
            client.complete(reqs[0])  # warm: import openai, open the connection pool
            t0 = time.perf_counter()
            res = client.complete_many(reqs[1:])
            dt = time.perf_counter() - t0
            assert not any(isinstance(r, Exception) for r in res)
            rate = (args.n - 1) / dt
            base = base or rate
            print(f"concurrency {c:3d}: {rate:8.1f} requests/s  x{rate / base:5.2f} vs concurrency {args.concurrency[0]}"
                  f"  (latency-bound ideal x{min(c, args.n - 1) / min(args.concurrency[0], args.n - 1):.0f})")
            t0 = time.perf_counter()
            again = LLMClient({"base_url": base_url, "model": "bench", "cache_path": str(cache), "concurrency": c})
            res = again.complete_many(reqs)
            dt = time.perf_counter() - t0
            assert all(r.cached for r in res)
            print(f"                  cache rerun: {args.n / dt:8.1f} answers/s  x{args.n / dt / rate:6.1f} vs asking"
                  f"  ({again.stats['requests']} requests)")


if __name__ == "__main__":
    raise SystemExit(main())
