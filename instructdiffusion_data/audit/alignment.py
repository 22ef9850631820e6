"""Alignment picks -> a regular output (train split tars + parquet + manifest) the trainer reads.

Paper section 3.3: for samples edited with several guidance scales, auditors pick the best 0-2 targets;
that set fine-tunes the model. The picks are ``align_pick`` labels in the output's labels file (beside
it, ``<out>/<name>/.audit/<version>/labels.sqlite``, or ``<output>/audit/labels.sqlite`` from older
versions; see :mod:`.labels`); the samples are read back from the shards of that output's current
generation (:mod:`..generations`) by their sidecar offsets and written again with
:class:`~instructdiffusion_data.writer.ShardWriter`, each row's ``meta`` gaining an ``alignment`` entry
(group, auditor, time, source output and generation). The export's manifest carries the source output's
``roots``, so the ``{source.x}`` path tokens in the rows it copies still resolve. A pick that cannot be
exported is a rejected row with a drop class (``picked sample not found in the source output``, ``image
unreadable``) and the key, tar and error as details.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import duckdb

from ..errors import UserError
from ..generations import current, is_output
from ..schema import drop, new_row
from ..writer import MANIFEST, SPLITS, ShardWriter
from .catalog import finished_parquets
from .images import MemberError, read_member
from .labels import alignment_picks, labels_home, output_of_labels

log = logging.getLogger(__name__)

EXPORT_KIND = "alignment-export"
ROWS_PER_SHARD = 1000


def source_output_of(labels: Path) -> Path:
    """``<out>/<name>/.audit/<version>/labels.sqlite`` (or the older ``<output>/audit/labels.sqlite``)
    -> the output folder (which must hold a manifest)."""
    out = output_of_labels(labels)
    if not is_output(out):
        raise UserError(f"{labels}: expected at <out>/<name>/.audit/<version>/labels.sqlite (or "
                        f"<output>/audit/labels.sqlite), but {out} has no {MANIFEST}")
    return out


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        man = out / MANIFEST
        try:
            prev = json.loads(man.read_text()) if man.is_file() else {}
        except ValueError:
            prev = {}
        if (prev.get("config") or {}).get("kind") != EXPORT_KIND:
            raise UserError(f"{out}: exists and is not an earlier alignment export; choose an empty folder")
        for split in SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)
        man.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def export_alignment(labels: str | Path, out: str | Path) -> dict:
    """Write the alignment picks of one labels file as an output at ``out``; returns the manifest."""
    labels, out = Path(labels), Path(out)
    if not labels.is_file() and labels.parent.name == "audit":  # the old place: moved beside the output
        moved = labels_home(output_of_labels(labels)) / labels.name
        labels = moved if moved.is_file() else labels
    if not labels.is_file():
        raise UserError(f"{labels}: no such labels file")
    src_out = source_output_of(labels)
    gen = current(src_out)
    src_dir = Path(gen.loc.path)
    picks = alignment_picks(labels)
    by_key = {p["key"]: p for p in picks}
    found: dict[str, dict] = {}
    con = duckdb.connect(":memory:")
    for split in SPLITS:
        files = finished_parquets(src_dir / split)
        if not files or not by_key:
            continue
        cur = con.execute("SELECT * FROM read_parquet(?) WHERE list_contains(?, key) ORDER BY key",
                          [files, list(by_key)])
        cols = [d[0] for d in cur.description]
        for rec in cur.fetchall():
            r = dict(zip(cols, rec))
            found.setdefault(r["key"], {**r, "_split": split})
    con.close()
    rows = []
    for key, pick in sorted(by_key.items()):
        r = found.get(key)
        if r is None:
            row = new_row(key=key, meta={"alignment": pick, "source_output": str(src_out)})
            rows.append(drop(row, "picked sample not found in the source output", key=key))
            continue
        try:
            meta = json.loads(r["meta"]) if r["meta"] else {}
        except ValueError:
            meta = {"_unparsed": r["meta"]}
        meta["alignment"] = {**pick, "source_output": str(src_out), "source_generation": gen.number,
                             "source_split": r["_split"]}
        row = new_row(key=key, task=r["task"], dataset=r["dataset"], instruction=r["instruction"], meta=meta)
        tar = src_dir / r["_split"] / r["tar"]
        try:
            if src_out.resolve() not in tar.resolve().parents:
                raise MemberError("tar outside the output")
            for col in ("src", "tgt", "mask"):
                if r[f"{col}_size"]:
                    row[col] = read_member(tar, r[f"{col}_offset"], r[f"{col}_size"])
            if not row["src"] or not row["tgt"]:
                raise MemberError("source or target image missing")
        except MemberError as e:
            drop(row, "image unreadable", error=str(e), key=key, tar=f"{r['_split']}/{r['tar']}")
        rows.append(row)
    _prepare_out(out)
    writer = ShardWriter(out)
    for i in range(0, max(len(rows), 1), ROWS_PER_SHARD):
        writer.write_shard(i // ROWS_PER_SHARD, rows[i:i + ROWS_PER_SHARD])
    manifest = writer.write_manifest(
        config={"kind": EXPORT_KIND, "labels": str(labels.resolve()), "source_output": str(src_out),
                "source_generation": gen.number},
        extra={"name": "alignment", "version": out.name, "mixture_weight": 1.0,
               # the rows keep their {source.x} path tokens: the source output's roots still resolve them
               "roots": gen.manifest.get("roots") or {},
               "source_manifest": {**{k: gen.manifest.get(k) for k in ("name", "version")},
                                   "generation": gen.number}})
    log.info("alignment export: %d picks -> %s", len(rows), out)
    return manifest
