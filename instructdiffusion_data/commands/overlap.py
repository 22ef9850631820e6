"""``idd overlap OUTPUT... --eval EVAL...``: images shared between training outputs and evaluation splits.

RefCOCO, RefCOCO+ and RefCOCOg draw their val/testA/testB images from COCO train2014, the images COCO
keypoints, COCO-Stuff and the RefCOCO training split are built from: training on them leaks the
evaluation images. This command reads the training outputs' parquet sidecars (``meta.image_id``,
``meta.image_set``; no image is opened) and the evaluation splits, and reports per output and per split
how many images, and how many training rows, are shared. ``--write FILE`` writes the shared image ids
(as the training readers name them) one per line: give it to the pipelines as
``source.exclude_image_ids`` and rerun; those records then land in ``rejected/`` with the class
``image excluded (source.exclude_image_ids)``.

An evaluation argument is one of:

* a refer-toolkit refs pickle (``refs(unc).p``, ``refs(umd).p``, ``refs(google).p``) or a gRefCOCO
  ``grefs(unc).json``: its splits (``--splits``, default every split but ``train``), COCO image ids;
* an output folder (``idd run`` wrote it, e.g. a referring-segmentation output of a val split): the
  images of all its rows, as one split named after the output;
* a text file of image ids (one per line, ``#`` comments) or a JSON list: one split named after the file,
  ids of ``--eval-image-set`` (default ``coco``).

Images are compared within an *image set*: rows carry ``meta.image_set`` (``coco`` for the COCO-family
readers: COCO keypoints, COCO-Stuff, RefCOCO, gRefCOCO) and PhraseCut rows their ``coco_id``; rows of
other datasets are compared by ``(dataset, image_id or file name)``, so unrelated numbering never matches.
"""

from __future__ import annotations

import argparse
import json
import logging
import posixpath
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

from ..errors import UserError

log = logging.getLogger("idd.overlap")

SPLITS = ("train", "rejected")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("overlap", help="images shared between training outputs and evaluation splits "
                                       "(e.g. RefCOCO val/testA/testB in COCO-built training data)")
    p.add_argument("outputs", nargs="+", metavar="OUTPUT",
                   help="training output folders (or folders holding outputs)")
    p.add_argument("--eval", dest="evals", nargs="+", required=True, metavar="REFS_FILE_OR_OUTPUT",
                   help="refs(unc).p / grefs(unc).json (their splits), an output folder, or a file of image ids")
    p.add_argument("--splits", default=None,
                   help="comma-separated splits of the refs files to check (default: every split but train)")
    p.add_argument("--eval-image-set", default="coco",
                   help="image set of the ids in refs files and id lists (default: coco)")
    p.add_argument("--include-rejected", action="store_true",
                   help="count the training outputs' rejected rows too (default: train rows only)")
    p.add_argument("--write", metavar="FILE", default=None,
                   help="write the shared image ids (one per line) for source.exclude_image_ids")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--check", action="store_true", help="exit 1 when any image is shared")
    p.set_defaults(func=main)


# -- identities -----------------------------------------------------------------------------------

def _id_text(v: Any) -> str | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else None
    if isinstance(v, (int, str)) and str(v) != "":
        return str(v)
    return None


def identities(dataset: str | None, meta: dict) -> list[tuple[str, str]]:
    """The ``(image set, id)`` pairs naming the image of a row."""
    out = []
    iid = _id_text(meta.get("image_id"))
    image_set = meta.get("image_set") if isinstance(meta.get("image_set"), str) and meta.get("image_set") else None
    if iid is not None:
        out.append((image_set or f"dataset:{dataset}", iid))
    coco = _id_text(meta.get("coco_id"))
    if coco is not None and image_set != "coco":
        out.append(("coco", coco))
    if not out:
        f = meta.get("file") or meta.get("image")
        if isinstance(f, str) and f:
            out.append((f"dataset:{dataset}", posixpath.basename(f.replace("\\", "/"))))
    return out


