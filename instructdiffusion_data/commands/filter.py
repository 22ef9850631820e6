"""``idd filter OUTPUT --set rule=value ... [--out NEWOUTPUT]``: re-apply quality thresholds.

Reads the parquet sidecars of the output's current generation only (the scores are in
``meta["scores"]``, the rules in ``models.quality.RULES``): nothing is recomputed. Each row that the
``quality_filter`` stage scored is kept when it was kept before the filter (``meta["filter"]
["prior_drop"]`` is empty) and passes every rule under the new thresholds; auditor labels (beside the
output, :mod:`..audit.labels`; newest accept/reject per key) override both ways. Rows the filter never
saw keep their split unless an auditor labelled them.

Every shard is rewritten (same shard numbers, same writer, so the format and byte-reproducibility
are those of ``idd run``): the image members are copied out of the old tars by the parquet offsets,
each read checked against the sidecar's sizes and each file against the manifest's (a damaged shard
stops the filter with one line naming it). Without ``--out`` the rows become a new *generation* of the
output (``generations/NNNN/``) and the output's pointer ``CURRENT.json`` is switched to it last, so a
kill at any point leaves the previous generation whole and current (:mod:`..generations`,
docs/reliability.md). With ``--out`` a new output folder is written (its manifest last) and the old one
is left as it was. The new manifest records every file's size and sha256; ``filter_report.json`` and
the histograms go into the new generation; what moved is printed per rule. How one row is decided
again is :mod:`..refilter`.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

from .. import faults
from ..generations import MANIFEST, write_atomic

log = logging.getLogger("idd.filter")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filter", help="re-apply quality thresholds to an output from its parquet sidecars")
    p.add_argument("output", help="output folder (shards/<name>/<version>, holding manifest.json)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="RULE=VALUE",
                   help="a threshold: aesthetic_tgt_min=5.0, giqa_tgt_min=ref:p10, aesthetic_diff_max=none, ...")
    p.add_argument("--out", default=None, help="write the re-filtered output here (default: rewrite in place)")
    p.add_argument("--no-audit", action="store_true", help="ignore auditor labels")
    p.add_argument("--report-only", action="store_true",
                   help="only (re)write filter_report.json and the histograms; move nothing")
    p.add_argument("--dry-run", action="store_true", help="print what would move; write nothing")
    p.set_defaults(func=main)


def parse_sets(items: list[str]) -> dict[str, object]:
    import yaml

    from ..errors import UserError
    from ..models.quality import RULES

    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item}: expected rule=value")
        k, v = item.split("=", 1)
        k = k.strip()
        if k not in RULES:
            raise UserError(f"--set {k}: unknown rule (known: {', '.join(RULES)})")
        try:
            val = yaml.safe_load(v)
        except yaml.YAMLError:
            val = v
        out[k] = val
    return out


def refilter(root, sets: dict, dest, *, use_audit: bool = True, dry_run: bool = False) -> dict:
    """Re-filter; in place under the output's generation lock (see :func:`_refilter`)."""
    from ..generations import as_location, lock

    if dry_run or not (dest is None or _same(dest, as_location(root))):
        return _refilter(root, sets, dest, use_audit=use_audit, dry_run=dry_run)
    with lock(root):
        return _refilter(root, sets, dest, use_audit=use_audit, dry_run=False)


