"""``idd instructions expand --task TASK --n N``: an LLM rewrites a task's templates into N more.

Reads ``configs/instructions/TASK.txt`` (the hand-written templates), asks an OpenAI-compatible
endpoint for rewrites (placeholders kept intact, duplicates and near duplicates removed, see
:mod:`instructdiffusion_data.llm.expand`) and writes ``configs/instructions/TASK.expanded.txt`` for
review; pipelines use the expanded file when present. Answers are cached (``--cache``), so a rerun
costs nothing. ``idd instructions cache`` reports what a cache file holds and has spent.
"""

from __future__ import annotations

import argparse
import json
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("instructions", help="instruction templates: LLM expansion, LLM cache report")
    isub = p.add_subparsers(dest="instructions_cmd", metavar="ACTION")
    e = isub.add_parser("expand", help="rewrite TASK's templates into N more with an LLM")
    e.add_argument("--task", required=True, help="template file stem, e.g. keypoint, edit_remove")
    e.add_argument("--n", type=int, default=40, help="new templates wanted (default 40)")
    e.add_argument("--dir", default=None, help="templates folder (default: configs/instructions)")
    e.add_argument("--base-url", default=os.environ.get("IDD_LLM_BASE_URL"),
                   help="OpenAI-compatible endpoint (default: $IDD_LLM_BASE_URL), e.g. http://localhost:8000/v1")
    e.add_argument("--model", default=os.environ.get("IDD_LLM_MODEL", "gpt-4o-mini"))
    e.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    e.add_argument("--cache", default="cache/llm.sqlite", help="request cache (SQLite file)")
    e.add_argument("--temperature", type=float, default=1.0)
    e.add_argument("--per-request", type=int, default=10, help="templates asked per request")
    e.add_argument("--max-requests", type=int, default=None, help="budget: paid requests at most")
    e.add_argument("--similarity", type=float, default=0.8, help="word-set Jaccard above which two templates are near duplicates")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    e.set_defaults(func=expand)
    c = isub.add_parser("cache", help="report the entries and spending of an LLM cache file")
    c.add_argument("path", nargs="?", default="cache/llm.sqlite")
    c.set_defaults(func=cache_report)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def expand(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import instructions as tmpl
    from ..errors import UserError
    from ..llm import LLMClient
    from ..llm.expand import expand_templates, read_templates, write_expanded

    if not args.base_url:
        raise UserError("no LLM endpoint: pass --base-url or set IDD_LLM_BASE_URL (OpenAI, vLLM, llama.cpp server)")
    if args.n < 1:
        raise UserError(f"--n: must be >= 1, got {args.n}")
    folder = Path(args.dir) if args.dir else tmpl.DEFAULT_DIR
    src = folder / f"{args.task}.txt"
    if not src.is_file():
        raise UserError(f"{src}: no templates for task '{args.task}'")
    originals = read_templates(src)
    if not originals:
        raise UserError(f"{src}: no templates in file")
    client = LLMClient({"base_url": args.base_url, "model": args.model, "api_key_env": args.api_key_env,
                        "cache_path": args.cache, "temperature": args.temperature, "max_tokens": 60 * args.per_request,
                        "max_requests": args.max_requests, "budget_scope": f"expand:{args.task}",
                        "timeout_s": args.timeout}, seed=args.seed)
    try:
        res = expand_templates(client, args.task, originals, args.n, per_request=args.per_request,
                               similarity=args.similarity, seed=args.seed)
    except ValueError as e:
        raise UserError(f"{src}: {e}") from None
    out = folder / f"{args.task}.expanded.txt"
    if res.new:
        write_expanded(out, res, args.model)
    print(f"{args.task}: {len(originals)} hand-written, {len(res.new)} new templates "
          f"({res.candidates} candidates from {res.requests} answers, {res.cached} cached)")
    for reason, k in sorted(res.rejected.items(), key=lambda kv: -kv[1]):
        print(f"  rejected {k:4d}  {reason}")
    if res.stopped:
        print(f"  stopped: {res.stopped}")
    print(f"wrote {out} (review it before training)" if res.new else "nothing written")
    s = client.stats
    print(f"llm: {s['requests']} requests ({s['retries']} retries), {s['cache_hits']} cache hits, "
          f"{s['prompt_tokens']}+{s['completion_tokens']} tokens")
    return 0 if res.new else 1


def cache_report(args: argparse.Namespace) -> int:
    import sqlite3
    from pathlib import Path

    from ..errors import UserError

    if not Path(args.path).is_file():
        raise UserError(f"{args.path}: no such cache file")
    con = sqlite3.connect(f"file:{args.path}?mode=ro", uri=True)
    answers = con.execute("SELECT model, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens) FROM responses "
                          "GROUP BY model ORDER BY model").fetchall()
    ledger = con.execute("SELECT scope, requests, tokens FROM ledger ORDER BY scope").fetchall()
    print(json.dumps({"answers": [{"model": m, "count": n, "prompt_tokens": p or 0, "completion_tokens": c or 0}
                                  for m, n, p, c in answers],
                      "spent": [{"scope": s, "requests": r, "tokens": t} for s, r, t in ledger]}, indent=1))
    return 0