# -- reading outputs ------------------------------------------------------------------------------

def find_outputs(path: str) -> list[str]:
    from ..generations import is_output

    if is_output(path):
        return [path]
    if "://" in path:
        raise UserError(f"{path}: not a shard output (no manifest.json)")
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{path}: no such output folder")
    from .inspect import find_outputs as walk

    found = [str(o) for o in walk(p)]
    if not found:
        raise UserError(f"{path}: holds no shard output (no manifest.json below it)")
    return found


def output_rows(root: str, splits: tuple[str, ...]) -> Iterator[tuple[str, str | None, dict]]:
    """``(split, dataset, meta)`` of every row of the output's current generation."""
    import pyarrow.parquet as pq

    from ..generations import current

    gen = current(root)
    for split in splits:
        d = gen.loc / split
        if not d.is_dir():
            continue
        for name in sorted(n for n in d.names() if n.endswith(".parquet")):
            loc = d / name
            try:
                table = pq.read_table(loc.path, filesystem=loc.fs, columns=["dataset", "meta"])
            except Exception as e:  # noqa: BLE001 - a damaged sidecar is one line, naming it
                raise UserError(f"{loc}: cannot read the parquet sidecar ({type(e).__name__}: {e})") from None
            for ds, meta in zip(table.column("dataset").to_pylist(), table.column("meta").to_pylist()):
                try:
                    m = json.loads(meta) if isinstance(meta, str) else (meta or {})
                except ValueError:
                    m = {}
                yield split, ds, m if isinstance(m, dict) else {}


def output_name(root: str) -> str:
    from ..generations import current

    m = current(root).manifest or {}
    name, version = m.get("name"), m.get("version")
    return f"{name}/{version}" if name and version else str(root).rstrip("/")


# -- evaluation splits ----------------------------------------------------------------------------

def _read_id_list(path: str) -> list[str]:
    from ..storage import read_bytes

    text = read_bytes(path).decode("utf-8")
    try:
        ids = json.loads(text)
        if isinstance(ids, list):
            return [t for t in (_id_text(v) for v in ids) if t is not None]
    except ValueError:
        pass
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def eval_splits(path: str, splits: set[str] | None, image_set: str) -> dict[str, set[tuple[str, str]]]:
    """``{split label: {(image set, id)}}`` of one ``--eval`` argument."""
    from ..generations import is_output

    if is_output(path) or Path(path).is_dir():
        out: dict[str, set] = {}
        for root in find_outputs(path):
            label = output_name(root)
            s = out.setdefault(label, set())
            for _, ds, meta in output_rows(root, SPLITS):
                s.update(identities(ds, meta))
        return out
    from ..storage import exists

    if not exists(path, "file"):
        raise UserError(f"--eval: file not found: {path}")
    refs = _load_refs(path)
    if refs is None:  # a list of ids
        return {Path(path).name: {(image_set, i) for i in _read_id_list(path)}}
    from ..readers.refcoco import split_image_ids

    out = {}
    base = Path(path).name
    for split, ids in sorted(split_image_ids(refs).items()):
        if (splits is None and split == "train") or (splits is not None and split not in splits):
            continue
        out[f"{base}:{split}"] = {(image_set, t) for t in (_id_text(v) for v in ids) if t is not None}
    if splits is not None:
        for s in sorted(splits - {lbl.rsplit(":", 1)[1] for lbl in out}):
            log.warning("%s has no split %r", path, s)
    return out


def _load_refs(path: str) -> Any:
    """The refs of a refs pickle or grefs json (an iterable of refs), or None for an id list."""
    from ..readers._json_stream import JsonStream
    from ..readers.refcoco import load_refs_pickle

    name = Path(path).name.lower()
    if name.endswith((".p", ".pkl", ".pickle")):
        try:
            return load_refs_pickle(path)
        except UserError as e:
            raise UserError(str(e).replace("source.refs", "--eval")) from None
    if name.endswith(".json"):
        stream = JsonStream(path, "--eval")
        if stream.first_char() == "[":
            items = list(stream.items("item"))
            if items and all(isinstance(r, dict) for r in items) and any("split" in r for r in items):
                return items
    return None


