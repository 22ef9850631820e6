"""The shard writer (DESIGN.md, "Shards on disk"; the format is specified in shards/README.md).

One *shard* is the output of one fixed group of source records. Its rows are sorted by key and split
into ``train/NNNNNN.*`` (kept) and ``rejected/NNNNNN.*`` (dropped). Each split gets a WebDataset tar,
a parquet sidecar with every column but the image bytes plus the byte offsets of the members, and a
stats json. Files are written under ``*.tmp`` names and renamed when complete, stats last: a shard
is finished when both stats files exist, and a rerun skips finished shards, so a run killed at any
point and rerun ends with every sample exactly once. Tars are byte-reproducible (sorted members, fixed
mtime, owner and mode).

The root may be an object-store URI (``s3://bucket/prefix``, ``gs://...``; see :mod:`storage`). Object
stores have no rename, but an object only becomes visible once its upload is complete, so there the
commit is write-then-marker: every data object of the shard (tars, parquets) is written under its
final name first and the stats jsons, the completion markers, last. A shard cut short leaves data
objects without markers; it is not done, and the rerun writes it again over them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .imageio import sniff_ext
from .schema import Row, dumps_meta
from .storage import Location, is_uri

log = logging.getLogger(__name__)

SPLITS = ("train", "rejected")
IMAGE_MEMBERS = ("src", "tgt", "mask")
MANIFEST = "manifest.json"
RUN_FILE = ".idd-run.json"

SIDECAR_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("task", pa.string()),
        ("dataset", pa.string()),
        ("instruction", pa.string()),
        ("meta", pa.string()),
        ("keep", pa.bool_()),
        ("drop_reason", pa.string()),
        ("tar", pa.string()),
        ("src_member", pa.string()),
        ("src_offset", pa.int64()),
        ("src_size", pa.int64()),
        ("tgt_member", pa.string()),
        ("tgt_offset", pa.int64()),
        ("tgt_size", pa.int64()),
        ("mask_member", pa.string()),
        ("mask_offset", pa.int64()),
        ("mask_size", pa.int64()),
    ]
)

_REASON_DETAIL = re.compile(r"\s*\([^()]*\)\s*$")


def reason_class(reason: str | None) -> str:
    """The reason without its per-record details ("image file missing (file=a.jpg, record=3)" ->
    "image file missing"), for counting."""
    if not reason:
        return ""
    return ";".join(_REASON_DETAIL.sub("", part) for part in reason.split(";"))


def shard_name(index: int) -> str:
    return f"{index:06d}"


def code_version() -> dict:
    info: dict[str, Any] = {"package": __version__}
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            info["git"] = out.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
            info["dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def sample_members(row: Row) -> dict[str, bytes]:
    """The WebDataset members of one row: ``src.<ext>``, ``tgt.<ext>``, ``mask.png``, ``txt``, ``json``."""
    members: dict[str, bytes] = {}
    for col in IMAGE_MEMBERS:
        data = row.get(col)
        if data:
            members[f"{col}.{sniff_ext(data)}"] = data
    if row.get("instruction") is not None:
        members["txt"] = row["instruction"].encode("utf-8")
    meta = row.get("meta") or {}
    if isinstance(meta, str):
        meta = json.loads(meta)
    doc = {"task": row.get("task"), "dataset": row.get("dataset"), "keep": bool(row.get("keep")),
           "drop_reason": row.get("drop_reason"), "meta": meta}
    members["json"] = dumps_meta(doc).encode("utf-8")
    return members


def write_tar(path: Path | Any, rows: list[Row]) -> list[dict]:
    """Write rows (already sorted by key) to ``path`` (or an open binary stream); return per-row member
    offsets."""
    if hasattr(path, "write"):
        placements = _write_tar_stream(path, rows)
    else:
        with open(path, "wb") as fh:
            placements = _write_tar_stream(fh, rows)
    return placements


def _write_tar_stream(fh: Any, rows: list[Row]) -> list[dict]:
    placements = []
    with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for row in rows:
            place: dict[str, Any] = {}
            for suffix, data in sorted(sample_members(row).items()):
                name = f"{row['key']}.{suffix}"
                tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
                padded = (len(data) + 511) // 512 * 512
                col = suffix.split(".")[0]
                if col in IMAGE_MEMBERS:
                    place[f"{col}_member"] = name
                    place[f"{col}_offset"] = tar.offset - padded
                    place[f"{col}_size"] = len(data)
            placements.append(place)
    return placements


def split_stats(rows: list[Row]) -> dict:
    tasks = Counter(r.get("task") or "" for r in rows)
    datasets = Counter(r.get("dataset") or "" for r in rows)
    reasons = Counter(reason_class(r.get("drop_reason")) for r in rows if not r.get("keep"))
    verified = Counter()
    for r in rows:
        meta = r.get("meta") or {}
        if "verified" in meta:
            verified["checked"] += 1
            verified["passed"] += bool(meta["verified"])
    no_image = [
        {"key": r["key"], "file": (r.get("meta") or {}).get("file"), "record": (r.get("meta") or {}).get("record_id"),
         "reason": r.get("drop_reason")}
        for r in rows if not r.get("src")
    ]
    return {
        "rows": len(rows),
        "tasks": dict(sorted(tasks.items())),
        "datasets": dict(sorted(datasets.items())),
        "drop_reasons": dict(sorted(reasons.items())),
        "verified": dict(verified),
        "bytes": {c: sum(len(r.get(c) or b"") for r in rows) for c in IMAGE_MEMBERS},
        "rows_without_image": no_image,
    }


class ShardWriter:
    """Writes finished shards under ``root`` (a folder or an object-store URI) and the output's manifest."""

    def __init__(self, root: str | os.PathLike | Location):
        self.loc = root if isinstance(root, Location) else Location(root)
        if isinstance(root, Location):
            self.root = Path(root.path) if root.local else str(root)
        else:
            self.root = str(self.loc) if is_uri(root) else Path(root)

    def split_dir(self, split: str) -> Path | Location:
        return self.root / split if isinstance(self.root, Path) else self.loc / split

    def _names(self, split: str) -> set[str]:
        return set((self.loc / split).names())

    def is_done(self, index: int) -> bool:
        return all(f"{shard_name(index)}.stats.json" in self._names(s) for s in SPLITS)

    def done_shards(self) -> set[int]:
        names = {s: self._names(s) for s in SPLITS}
        found = {n.split(".")[0] for n in names["train"] if n.endswith(".stats.json")}
        return {int(n) for n in found if n.isdigit() and all(f"{n}.stats.json" in names[s] for s in SPLITS)}

    def write_shard(self, index: int, rows: Iterable[Row]) -> dict:
        rows = sorted(rows, key=lambda r: r["key"])
        keys = [r["key"] for r in rows]
        if len(set(keys)) != len(keys):
            dup = next(k for k, c in Counter(keys).items() if c > 1)
            raise ValueError(f"shard {index}: duplicate key {dup}: a stage must give each variant its own key")
        name = shard_name(index)
        parts = {"train": [r for r in rows if r.get("keep")], "rejected": [r for r in rows if not r.get("keep")]}
        # local: write "<final>.tmp" and rename; object store: write the final object directly (no rename)
        suffix = ".tmp" if self.loc.atomic_rename else ""
        pending: list[tuple[Location, Location]] = []
        markers: list[tuple[Location, str]] = []
        stats_out = {}
        for split, srows in parts.items():
            d = self.loc / split
            d.mkdir()
            tar_out = d / f"{name}.tar{suffix}"
            with tar_out.open_write() as fh:
                placements = write_tar(fh, srows)
            table = pa.Table.from_pylist(
                [
                    {
                        "key": r["key"], "task": r.get("task"), "dataset": r.get("dataset"),
                        "instruction": r.get("instruction"),
                        "meta": r["meta"] if isinstance(r.get("meta"), str) else dumps_meta(r.get("meta") or {}),
                        "keep": bool(r.get("keep")), "drop_reason": r.get("drop_reason"), "tar": f"{name}.tar", **p,
                    }
                    for r, p in zip(srows, placements)
                ],
                schema=SIDECAR_SCHEMA,
            )
            pq_out = d / f"{name}.parquet{suffix}"
            with pq_out.open_write() as fh:
                pq.write_table(table, fh, compression="zstd")
            stats = {"shard": name, "split": split, **split_stats(srows)}
            stats_out[split] = stats
            text = json.dumps(stats, indent=1, sort_keys=True)
            if suffix:
                st_tmp = d / f"{name}.stats.json{suffix}"
                st_tmp.write_text(text)
                pending += [(tar_out, d / f"{name}.tar"), (pq_out, d / f"{name}.parquet")]
                pending.append((st_tmp, d / f"{name}.stats.json"))
            else:
                markers.append((d / f"{name}.stats.json", text))
        # data files first, stats (the completion markers) last
        for tmp, final in sorted(pending, key=lambda p: p[1].name.endswith(".stats.json")):
            tmp.replace(final)
        for marker, text in markers:
            marker.write_text(text)
        return stats_out

    def write_manifest(self, *, config: dict, extra: dict | None = None) -> dict:
        """Aggregate every finished shard's stats into ``manifest.json``."""
        manifest: dict[str, Any] = {"format": "instructdiffusion-data/1", "code_version": code_version(),
                                    "config": config, "splits": {}}
        for split in SPLITS:
            shards, tasks, datasets, reasons, verified = [], Counter(), Counter(), Counter(), Counter()
            total = 0
            for st_name in sorted(n for n in (self.loc / split).names() if n.endswith(".stats.json")):
                st = json.loads((self.loc / split / st_name).read_text())
                shards.append({"tar": f"{split}/{st['shard']}.tar", "parquet": f"{split}/{st['shard']}.parquet",
                               "rows": st["rows"]})
                total += st["rows"]
                tasks.update(st["tasks"])
                datasets.update(st["datasets"])
                reasons.update(st["drop_reasons"])
                verified.update(st.get("verified", {}))
            manifest["splits"][split] = {
                "rows": total, "shards": shards, "tasks": dict(sorted(tasks.items())),
                "datasets": dict(sorted(datasets.items())), "drop_reasons": dict(sorted(reasons.items())),
                "verified": dict(verified),
            }
        if extra:
            manifest.update(extra)
        text = json.dumps(manifest, indent=1, sort_keys=True)
        if self.loc.atomic_rename:
            tmp = self.loc / f"{MANIFEST}.tmp"
            tmp.write_text(text)
            tmp.replace(self.loc / MANIFEST)
        else:
            (self.loc / MANIFEST).write_text(text)  # an object appears whole when its upload completes
        return manifest