def _refilter(root, sets: dict, dest, *, use_audit: bool = True, dry_run: bool = False) -> dict:
    """Re-filter the current generation of the output at ``root``.

    In place (``dest`` None or ``root``): the rows are written as a new generation beside the old ones
    and the output's pointer is switched to it last (:mod:`..generations`); a kill at any point leaves
    the previous generation current, and the next run removes what the killed one left. With ``dest``:
    a new output there (its manifest written last; an unfinished one of ours is cleared and redone).
    """
    from ..audit.labels import overrides
    from ..errors import UserError
    from ..generations import as_location, commit, current, new_generation
    from ..models.quality import RULES, member_tar, read_member, read_sidecar
    from ..refilter import cause, refilter_row, row_scores
    from ..writer import SPLITS

    root_loc = as_location(root)
    src = current(root_loc)
    shards = _source_shards(src)
    audit = overrides(root) if use_audit and root_loc.local else {}
    if use_audit and not root_loc.local:
        log.info("%s: on an object store: auditor labels (kept on a local disk) are not applied", root_loc)
    in_place = dest is None or _same(dest, root_loc)
    gen = None
    target = None
    if not dry_run:
        if in_place:
            gen = new_generation(root_loc, note={"by": "idd filter", "set": {k: str(v) for k, v in sets.items()}})
            faults.point("filter.generation")
            target = gen.loc
        else:
            target = _prepare_dest(as_location(dest))
    writer = _writer(target, src.manifest) if target is not None else None
    moved_out: Counter = Counter()
    moved_in: Counter = Counter()
    totals = Counter()
    applicable: Counter = Counter()
    files_of: dict[tuple[str, str], dict] = {}
    for name, entries in shards.items():
        rows = []
        fhs: dict = {}
        try:
            for split, entry in sorted(entries.items()):
                pq_loc = src.file(entry["parquet"])
                pq_path = Path(pq_loc.path) if pq_loc.local else pq_loc
                srows = read_sidecar(pq_path)
                if len(srows) != entry["rows"]:
                    raise UserError(f"{pq_loc}: damaged shard: {len(srows)} rows, the manifest "
                                    f"{src.manifest_loc} says {entry['rows']}")
                for r in srows:
                    st = refilter_row(r, sets, audit)
                    keep, reason, meta = st["keep"], st["drop_reason"], st["meta"]
                    was = bool(r.get("keep"))
                    if was and not keep:
                        for c in cause(r.get("drop_reason"), reason, True):
                            moved_out[c] += 1
                    elif keep and not was:
                        causes = (["audit:accept"] if audit.get(r["key"]) == "accept"
                                  else cause(r.get("drop_reason"), reason, False))
                        for c in causes:
                            moved_in[c] += 1
                    totals["train" if keep else "rejected"] += 1
                    scores = row_scores(r, meta)
                    for f in sets:
                        if RULES[f].score in scores:
                            applicable[f] += 1
                    audit_hit = audit.get(r["key"])
                    if audit_hit:
                        totals[f"audit_{audit_hit}"] += 1
                    new = {"key": r["key"], "task": r["task"], "dataset": r["dataset"],
                           "instruction": r["instruction"], "meta": meta, "keep": keep, "drop_reason": reason,
                           "drop_class": st["drop_class"], "drop_detail": st["drop_detail"]}
                    if not dry_run:
                        tar = member_tar(pq_path, r["tar"])
                        for col in ("src", "tgt", "mask"):
                            new[col] = read_member(tar, r.get(f"{col}_offset"), r.get(f"{col}_size"), fhs)
                    rows.append(new)
        finally:
            for fh in fhs.values():
                fh.close()
        if not dry_run:
            info = _shard_info(src, entries)
            if info:
                writer.write_shard(int(name), rows, info)
            else:
                writer.write_shard(int(name), rows)
            faults.point("filter.shard")
            for split in SPLITS:
                files_of[(split, name)] = _shard_files(target, split, name)
    result = {"moved_to_rejected": dict(moved_out), "moved_to_train": dict(moved_in), "totals": dict(totals),
              "set": dict(sets), "audit_labels": len(audit),
              "rows_with_score": {f: applicable[f] for f in sets}}
    if dry_run:
        result["generation"] = src.number
        return result
    old_manifest = src.manifest
    extra = {k: v for k, v in old_manifest.items() if k not in ("format", "code_version", "config", "splits")}
    extra["refilter"] = {"from": str(root_loc), "from_generation": src.number, **result}
    if in_place:
        extra["generation"] = gen.number
    else:
        extra.pop("generation", None)
        _copy_run_file(root_loc, target)
    # the report first, the manifest last: a --out output is complete once its manifest exists
    _write_report(target)  # from the sidecars just written
    faults.point("filter.report")
    manifest = writer.write_manifest(config=old_manifest.get("config", {}), extra=extra)
    faults.point("filter.manifest")
    if _fill_file_fields(manifest, files_of):
        write_atomic(target / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        faults.point("filter.manifest_files")
    if in_place:
        commit(root_loc, gen, point="filter.pointer")
        result["generation"] = gen.number
        result["generation_path"] = str(gen.loc)
    result["from_generation"] = src.number
    return result


# what a stats file says about one split (the writer recomputes these); everything else in it is a fact of
# the shard (records, inputs, reader counters) and is carried over to the new generation
_SPLIT_KEYS = {"shard", "split", "files", "rows", "tasks", "datasets", "drop_reasons", "verified", "bytes",
               "rows_without_image", "rows_without_image_examples"}


def _shard_info(src, entries: dict) -> dict:
    """The shard facts of the source shard's stats (the same in both splits), for ``write_shard(info=)``."""
    for split in sorted(entries):
        loc = src.file(f"{split}/{entries[split]['parquet'].rsplit('/', 1)[-1].split('.')[0]}.stats.json")
        try:
            st = json.loads(loc.read_text())
        except (OSError, ValueError):
            continue
        return {k: v for k, v in st.items() if k not in _SPLIT_KEYS}
    return {}


def _same(dest, root_loc) -> bool:
    from ..generations import as_location

    d = as_location(dest)
    return d.fs.type_name == root_loc.fs.type_name and d.path.rstrip("/") == root_loc.path.rstrip("/")


def _source_shards(src) -> dict[str, dict[str, dict]]:
    """``{shard name: {split: manifest entry}}`` of a generation, its manifest checked against its files
    (one line naming the manifest and field, or the missing or damaged file)."""
    from ..errors import UserError
    from ..writer import SPLITS

    m, where = src.manifest, src.manifest_loc
    splits = m.get("splits")
    if not isinstance(splits, dict):
        raise UserError(f"{where}: field splits: expected an object")
    out: dict[str, dict[str, dict]] = {}
    unchecked = 0
    for split in SPLITS:
        info = splits.get(split, {"shards": []})
        shards = info.get("shards") if isinstance(info, dict) else None
        if not isinstance(shards, list):
            raise UserError(f"{where}: field splits.{split}.shards: expected a list")
        for i, e in enumerate(shards):
            field = f"splits.{split}.shards[{i}]"
            if not isinstance(e, dict):
                raise UserError(f"{where}: field {field}: expected an object")
            for k in ("tar", "parquet"):
                if not isinstance(e.get(k), str) or not _safe_rel(e[k]):
                    raise UserError(f"{where}: field {field}.{k}: expected a path inside the output, got {e.get(k)!r}")
            if not isinstance(e.get("rows"), int) or isinstance(e.get("rows"), bool) or e["rows"] < 0:
                raise UserError(f"{where}: field {field}.rows: expected a whole number >= 0, got {e.get('rows')!r}")
            name = e["parquet"].rsplit("/", 1)[-1].split(".")[0]
            if not name.isdigit():
                raise UserError(f"{where}: field {field}.parquet: not a shard file name: {e['parquet']!r}")
            for k in ("tar", "parquet"):
                loc = src.file(e[k])
                facts = _size(loc)
                if facts is None:
                    raise UserError(f"{loc}: missing (listed in {where} as {field}.{k})")
                want = e.get(f"{k}_bytes")
                if want is None:
                    unchecked += 1
                elif facts != want:
                    raise UserError(f"{loc}: damaged shard: {facts} bytes, the manifest {where} says {want}")
            out.setdefault(name, {})[split] = e
    if unchecked:
        log.warning("%s: no file sizes in the manifest (an older output): shard files are checked by their "
                    "sidecar offsets only", where)
    return dict(sorted(out.items()))


def _safe_rel(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and ".." not in parts and "" not in parts


def _size(loc) -> int | None:
    import pyarrow.fs as pafs

    info = loc.fs.get_file_info(loc.path)
    return int(info.size) if info.type == pafs.FileType.File else None


def _prepare_dest(dest):
    """The ``--out`` folder: empty, or an unfinished output of an earlier ``idd filter --out`` (its marker
    and no manifest), whose files are removed. Anything else is refused."""
    from ..errors import UserError
    from ..generations import MARKER, clear_engine_files

    try:
        exists = dest.exists()
        names = _all_files(dest) if exists else []
    except OSError as e:
        raise UserError(f"--out {dest}: cannot read ({e})") from None
    if names:
        if MARKER in names and MANIFEST not in names:
            log.info("%s: removing the unfinished output of an earlier idd filter --out", dest)
            left = clear_engine_files(dest)
            for extra in (".idd-run.json",):
                if extra in left:
                    (dest / extra).delete_file()
                    left.remove(extra)
            if left:
                raise UserError(f"--out {dest}: holds files idd filter did not write ({left[0]})")
        else:
            raise UserError(f"--out {dest}: exists and is not empty")
    try:
        dest.mkdir()
        (dest / MARKER).write_text(json.dumps({"generation": 0, "by": "idd filter --out"}, indent=1))
    except OSError as e:
        raise UserError(f"--out {dest}: cannot write ({e.strerror or e})") from None
    faults.point("filter.out")
    return dest


def _all_files(loc) -> list[str]:
    from ..generations import _files

    return _files(loc)


def _writer(target, manifest: dict):
    import inspect

    from ..writer import ShardWriter

    params = inspect.signature(ShardWriter.__init__).parameters
    kw = {}
    if "output" in params and "version" in params:
        kw = {"output": manifest.get("name"), "version": manifest.get("version")}
    return ShardWriter(target, **kw)


def _digest(loc) -> dict:
    n, sha = loc.digest()
    return {"bytes": n, "sha256": sha}


def _shard_files(target, split: str, name: str) -> dict:
    """Size and sha256 of a written shard's tar and parquet: from its stats when the writer recorded
    them, else computed here and added to the stats (``files``)."""
    stats_loc = target / split / f"{name}.stats.json"
    st = json.loads(stats_loc.read_text())
    files = st.get("files")
    ok = isinstance(files, dict) and all(
        isinstance(files.get(k), dict) and files[k].get("bytes") is not None and files[k].get("sha256")
        for k in ("tar", "parquet"))
    if not ok:
        files = {k: _digest(target / split / f"{name}.{k}") for k in ("tar", "parquet")}
        st["files"] = files
        write_atomic(stats_loc, json.dumps(st, indent=1, sort_keys=True))
        faults.point("filter.stats")
    return files


def _fill_file_fields(manifest: dict, files_of: dict) -> bool:
    """Add ``tar_bytes``/``tar_sha256``/``parquet_bytes``/``parquet_sha256`` to the manifest's shard
    entries where the writer did not; True when something was added."""
    changed = False
    for split, info in (manifest.get("splits") or {}).items():
        for e in info.get("shards") or []:
            name = e["tar"].rsplit("/", 1)[-1].split(".")[0]
            files = files_of.get((split, name))
            if not files:
                continue
            for k in ("tar", "parquet"):
                for field, val in ((f"{k}_bytes", files[k]["bytes"]), (f"{k}_sha256", files[k]["sha256"])):
                    if e.get(field) is None:
                        e[field] = val
                        changed = True
    return changed


def _copy_run_file(root_loc, dest) -> None:
    from ..writer import RUN_FILE

    src = root_loc / RUN_FILE
    if src.is_file():
        (dest / RUN_FILE).write_bytes(src.read_bytes())


def _write_report(target, rows: list[dict] | None = None) -> dict:
    """``filter_report.json`` and the histograms into a generation folder (through a local temporary
    folder on an object store)."""
    import tempfile

    from ..models.quality import REPORT_DIR, REPORT_FILE, write_report

    if target.local:
        return write_report(Path(target.path), rows)
    with tempfile.TemporaryDirectory(prefix="idd-report-") as tmp:
        rep = write_report(Path(tmp), rows if rows is not None else _rows_of(target))
        for p in sorted(Path(tmp).rglob("*")):
            if p.is_file():
                rel = p.relative_to(tmp).as_posix()
                (target / REPORT_DIR / p.name if rel.startswith(REPORT_DIR + "/") else target / REPORT_FILE
                 ).write_bytes(p.read_bytes())
    return rep


def _rows_of(target) -> list[dict]:
    from ..models.quality import iter_output_rows

    return list(iter_output_rows(target))


def main(args: argparse.Namespace) -> int:
    from ..generations import current
    from ..models.quality import output_root

    root = output_root(args.output)
    if args.report_only:
        gen = current(root)
        rep = _write_report(gen.loc, None)
        print(f"report: {gen.loc / 'filter_report.json'} ({rep['rows_scored']} of {rep['rows']} rows scored)")
        for rule, n in sorted(rep["drops_per_rule"].items()):
            print(f"  dropped {n:6d}  {rule}")
        return 0
    sets = parse_sets(args.overrides)
    res = refilter(root, sets, args.out, use_audit=not args.no_audit, dry_run=args.dry_run)
    if args.dry_run:
        where = "(dry run)"
    elif args.out and "generation_path" not in res:
        where = str(args.out)
    else:
        where = f"generation {res['generation']} ({res['generation_path']})"
    print(f"re-filtered {root} (generation {res['from_generation'] if 'from_generation' in res else res['generation']})"
          f" -> {where}")
    if sets:
        print("  thresholds: " + ", ".join(f"{k}={v}" for k, v in sets.items()))
    print(f"  train {res['totals'].get('train', 0)}, rejected {res['totals'].get('rejected', 0)}"
          f"; auditor labels applied: {res['audit_labels']}")
    for f, n in res["rows_with_score"].items():
        if not n:
            print(f"  note: no row has the score of {f}; that threshold changes nothing")
    print(f"  train -> rejected: {sum(res['moved_to_rejected'].values())}")
    for rule, n in sorted(res["moved_to_rejected"].items(), key=lambda kv: -kv[1]):
        print(f"    {n:6d}  {rule}")
    print(f"  rejected -> train: {sum(res['moved_to_train'].values())}")
    for rule, n in sorted(res["moved_to_train"].items(), key=lambda kv: -kv[1]):
        print(f"    {n:6d}  no longer fails {rule}")
    return 0
