"""``idd takedown ROOT --source ID``: move every row made from one source image or record to rejected.

For each output under ROOT (``ROOT/<name>/<version>``, or ROOT itself when it is an output) the rows of
its current generation are matched against ID: records (the sidecar's ``source_id``, the meta's
``record_id``, ``provenance.source_id``), images (``image_id``, ``provenance.image``, and
``reference.image_id``: the image an object-replacement row took its pasted patch from) and the source
files the row was made from (``file``, ``target_file``, ``mask_file``, ``reference.file``: as written with
their ``{root}`` token, resolved to the absolute path, by file name or by file name without extension). A bare ID
matches any of them; ``record:ID``, ``image:ID`` and ``file:NAME`` match one kind only (a COCO image id
and a RefCOCO ref id can be the same number); ``--dataset`` and ``--output`` narrow further. A matching row is moved to
``rejected`` with the reason class ``takedown`` (details: the requested id and the date) ahead of any
reason it had, and its image members are removed (``--keep-images`` keeps them in ``rejected``).

The move is a new *generation* of the output (:mod:`..generations`, the mechanism of ``idd filter``):
shards without a match are linked (or copied) into it unchanged, shards with one are rewritten by the
shard writer, the manifest (with a ``takedowns`` entry) is written last, and the output's pointer
``CURRENT.json`` is switched at the end: a kill at any point leaves the previous generation current.
Each switched output gets a line in ``<output>/takedown_log.jsonl``; a dataset card written by
``idd card`` at ROOT is rewritten to point at the new generations.

Earlier generations (and generation 0, what ``idd run`` wrote) still hold the rows: they are listed in
the log entry; remove them once no mixture names them, and add the id to the pipeline's
``source.exclude_image_ids`` so a rerun does not make the rows again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import posixpath
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("idd.takedown")

LOG_FILE = "takedown_log.jsonl"
REASON = "takedown"
_PATH_FIELDS = ("file", "target_file", "mask_file")
_ID_FIELDS = ("record_id", "image_id")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("takedown", help="move every row made from a source image or record to rejected (new generation)")
    p.add_argument("root", help="the folder holding the outputs (or one output folder)")
    p.add_argument("--source", dest="sources", action="append", required=True, metavar="ID",
                   help="source record id, image id or image file (name, stem or path); qualify it to match one "
                        "kind only: record:ID, image:ID, file:NAME; repeatable")
    p.add_argument("--dataset", action="append", default=None,
                   help="only rows of this dataset (a row's dataset column, e.g. coco); repeatable")
    p.add_argument("--output", dest="outputs", action="append", default=None,
                   help="only this output (its name, name/version or folder under ROOT); repeatable")
    p.add_argument("--note", default=None, help="free text recorded with the takedown (e.g. the request's reference)")
    p.add_argument("--keep-images", action="store_true", help="keep the rows' images in rejected (default: remove them)")
    p.add_argument("--dry-run", action="store_true", help="print the matching rows; write nothing")
    p.set_defaults(func=main)


# -- matching ---------------------------------------------------------------------------------------


def _path_keys(value: Any, roots: dict) -> set[str]:
    if not isinstance(value, str) or not value:
        return set()
    from ..roots import resolve_path

    keys = {value, resolve_path(value, roots)}
    base = posixpath.basename(value.replace("\\", "/"))
    if base:
        keys.add(base)
        stem = base.rsplit(".", 1)[0]
        if stem:
            keys.add(stem)
    return keys


def row_keys(row: dict, roots: dict) -> set[str]:
    """Every identifier a takedown request may name for this sidecar row: bare, and qualified by kind
    (``record:<id>``, ``image:<id>``, ``file:<name, stem or path>``)."""
    meta = row.get("meta") or {}
    prov = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {}
    ref = meta.get("reference") if isinstance(meta.get("reference"), dict) else {}  # a pasted patch's source
    records = {row.get("source_id"), meta.get("record_id"), prov.get("source_id")}
    images = {meta.get("image_id"), prov.get("image"), ref.get("image_id")}
    files: set[str] = set()
    for f in _PATH_FIELDS:
        files |= _path_keys(meta.get(f), roots)
    files |= _path_keys(ref.get("file"), roots)
    keys: set[str] = set()
    for kind, vals in (("record", records), ("image", images), ("file", files)):
        for v in vals:
            if v is not None and str(v) != "":
                keys.add(str(v))
                keys.add(f"{kind}:{v}")
    return keys


def match(row: dict, wanted: set[str], roots: dict, datasets: set[str] | None) -> str | None:
    """The requested id this row matches (None: no match)."""
    if datasets and row.get("dataset") not in datasets:
        return None
    hit = row_keys(row, roots) & wanted
    return min(hit) if hit else None


def apply_takedown(row: dict, requested: str, date: str, note: str | None, keep_images: bool) -> dict:
    """The row moved to rejected: class ``takedown`` first (its earlier reasons kept after it), the
    request in ``meta["takedown"]``, its images removed unless ``keep_images``."""
    entry = {"class": REASON, "requested": requested, "date": date}
    if note:
        entry["note"] = note
    text = f"{REASON} (requested={requested}, date={date})"
    out = dict(row)
    out["keep"] = False
    out["drop_class"] = REASON
    out["drop_detail"] = [json.dumps(entry, sort_keys=True), *(row.get("drop_detail") or [])]
    out["drop_reason"] = text + (f";{row['drop_reason']}" if row.get("drop_reason") else "")
    meta = dict(row.get("meta") or {})
    meta["takedown"] = {"requested": requested, "date": date, "was_kept": bool(row.get("keep")),
                        "images_removed": not keep_images, **({"note": note} if note else {})}
    out["meta"] = meta
    if not keep_images:
        out["src"] = out["tgt"] = out["mask"] = None
    return out


# -- one output -------------------------------------------------------------------------------------


def _lock(root_loc):
    from .. import generations

    lock = getattr(generations, "lock", None)
    return lock(root_loc) if lock is not None else contextlib.nullcontext()


def _link_or_copy(src, dst) -> None:
    """A shard file of the previous generation into the new one: a hard link on a local disk (shard files
    are never changed in place), else a copy."""
    if src.local and dst.local:
        try:
            os.link(src.path, dst.path)
            return
        except OSError:
            pass
    src.fs.copy_file(src.path, dst.path)


_SPLIT_KEYS = {"shard", "split", "files", "rows", "tasks", "datasets", "drop_reasons", "verified", "bytes",
               "rows_without_image", "rows_without_image_examples"}


def scan_output(out_dir, wanted: set[str], datasets: set[str] | None, keep_images: bool = False) -> dict:
    """``{"gen": Generation, "shards": {name: {split: entry}}, "hits": {name: {key: id}}, "rows": [...],
    "already": [...]}`` for one output: which rows of its current generation match (rows an earlier
    takedown already moved are listed apart and left as they are)."""
    from ..generations import as_location, current
    from ..models.quality import read_sidecar
    from .filter import _source_shards

    loc = as_location(out_dir)
    src = current(loc)
    shards = _source_shards(src)
    roots = (src.manifest or {}).get("roots") or {}
    hits: dict[str, dict[str, str]] = {}
    found: list[dict] = []
    already: list[dict] = []
    for name, entries in shards.items():
        for split, entry in sorted(entries.items()):
            pq_loc = src.file(entry["parquet"])
            for r in read_sidecar(Path(pq_loc.path) if pq_loc.local else pq_loc):
                rid = match(r, wanted, roots, datasets)
                if rid is None:
                    continue
                done = r["meta"].get("takedown") if isinstance(r.get("meta"), dict) else None
                if isinstance(done, dict) and (done.get("images_removed") or keep_images):
                    already.append({"key": r["key"], "requested": rid, "date": done.get("date")})
                    continue
                hits.setdefault(name, {})[r["key"]] = rid
                found.append({"key": r["key"], "split": split, "shard": name, "dataset": r.get("dataset"),
                              "task": r.get("task"), "requested": rid})
    return {"loc": loc, "gen": src, "shards": shards, "hits": hits, "rows": found, "already": already}


def takedown_output(scan: dict, *, date: str, note: str | None, keep_images: bool, sources: list[str]) -> dict:
    """Write the new generation of one output with the matched rows moved, then switch its pointer."""
    from .. import faults
    from ..generations import commit, new_generation
    from ..models.quality import member_tar, read_member, read_sidecar
    from ..writer import ShardWriter, shard_name
    from .filter import _write_report

    root_loc, src, shards, hits = scan["loc"], scan["gen"], scan["shards"], scan["hits"]
    old = src.manifest or {}
    with _lock(root_loc):
        gen = new_generation(root_loc, note={"by": "idd takedown", "sources": sources})
        faults.point("takedown.generation")
        writer = ShardWriter(gen.loc, output=old.get("name"), version=old.get("version"))
        moved = Counter()
        for name, entries in shards.items():
            if name not in hits:
                for split, entry in sorted(entries.items()):
                    d = gen.loc / split
                    d.mkdir()
                    _link_or_copy(src.file(entry["tar"]), d / f"{name}.tar")
                    _link_or_copy(src.file(entry["parquet"]), d / f"{name}.parquet")
                for split in sorted(entries):  # the completion markers last
                    stats = src.file(f"{split}/{name}.stats.json")
                    (gen.loc / split / f"{name}.stats.json").write_bytes(stats.read_bytes())
                faults.point("takedown.copy")
                continue
            rows, info, fhs = [], {}, {}
            try:
                for split, entry in sorted(entries.items()):
                    pq_loc = src.file(entry["parquet"])
                    pq_path = Path(pq_loc.path) if pq_loc.local else pq_loc
                    st_loc = src.file(f"{split}/{name}.stats.json")
                    if not info and st_loc.is_file():  # shard facts (records, inputs, reader): the same in both
                        st = json.loads(st_loc.read_text())
                        info = {k: v for k, v in st.items() if k not in _SPLIT_KEYS}
                    for r in read_sidecar(pq_path):
                        tar = member_tar(pq_path, r["tar"])
                        row = {"key": r["key"], "task": r["task"], "dataset": r["dataset"],
                               "instruction": r["instruction"], "meta": r["meta"], "keep": bool(r["keep"]),
                               "drop_reason": r.get("drop_reason"), "drop_class": r.get("drop_class"),
                               "drop_detail": r.get("drop_detail")}
                        rid = hits[name].get(r["key"])
                        if rid is None or keep_images:
                            for col in ("src", "tgt", "mask"):
                                row[col] = read_member(tar, r.get(f"{col}_offset"), r.get(f"{col}_size"), fhs)
                        if rid is not None:
                            moved["from_train" if row["keep"] else "from_rejected"] += 1
                            row = apply_takedown(row, rid, date, note, keep_images)
                        rows.append(row)
            finally:
                for fh in fhs.values():
                    fh.close()
            writer.write_shard(int(name), rows, info)
            faults.point("takedown.shard")
        entry = {"date": date, "sources": sources, "note": note, "from_generation": src.number,
                 "generation": gen.number, "rows": sum(len(v) for v in hits.values()), **moved,
                 "images_removed": not keep_images,
                 "shards": sorted(shard_name(int(n)) for n in hits)}
        extra = {k: v for k, v in old.items() if k not in ("format", "code_version", "config", "splits")}
        extra["generation"] = gen.number
        extra["takedowns"] = [*(old.get("takedowns") or []), entry]
        if src.file("filter_report.json").is_file() and gen.loc.local:
            _write_report(gen.loc, None)  # the report follows the rows (it existed before)
        writer.write_manifest(config=old.get("config", {}), extra=extra)
        faults.point("takedown.manifest")
        commit(root_loc, gen, point="takedown.pointer", extra={"by": "idd takedown"})
    entry["still_in_generations"] = [n for n in sorted(set(gen.committed) - {gen.number})]
    _append_log(root_loc, {**entry, "keys": {k: v for h in hits.values() for k, v in sorted(h.items())}})
    return entry


def _append_log(root_loc, entry: dict) -> None:
    line = json.dumps(entry, sort_keys=True) + "\n"
    target = root_loc / LOG_FILE
    if root_loc.local:
        with open(target.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
    else:  # no append on object stores: read, add, put
        old = target.read_text() if target.is_file() else ""
        target.write_text(old + line)


# -- all outputs ------------------------------------------------------------------------------------


def _select(root: Path, outputs: list[Path], wanted: list[str] | None) -> list[Path]:
    if not wanted:
        return outputs
    keep = []
    for d in outputs:
        rel = d.relative_to(root).as_posix() if d != root else "."
        names = {rel, d.name, d.parent.name, f"{d.parent.name}/{d.name}"}
        try:
            m = json.loads((d / "manifest.json").read_text())
            names |= {str(m.get("name")), f"{m.get('name')}/{m.get('version')}"}
        except (OSError, ValueError):
            pass
        if names & set(wanted):
            keep.append(d)
    return keep


def takedown(root: str | os.PathLike, sources: list[str], *, datasets: list[str] | None = None,
             outputs: list[str] | None = None, note: str | None = None, keep_images: bool = False,
             dry_run: bool = False) -> dict:
    """Take down ``sources`` in every output under ``root``; returns ``{"outputs": {rel: entry}, ...}``."""
    from ..card import CARD_FILE, is_idd_card, write_card
    from ..card_outputs import find_outputs
    from ..errors import UserError
    from ..storage import is_uri

    if is_uri(str(root)):
        raise UserError(f"{root}: give a local folder (the outputs under it are found by listing)")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder")
    wanted = {s.strip() for s in sources if s and s.strip()}
    if not wanted:
        raise UserError("--source: give a source id")
    found = _select(root, find_outputs(root), outputs)
    if not found:
        raise UserError(f"{root}: no output below" + (f" named {', '.join(outputs)}" if outputs else ""))
    date = datetime.now(UTC).isoformat(timespec="seconds")
    result: dict[str, Any] = {"date": date, "sources": sorted(wanted), "outputs": {}, "dry_run": dry_run}
    scans = []
    for d in found:
        sc = scan_output(d, wanted, set(datasets) if datasets else None, keep_images)
        rel = d.relative_to(root).as_posix() if d != root else "."
        if sc["rows"]:
            scans.append((rel, sc))
        result["outputs"][rel] = {"rows": sc["rows"], "already": sc["already"], "generation": sc["gen"].number}
    result["matched"] = sum(len(v["rows"]) for v in result["outputs"].values())
    result["already"] = sum(len(v["already"]) for v in result["outputs"].values())
    if dry_run:
        return result
    for rel, sc in scans:
        entry = takedown_output(sc, date=date, note=note, keep_images=keep_images, sources=sorted(wanted))
        result["outputs"][rel]["switched"] = entry
        log.info("%s: %d rows taken down -> generation %d", rel, entry["rows"], entry["generation"])
    # the card names generations: rewrite it (also when an earlier run was killed after its switch)
    card = root / CARD_FILE
    if is_idd_card(card):
        write_card(root)
        result["card"] = str(card)
    return result


def main(args: argparse.Namespace) -> int:
    res = takedown(args.root, args.sources, datasets=args.dataset, outputs=args.outputs, note=args.note,
                   keep_images=args.keep_images, dry_run=args.dry_run)
    what = "would move" if args.dry_run else "moved"
    print(f"takedown {', '.join(res['sources'])}: {res['matched']} rows {what} to rejected"
          + (" (dry run)" if args.dry_run else ""))
    for rel, o in sorted(res["outputs"].items()):
        if not o["rows"]:
            continue
        by = Counter(f"{r['split']}" for r in o["rows"])
        line = f"  {rel}: {len(o['rows'])} rows (train {by.get('train', 0)}, rejected {by.get('rejected', 0)})"
        sw = o.get("switched")
        if sw:
            line += f" -> generation {sw['generation']}"
            if sw.get("still_in_generations"):
                line += f"; still in earlier generations {sw['still_in_generations']} (remove them when unused)"
        print(line)
        for r in o["rows"][:10]:
            print(f"      {r['split']:8s} {r['key']}  (matched {r['requested']})")
        if len(o["rows"]) > 10:
            print(f"      ... {len(o['rows']) - 10} more")
    if res.get("card"):
        print(f"  card rewritten: {res['card']}")
    if res["already"]:
        print(f"  {res['already']} matching rows were taken down before (left as they are)")
    if not res["matched"] and not res["already"]:
        print("  no row matches (ids are compared with source_id, record_id, image_id and the source file names)")
        return 1
    if not args.dry_run:
        print("  to keep a rerun from making these rows again, add the ids to the pipeline's source.exclude_image_ids")
    return 0