# -- the report -----------------------------------------------------------------------------------

def overlap(outputs: list[str], evals: list[str], *, splits: set[str] | None = None, image_set: str = "coco",
            include_rejected: bool = False) -> dict:
    eval_sets: dict[str, set] = {}
    for e in evals:
        for label, ids in eval_splits(e, splits, image_set).items():
            eval_sets.setdefault(label, set()).update(ids)
    all_eval = set().union(*eval_sets.values()) if eval_sets else set()
    report: dict = {"eval": {k: len(v) for k, v in sorted(eval_sets.items())}, "outputs": {}, "shared_ids": []}
    shared_ids: set[str] = set()
    id_sets: set[str] = set()
    roots = [r for o in outputs for r in find_outputs(o)]
    for root in roots:
        name = output_name(root)
        images: set = set()
        hits: dict[str, set] = defaultdict(set)
        rows: dict[str, int] = defaultdict(int)
        n_rows = 0
        for _, ds, meta in output_rows(root, SPLITS if include_rejected else ("train",)):
            n_rows += 1
            ids = identities(ds, meta)
            images.update(ids)
            inter = [i for i in ids if i in all_eval]
            if not inter:
                continue
            own = _id_text(meta.get("image_id"))
            if own is not None:
                shared_ids.add(own)
                id_sets.add(ids[0][0])
            for label, s in eval_sets.items():
                if any(i in s for i in inter):
                    hits[label].update(inter)
                    rows[label] += 1
        report["outputs"][name] = {
            "path": str(root), "rows": n_rows, "images": len(images),
            "shared": {label: {"images": len(hits[label]), "rows": rows[label]} for label in sorted(eval_sets)},
        }
    report["shared_ids"] = sorted(shared_ids, key=lambda t: (0, int(t), "") if t.lstrip("-").isdigit() else (1, 0, t))
    report["id_sets"] = sorted(id_sets)
    return report


def render(report: dict) -> str:
    lines = ["evaluation splits: " + (", ".join(f"{k} ({v} images)" for k, v in report["eval"].items()) or "none")]
    w = max([len(n) for n in report["outputs"]] + [6])
    for name, o in report["outputs"].items():
        lines.append(f"{name:<{w}}  {o['rows']} rows, {o['images']} images")
        for label, s in o["shared"].items():
            flag = "  <- shared" if s["images"] else ""
            lines.append(f"  {label}: {s['images']} images shared, {s['rows']} rows{flag}")
    lines.append(f"shared image ids: {len(report['shared_ids'])}")
    return "\n".join(lines)


def write_ids(path: str, report: dict, argv: list[str] | None = None) -> None:
    from ..storage import Location

    head = ["# image ids shared with evaluation splits, written by idd overlap",
            "# use as source.exclude_image_ids (one id per line)"]
    if len(report.get("id_sets", [])) > 1:
        head.append(f"# NOTE: ids of several image sets: {', '.join(report['id_sets'])}; use with readers of one set")
    Location(path).write_text("\n".join(head + report["shared_ids"]) + "\n")


def main(args: argparse.Namespace) -> int:
    splits = {s.strip() for s in args.splits.split(",") if s.strip()} if args.splits else None
    report = overlap(args.outputs, args.evals, splits=splits, image_set=args.eval_image_set,
                     include_rejected=args.include_rejected)
    if args.write:
        write_ids(args.write, report)
    if args.json:
        json.dump(report, sys.stdout, indent=1, sort_keys=True)
        print()
    else:
        print(render(report))
        if args.write:
            print(f"wrote {len(report['shared_ids'])} ids to {args.write}")
    shared = any(s["images"] for o in report["outputs"].values() for s in o["shared"].values())
    return 1 if args.check and shared else 0
