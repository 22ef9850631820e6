"""The shard writer (DESIGN.md, "Shards on disk"; the format is specified in shards/README.md).

One *shard* is the output of one fixed group of source records. Its rows are sorted by key and split
into ``train/NNNNNN.*`` (kept) and ``rejected/NNNNNN.*`` (dropped). Each split gets a WebDataset tar,
a parquet sidecar with every column but the image bytes plus the byte offsets of the members, and a
stats json. Files are written under ``*.tmp`` names and renamed when complete, stats last: a shard
is finished when both stats files exist, and a rerun skips finished shards, so a run killed at any
point and rerun ends with every sample exactly once. Tars are byte-reproducible (sorted members, fixed
mtime, owner and mode).
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


def write_tar(path: Path, rows: list[Row]) -> list[dict]:
    """Write rows (already sorted by key) to ``path``; return per-row member offsets."""
    placements = []
    with open(path, "wb") as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
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
    """Writes finished shards under ``root`` and the output's manifest."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def split_dir(self, split: str) -> Path:
        return self.root / split

    def is_done(self, index: int) -> bool:
        return all((self.split_dir(s) / f"{shard_name(index)}.stats.json").is_file() for s in SPLITS)

    def done_shards(self) -> set[int]:
        d = self.split_dir("train")
        if not d.is_dir():
            return set()
        found = {int(p.name.split(".")[0]) for p in d.glob("*.stats.json") if p.name.split(".")[0].isdigit()}
        return {i for i in found if self.is_done(i)}

    def write_shard(self, index: int, rows: Iterable[Row]) -> dict:
        rows = sorted(rows, key=lambda r: r["key"])
        keys = [r["key"] for r in rows]
        if len(set(keys)) != len(keys):
            dup = next(k for k, c in Counter(keys).items() if c > 1)
            raise ValueError(f"shard {index}: duplicate key {dup}: a stage must give each variant its own key")
        name = shard_name(index)
        parts = {"train": [r for r in rows if r.get("keep")], "rejected": [r for r in rows if not r.get("keep")]}
        pending: list[tuple[Path, Path]] = []
        stats_out = {}
        for split, srows in parts.items():
            d = self.split_dir(split)
            d.mkdir(parents=True, exist_ok=True)
            tar_tmp = d / f"{name}.tar.tmp"
            placements = write_tar(tar_tmp, srows)
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
            pq_tmp = d / f"{name}.parquet.tmp"
            pq.write_table(table, pq_tmp, compression="zstd")
            stats = {"shard": name, "split": split, **split_stats(srows)}
            stats_out[split] = stats
            st_tmp = d / f"{name}.stats.json.tmp"
            st_tmp.write_text(json.dumps(stats, indent=1, sort_keys=True))
            pending += [(tar_tmp, d / f"{name}.tar"), (pq_tmp, d / f"{name}.parquet")]
            pending.append((st_tmp, d / f"{name}.stats.json"))
        # data files first, stats (the completion markers) last
        for tmp, final in sorted(pending, key=lambda p: p[1].name.endswith(".stats.json")):
            os.replace(tmp, final)
        return stats_out

    def write_manifest(self, *, config: dict, extra: dict | None = None) -> dict:
        """Aggregate every finished shard's stats into ``manifest.json``."""
        manifest: dict[str, Any] = {"format": "instructdiffusion-data/1", "code_version": code_version(),
                                    "config": config, "splits": {}}
        for split in SPLITS:
            d = self.split_dir(split)
            shards, tasks, datasets, reasons, verified = [], Counter(), Counter(), Counter(), Counter()
            total = 0
            for st_path in sorted(d.glob("*.stats.json")) if d.is_dir() else []:
                st = json.loads(st_path.read_text())
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
        tmp = self.root / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, self.root / MANIFEST)
        return manifest
