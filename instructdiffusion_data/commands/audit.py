"""``idd audit ROOT``: the auditor page over every output under ROOT."""

from __future__ import annotations

import argparse
import logging
import os

from ..errors import UserError

log = logging.getLogger("idd.audit")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="browse kept and dropped samples, label them, review alignment candidates")
    p.add_argument("root", help="folder holding one or more outputs (folders with manifest.json), e.g. shards/")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--token-env", default=None, metavar="VAR",
                   help="environment variable holding the labelling token; without it the page is read-only")
    p.add_argument("--cache-dir", default=None,
                   help="thumbnail cache folder (default $XDG_CACHE_HOME/idd/audit-thumbs)")
    p.add_argument("--cache-max-mb", type=int, default=2048,
                   help="thumbnail cache size limit; least recently used thumbnails go first (default 2048)")
    p.add_argument("--allow-dir", action="append", default=[], metavar="DIR",
                   help="also serve reference-patch images from this folder (e.g. demo_data); repeatable. "
                        "By default only files under ROOT are read")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from ..audit.app import create_app

    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise UserError(f"--token-env {args.token_env}: the variable is not set or empty")
        if len(token) < 8:
            raise UserError(f"--token-env {args.token_env}: the token must be at least 8 characters")
    app = create_app(args.root, token=token, cache_dir=args.cache_dir, allow_dirs=args.allow_dir,
                     cache_max_mb=args.cache_max_mb)
    outputs = len(app.state.catalog.outputs)
    mode = "labelling with the token" if token else "read-only"
    print(f"idd audit: {outputs} outputs under {args.root}, {mode}, http://{args.host}:{args.port}/", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding to %s: the page is reachable from other machines", args.host)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
