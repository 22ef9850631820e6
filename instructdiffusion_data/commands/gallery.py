"""``idd gallery build CONFIG --out DIR [--no-ray]``: the patch gallery, embeddings and FAISS index of
the object-replacement pipeline (docs/ieiw_replacement.md), built per shard on Ray workers and
assembled in bounded memory; an interrupted build resumes. ``idd gallery info DIR`` prints its manifest.
``idd gallery query DIR --key KEY`` lists a region's neighbours (debugging retrieval)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gallery", help="object-replacement patch gallery: build / info / query")
    gsub = p.add_subparsers(dest="gallery_command", metavar="ACTION")
    b = gsub.add_parser("build", help="crop, embed and index every selected region of the configured sources")
    b.add_argument("config", help="gallery YAML, e.g. configs/pipelines/ieiw_replacement_gallery.yaml")
    b.add_argument("--out", default=None, help="output folder (default: shards/<name>)")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (dotted: index.type=ivfpq, sources.0.limit=100)")
    b.add_argument("--reuse", action="store_true",
                   help="keep DIR when it holds a gallery of this same config (the source files are not compared)")
    b.add_argument("--no-ray", action="store_true", help="build the shards in this process, one after the other")
    b.add_argument("--address", default=None, help="Ray cluster to join ('auto', 'ray://host:10001'); default: embedded")
    b.add_argument("--restart", action="store_true",
                   help="discard the finished shards of an interrupted build (DIR.tmp) instead of resuming")
    b.set_defaults(func=main_build)
    i = gsub.add_parser("info", help="print a gallery's manifest")
    i.add_argument("dir")
    i.set_defaults(func=main_info)
    q = gsub.add_parser("query", help="nearest gallery patches of one gallery region")
    q.add_argument("dir")
    q.add_argument("--key", required=True, help="gallery row key (see gallery.parquet)")
    q.add_argument("-k", type=int, default=10)
    q.set_defaults(func=main_query)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def main_build(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from .. import faults
    from ..config import apply_overrides, build, load_yaml, to_dict
    from ..replace.gallery import GalleryConfig, build_gallery
    from ..replace.gallery_layout import MANIFEST

    cfg = build(GalleryConfig, apply_overrides(load_yaml(args.config), args.overrides), where=Path(args.config).name)
    out = Path(args.out or f"shards/{cfg.name}")
    mf = out / MANIFEST
    if mf.is_file() and args.reuse and json.loads(mf.read_text()).get("config") == json.loads(
            json.dumps(to_dict(cfg), default=str)):
        print(f"gallery {out}: kept ({json.loads(mf.read_text())['patches']} patches, same config)")
        return 0
    # built aside and swapped in when complete: a killed build never leaves a half gallery in DIR, and
    # a rerun of the same config resumes from the shards DIR.tmp already holds
    tmp = out.with_name(out.name + ".tmp")
    m = build_gallery(cfg, tmp, use_ray=not args.no_ray, address=args.address, resume=not args.restart)
    if out.exists():
        shutil.rmtree(out)
    faults.point("gallery.swap")
    tmp.rename(out)
    print(f"gallery {out}: {m['patches']} patches ({', '.join(f'{k}={v}' for k, v in m['datasets'].items())}), "
          f"{m['rejected']} regions rejected, {m['dim']}-d {m['embedder']['type']} embeddings, "
          f"index {m['index']['factory']}, {m['seconds']}s")
    for reason, n in sorted(m["rejected_reasons"].items(), key=lambda kv: -kv[1])[:8]:
        print(f"    rejected {n:6d}  {reason}")
    return 0


def main_info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..replace.gallery_layout import MANIFEST

    mf = Path(args.dir) / MANIFEST
    if not mf.is_file():
        raise UserError(f"{args.dir}: not a gallery (no {MANIFEST})")
    print(mf.read_text())
    return 0


def main_query(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import UserError
    from ..models.faiss_index import search
    from ..replace.gallery_read import Gallery

    g = Gallery(args.dir)
    hits = [r for r in g.table if r["key"] == args.key]
    if not hits:
        raise UserError(f"--key {args.key}: not in {args.dir}/gallery.parquet")
    q = hits[0]
    sims, ids = search(g.index, np.asarray(g.embeddings[q["gallery_id"]])[None], args.k)
    for s, i in zip(sims[0], ids[0]):
        if i < 0:
            continue
        r = g.table[int(i)]
        same = " (same image)" if (r["dataset"], r["image_id"]) == (q["dataset"], q["image_id"]) else ""
        print(f"{s:7.4f}  {r['key']}  {r['label']}{same}")
    return 0
