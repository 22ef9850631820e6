"""The images a GIQA reference is built from: a folder of images, or a shard output's kept images read
from its tars by the parquet offsets (:mod:`.giqa`)."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from ..errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def is_reference(path: str | Path) -> bool:
    """True for a built GIQA reference folder (it holds ``giqa.json``)."""
    return (Path(path) / "giqa.json").is_file()


def iter_images(path: str | Path, member: Literal["src", "tgt", "both"] = "src",
                limit: int | None = None) -> Iterator[tuple[str, bytes]]:
    """``(name, encoded bytes)`` of the images of a folder (recursive, sorted) or of a shard output
    (its ``train`` split, the ``member`` images read from the tars by the parquet offsets)."""
    from .quality import output_root, read_member, read_sidecar, shard_sidecars

    p = Path(path)
    n = 0
    is_output = (p / "manifest.json").is_file() or any(p.glob("*/manifest.json")) if p.is_dir() else False
    if is_output:
        root = output_root(p)
        members = ("src", "tgt") if member == "both" else (member,)
        for splits in shard_sidecars(root).values():
            if "train" not in splits:
                continue
            fhs: dict = {}
            try:
                for r in read_sidecar(splits["train"]):
                    for m in members:
                        data = read_member(splits["train"].parent / r["tar"], r.get(f"{m}_offset"),
                                           r.get(f"{m}_size"), fhs)
                        if data:
                            yield f"{r['key']}.{m}", data
                            n += 1
                            if limit and n >= limit:
                                return
            finally:
                for fh in fhs.values():
                    fh.close()
        return
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        for f in files:
            yield str(f), f.read_bytes()
            n += 1
            if limit and n >= limit:
                return
        return
    if p.is_file() and p.suffix == ".tar":
        with tarfile.open(p) as tf:
            for ti in sorted(tf.getmembers(), key=lambda t: t.name):
                if ti.isfile() and Path(ti.name).suffix.lower() in IMAGE_EXTS:
                    if member != "both" and f".{member}." not in ti.name:
                        continue
                    yield f"{p.name}/{ti.name}", tf.extractfile(ti).read()
                    n += 1
                    if limit and n >= limit:
                        return
        return
    raise UserError(f"{p}: not an image folder, a .tar or a shard output")


def reference_size(path: str | Path, member: Literal["src", "tgt", "both"] = "src",
                   at_least: int | None = None) -> int:
    """How many images the GIQA reference at ``path`` holds (a saved reference: its ``count``) or would
    be built from (files of a folder or a ``.tar``, rows of a shard output's train split). Cheap: names
    and headers only, never pixels; with ``at_least`` a listing stops once that many are found."""
    p = Path(path)
    if is_reference(p):
        try:
            return int(json.loads((p / "giqa.json").read_text()).get("count") or 0)
        except (ValueError, OSError):
            return 0
    if p.is_dir() and ((p / "manifest.json").is_file() or any(p.glob("*/manifest.json"))):
        from .quality import output_root

        root = Path(output_root(p))
        try:
            rows = int(json.loads((root / "manifest.json").read_text())["splits"]["train"]["rows"])
        except (KeyError, TypeError, ValueError, OSError):
            return 0
        return rows * (2 if member == "both" else 1)
    n = 0
    if p.is_dir():
        for f in p.rglob("*"):
            if f.suffix.lower() in IMAGE_EXTS and f.is_file():
                n += 1
                if at_least is not None and n >= at_least:
                    break
        return n
    if p.is_file() and p.suffix == ".tar":
        with tarfile.open(p) as tf:
            for ti in tf:
                if ti.isfile() and Path(ti.name).suffix.lower() in IMAGE_EXTS and (
                        member == "both" or f".{member}." in ti.name):
                    n += 1
                    if at_least is not None and n >= at_least:
                        break
        return n
    return 0
