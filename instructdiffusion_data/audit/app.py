"""The FastAPI application behind ``idd audit``.

Read-only for everyone; labelling (accept / reject, alignment picks, alignment export) needs the token the
server was started with (header ``X-Audit-Token``); without a token configured the server is read-only.
Only outputs found under the root are addressable (by their relative name from the catalog, never a path
from the request), tar paths from the sidecars are checked to stay inside their output, and anything else
is a 404. Query values are bound parameters in DuckDB and SQLite.

Label posts are checked in this order: the token (401/403, the body is not read), the body size
(``Content-Length`` and then while reading, :data:`.posts.MAX_BODY_BYTES`: 413), then its JSON against a typed
model (422 naming the field). Every JSON answer is strict JSON: a NaN or infinite number (legacy sidecars
wrote them) is answered as ``null``.

Paths in written rows carry ``{source.x}`` root tokens (docs/shard-format.md, "Paths"): the sample view and the
reference patch resolve them through the output's ``manifest["roots"]`` before showing or opening anything.
A reference is read through :class:`~instructdiffusion_data.contracts.ReferencePatch` (docs/contracts.md,
:mod:`.reference`).
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import os
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..errors import RecordError, UserError
from ..schema import SCORE_COLUMNS
from ..writer import SPLITS
from .alignment import export_alignment
from .catalog import Catalog
from .images import (
    MemberError,
    ThumbCache,
    check_image,
    error_tile,
    read_member,
    tile_word,
    validate_image,
)
from .labels import LabelStore, labels_home, overrides
from .posts import ExportPost, LabelPost, PickPost, StrictJSONResponse, read_post
from .query import MAX_PAGE_SIZE, MAX_SCORE_FILTERS, MAX_TEXT, Filters
from .reference import describe_reference, find_reference, png_response, resolve_paths

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
KINDS = ("src", "tgt", "mask")
LABEL_PATTERN = "^(|accept|reject|labelled)$"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def member_error_response(e: Exception, **headers: str) -> Response:
    """The error tile (a small PNG naming the problem) for a member that cannot be shown."""
    return Response(error_tile(tile_word(str(e))), media_type="image/png",
                    headers={"X-Audit-Error": str(e)[:200], "Cache-Control": "no-store", **headers})


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "idd" / "audit-thumbs"


def create_app(root: str | os.PathLike, *, token: str | None = None, cache_dir: str | os.PathLike | None = None,
               use_cache: bool = True, refresh_s: float = 2.0, allow_dirs: list | None = None,
               cache_max_mb: int = 2048) -> FastAPI:
    """``allow_dirs``: extra folders whose image files may be served as reference patches (e.g. the
    demo's source images); by default only files under ``root`` are ever read."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: audit root is not a folder")
    allowed = [root.resolve()]
    for d in allow_dirs or []:
        if not Path(d).is_dir():
            raise UserError(f"--allow-dir {d}: not a folder")
        allowed.append(Path(d).resolve())
    catalog = Catalog(root, refresh_s=refresh_s)
    thumbs = ThumbCache((cache_dir or default_cache_dir()) if use_cache else None, max_bytes=cache_max_mb << 20)
    app = FastAPI(title="idd audit", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  default_response_class=StrictJSONResponse)
    app.state.catalog = catalog
    app.state.thumbs = thumbs
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        res = await call_next(request)
        res.headers.update(SECURITY_HEADERS)
        return res

    # -- helpers ---------------------------------------------------------------------------------------
    def need_output(name: str | None):
        out = catalog.output(name or "")
        if out is None:
            raise HTTPException(404, "no such output")
        return out

    def need_split(split: str) -> str:
        if split not in SPLITS:
            raise HTTPException(404, "no such split")
        return split

    def need_row(output: str, split: str, key: str) -> dict:
        need_output(output)
        row = catalog.row(output, need_split(split), key)
        if row is None:
            raise HTTPException(404, "no such sample")
        return row

    def tar_path(row: dict) -> Path:
        out = need_output(row["output"])
        p = (out.path / row["tar"]).resolve()
        if out.path.resolve() not in p.parents:
            raise HTTPException(404, "no such file")
        return p

    def require_token(x_audit_token: str | None) -> None:
        if not token:
            raise HTTPException(403, "read-only: the server was started without --token-env")
        if not x_audit_token or not hmac.compare_digest(x_audit_token.encode(), token.encode()):
            raise HTTPException(401, "a valid X-Audit-Token header is required to label")

    def labelled(output: str | None, label: str | None) -> list[str] | None:
        """``output\0key`` of the samples whose newest accept/reject is ``label`` (``labelled``: either)."""
        if not label:
            return None
        outs = [need_output(output)] if output else list(catalog.outputs.values())
        return [f"{o.rel}\0{k}" for o in outs for k, v in overrides(o.path).items() if label in (v, "labelled")]

    def filters(output, split, task, dataset, reason, q, score, label=None) -> Filters:
        if split:
            need_split(split)
        if output:
            need_output(output)
        ranges = []
        for spec in (score or [])[:MAX_SCORE_FILTERS]:
            rest, _, hi = spec.rpartition(":")  # the score name may itself hold colons
            name, _, lo = rest.rpartition(":")
            try:
                ranges.append((name, float(lo) if lo.strip() else None, float(hi) if hi.strip() else None))
            except ValueError:
                raise HTTPException(422, f"score filter must be NAME:MIN:MAX, not {spec[:80]!r}") from None
        return Filters(output=output or None, split=split or None, task=task or None, dataset=dataset or None,
                       reason=reason or None, text=q or None, scores=ranges, label_keys=labelled(output, label))

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return StrictJSONResponse({"detail": str(exc)}, status_code=400)

    # -- pages -----------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info():
        return {"version": __version__, "root": root.name, "writable": bool(token), "max_page_size": MAX_PAGE_SIZE}

    @app.post("/api/auth")
    def auth(x_audit_token: str | None = Header(None)):
        require_token(x_audit_token)
        return {"ok": True}

    @app.get("/api/outputs")
    def outputs():
        catalog.refresh()
        return [o.summary() for _, o in sorted(catalog.outputs.items())]

    @app.get("/api/counts")
    def counts(output: str | None = None, split: str | None = None, task: str | None = None,
               dataset: str | None = None, reason: str | None = None,
               q: str | None = Query(None, max_length=MAX_TEXT), score: Annotated[list[str] | None, Query()] = None,
               label: str | None = Query(None, pattern=LABEL_PATTERN)):
        return catalog.counts(filters(output, split, task, dataset, reason, q, score, label))

    @app.get("/api/histograms")
    def histograms(output: str | None = None, split: str | None = None, bins: int = Query(20, ge=2, le=100)):
        return catalog.histograms(filters(output, split, None, None, None, None, None), bins=bins)

    @app.get("/api/samples")
    def samples(output: str | None = None, split: str | None = None, task: str | None = None,
                dataset: str | None = None, reason: str | None = None,
                q: str | None = Query(None, max_length=MAX_TEXT), score: Annotated[list[str] | None, Query()] = None,
                label: str | None = Query(None, pattern=LABEL_PATTERN), sort: str = Query("key", max_length=200), order: str = Query("asc", pattern="^(asc|desc)$"),
                page: int = Query(0, ge=0, le=10_000_000), page_size: int = Query(48, ge=1, le=MAX_PAGE_SIZE)):
        res = catalog.search(filters(output, split, task, dataset, reason, q, score, label), sort=sort, order=order,
                             page=page, page_size=page_size)
        by_output: dict[str, list[str]] = {}
        for r in res["rows"]:
            by_output.setdefault(r["output"], []).append(r["key"])
        verdicts = {}
        for name, keys in by_output.items():
            out = catalog.output(name)
            if out is not None:
                verdicts[name] = LabelStore(out.path, name).verdicts(keys)
        for r in res["rows"]:
            r["label"] = verdicts.get(r["output"], {}).get(r["key"])
        return res

    @app.get("/api/sample")
    def sample(output: str, split: str, key: str = Query(..., max_length=500)):
        """A sample's row, meta and drop details with every ``{source.x}`` token of a path resolved through
        the output's ``manifest["roots"]`` (``roots`` says which), its pair, group, labels and reference."""
        row = need_row(output, split, key)
        out = need_output(output)
        roots = out.roots
        meta, drops = catalog.sample_doc(row)
        store = LabelStore(out.path, output)
        hidden = ("pq_file", "filter_json", "tar", "reasons", "reason_thresholds", *SCORE_COLUMNS)
        pub = {k: v for k, v in row.items() if k not in hidden}
        pub["drop_reason"] = resolve_paths(pub.get("drop_reason"), roots)
        for kind in KINDS:
            pub[f"has_{kind}"] = bool(row.get(f"{kind}_size"))
        pub["shard"] = row["tar"]
        return {"row": pub, "meta": resolve_paths(meta, roots), "drops": resolve_paths(drops, roots), "roots": roots,
                "pair": [r for r in catalog.related(row, "pair_id") if r["key"] != key],
                "group": catalog.related(row, "group_id"), "labels": store.history(key=key),
                "reference": describe_reference(meta, roots)}

    @app.get("/api/image")
    async def image(output: str, split: str, key: str = Query(..., max_length=500),
                    kind: str = Query("src", pattern="^(src|tgt|mask)$"), thumb: bool = False,
                    style: str = Query("image", pattern="^(image|overlay)$")):
        """A member's bytes (full size, checked to decode) or its thumbnail. A thumbnail of a sample listed by
        a recent grid page that is already in the disk cache is answered on the event loop; everything
        else (queries, decoding) runs in the thread pool."""
        out = catalog.outputs.get(output)
        loc = catalog.cached_location(output, split, key) if thumb and out is not None else None
        if loc is not None and loc.get(f"{kind}_size"):
            tar = (out.path / loc["tar"]).resolve()
            tkind = "image" if kind != "mask" else ("overlay" if style == "overlay" else "mask")
            if out.path.resolve() in tar.parents:
                try:
                    hit = thumbs.cached(tar, loc[f"{kind}_offset"], loc[f"{kind}_size"], tkind)
                except MemberError as e:  # known to be corrupt or too large: the tile, nothing decoded
                    return member_error_response(e)
                if hit is not None:
                    return Response(hit[0], media_type=hit[1], headers={"Cache-Control": "max-age=3600"})
        return await run_in_threadpool(image_sync, output, split, key, kind, thumb, style)

    def image_sync(output: str, split: str, key: str, kind: str, thumb: bool, style: str) -> Response:
        need_output(output)
        row = catalog.location(output, need_split(split), key)
        if row is None:
            raise HTTPException(404, "no such sample")
        if not row.get(f"{kind}_size"):
            raise HTTPException(404, f"sample has no {kind} image")
        tar = tar_path(row)
        off, size = row[f"{kind}_offset"], row[f"{kind}_size"]
        try:
            if thumb:
                tkind = "image" if kind != "mask" else ("overlay" if style == "overlay" else "mask")
                data, media = thumbs.get(tar, off, size, tkind)
                return Response(data, media_type=media, headers={"Cache-Control": "max-age=3600"})
            data = read_member(tar, off, size)
            media = check_image(data)
            thumbs.check_full(tar, off, size, kind, data)  # decoded once per member, the verdict kept
            return Response(data, media_type=media, headers={"Cache-Control": "max-age=3600"})
        except MemberError as e:
            log.warning("%s: %s %s member unreadable: %s", tar, key, kind, e)
            return member_error_response(e)

    def allowed_path(text: str | None, folder: bool = False) -> Path | None:
        """A (resolved) path from a row when it names an existing file (``folder``: a folder) under the root
        or an ``--allow-dir`` folder; None otherwise (URIs included)."""
        if not text or "://" in text:
            return None
        p = Path(text)
        p = (root / p).resolve() if not p.is_absolute() else p.resolve()
        inside = any(d == p or d in p.parents for d in allowed) if folder else any(d in p.parents for d in allowed)
        return p if inside and (p.is_dir() if folder else p.is_file()) else None

    @app.get("/api/reference")
    def reference(output: str, split: str, key: str = Query(..., max_length=500)):
        """The reference patch of a replacement (``meta["reference"]``, read through
        :class:`~..contracts.ReferencePatch`), as a PNG (RGBA: alpha is the object's mask where the patch
        has one): the embedded ``patch_png_b64``; else the full patch from its gallery (``gallery`` +
        ``patch``), or another sample of this output named by ``key``; else ``file`` cropped to ``bbox``.
        Files and galleries are read only under the root or an ``--allow-dir`` folder, after the output's
        ``{source.x}`` tokens are resolved. A reference that is missing, malformed or out of reach is a
        404 (the page shows its fields); one that does not decode is an error tile."""
        row = need_row(output, split, key)
        try:
            ref = find_reference(catalog.meta(row), need_output(output).roots)  # file/gallery tokens resolved
        except RecordError as e:
            raise HTTPException(404, f"malformed reference: {e}") from None
        if ref is None:
            raise HTTPException(404, "no reference in meta")
        try:
            if ref.patch_png_b64:
                return png_response(ref.rgba())
            gallery = allowed_path(ref.gallery, folder=True)
            if gallery is not None and ref.patch is not None and allowed_path(str(gallery / ref.patch.tar)):
                return png_response(dataclasses.replace(ref, gallery=str(gallery)).gallery_rgba())
            if ref.key:
                other = catalog.find_key(output, ref.key)
                if other is not None and other.get("src_size"):
                    data = read_member(tar_path(other), other["src_offset"], other["src_size"])
                    validate_image(data, "image")
                    return Response(data, media_type=check_image(data))
            f = allowed_path(ref.file)
            if f is not None:
                return png_response(dataclasses.replace(ref, file=str(f)).rgba())
        except RecordError as e:
            return member_error_response(MemberError(str(e)))
        except (MemberError, OSError, ValueError) as e:
            return member_error_response(e)
        raise HTTPException(404, "reference image not reachable under the root")

    # -- labels ----------------------------------------------------------------------------------------
    @app.get("/api/labels")
    def labels(output: str, key: str | None = Query(None, max_length=500),
               group: str | None = Query(None, max_length=500)):
        out = need_output(output)
        return LabelStore(out.path, output).history(key=key, group_id=group)

    # Posts: the token first (nothing read), then the body within MAX_BODY_BYTES, then its typed model;
    # the label store's work runs in the thread pool.
    @app.post("/api/labels")
    async def add_label(request: Request, x_audit_token: str | None = Header(None)):
        require_token(x_audit_token)
        body = await read_post(request, LabelPost)
        return await run_in_threadpool(add_label_sync, body)

    def add_label_sync(body: LabelPost):
        need_row(body.output, body.split, body.key)
        out = need_output(body.output)
        return LabelStore(out.path, body.output).add(body.key, body.verdict, body.auditor, body.comment)

    # -- alignment -------------------------------------------------------------------------------------
    @app.get("/api/align/groups")
    def align_groups(output: str | None = None, page: int = Query(0, ge=0),
                     page_size: int = Query(24, ge=1, le=MAX_PAGE_SIZE)):
        if output:
            need_output(output)
        return catalog.groups(output, page=page, page_size=page_size)

    @app.get("/api/align/group")
    def align_group(output: str, group: str = Query(..., max_length=500)):
        out = need_output(output)
        rows = catalog.group(output, group)
        if not rows:
            raise HTTPException(404, "no such group")
        return {"candidates": rows, "labels": LabelStore(out.path, output).history(group_id=group)}

    @app.post("/api/align/pick")
    async def align_pick(request: Request, x_audit_token: str | None = Header(None)):
        require_token(x_audit_token)
        body = await read_post(request, PickPost)
        return await run_in_threadpool(align_pick_sync, body)

    def align_pick_sync(body: PickPost):
        output, group, keys = body.output, body.group, body.keys or []
        out = need_output(output)
        members = {r["key"] for r in catalog.group(output, group)}
        if not members:
            raise HTTPException(404, "no such group")
        if set(keys) - members:
            raise HTTPException(422, "every pick must be a candidate of the group")
        return LabelStore(out.path, output).pick(group, keys, body.auditor, body.comment)

    @app.post("/api/align/export")
    async def align_export(request: Request, x_audit_token: str | None = Header(None)):
        """Export the picks of one output beside its labels, ``<out>/<name>/.audit/<version>/alignment``
        (a fixed place under the root, outside the output: nothing but the engine writes into an output)."""
        require_token(x_audit_token)
        body = await read_post(request, ExportPost)
        return await run_in_threadpool(align_export_sync, body)

    def align_export_sync(body: ExportPost):
        out = need_output(body.output)
        store = LabelStore(out.path, out.rel)
        if not store.path.is_file():
            raise HTTPException(404, "no labels for this output yet")
        dest = labels_home(out.path) / "alignment"
        manifest = export_alignment(store.path, dest)
        where = dest.resolve()
        return {"out": where.relative_to(root.resolve()).as_posix() if root.resolve() in where.parents
                else str(dest), "splits": {s: manifest["splits"][s]["rows"] for s in SPLITS}}

    return app
