"""The outputs under a card's root: which folders are outputs, and what the card says about each
(its current generation's shards, row counts, member names, tasks, datasets and licences; its config name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_ROLES = ("src", "tgt", "mask")


# --------------------------------------------------------------------------------------------------
# Outputs under a root


@dataclass
class OutputCard:
    """What the card says about one output (its current generation)."""

    rel: str                  # the output folder relative to the card's root ("" when the root is the output)
    name: str
    version: str
    generation: int
    gen_rel: str              # the generation folder relative to the card's root
    manifest: dict
    train_tars: list[str] = field(default_factory=list)      # relative to the card's root
    train_parquets: list[str] = field(default_factory=list)
    rejected_tars: list[str] = field(default_factory=list)
    train_rows: int = 0
    rejected_rows: int = 0
    train_bytes: int = 0      # bytes of the tars (the split sizes in the card's ``dataset_info``)
    rejected_bytes: int = 0
    members: set[str] = field(default_factory=set)            # member suffixes of the train split ("src.jpg", "txt")
    rejected_members: set[str] = field(default_factory=set)
    tasks: dict[str, int] = field(default_factory=dict)
    datasets: dict[str, int] = field(default_factory=dict)
    licences: dict[str, int] = field(default_factory=dict)   # the rows' licence column (train)
    config_name: str = ""

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"


def _posix(rel: Path | str) -> str:
    s = Path(rel).as_posix()
    return "" if s == "." else s


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def find_outputs(root: Path) -> list[Path]:
    """Output folders under ``root``: ``root`` itself when it is one, else ``root/<name>/<version>`` (and
    ``root/<name>`` when that holds the manifest), sorted."""
    from .generations import is_output

    if is_output(root):
        return [root]
    found = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if is_output(d):
            found.append(d)
            continue
        for v in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if is_output(v):
                found.append(v)
    return found


def _member_suffix(member: str | None) -> str | None:
    if not member:
        return None
    return member.split(".", 1)[1] if "." in member else None


def read_output(root: Path, out_dir: Path, *, with_rejected: bool = False) -> OutputCard:
    """The card facts of one output: its current generation's shard lists from the manifest, checked
    against the files (missing file or row count different from the manifest: UserError), and the member
    names, tasks, datasets and licences from the train sidecars."""
    import pyarrow.parquet as pq

    from .errors import UserError
    from .generations import current

    gen = current(out_dir)
    m = gen.manifest or {}
    rel = _posix(out_dir.relative_to(root))
    gen_rel = _join(rel, gen.rel)
    oc = OutputCard(rel=rel, name=str(m.get("name") or out_dir.parent.name), version=str(m.get("version") or out_dir.name),
                    generation=gen.number, gen_rel=gen_rel, manifest=m)
    splits = m.get("splits") or {}
    where = gen.manifest_loc
    cols = ["task", "dataset", "licence", *(f"{r}_member" for r in IMAGE_ROLES), "instruction"]
    for split in ("train", "rejected"):
        info = splits.get(split) or {}
        for i, e in enumerate(info.get("shards") or []):
            tar, pqf = e.get("tar"), e.get("parquet")
            if not isinstance(tar, str) or not isinstance(pqf, str):
                raise UserError(f"{where}: field splits.{split}.shards[{i}]: expected tar and parquet paths")
            tar_path, pq_path = Path(gen.path) / tar, Path(gen.path) / pqf
            for p in (tar_path, pq_path):
                if not p.is_file():
                    raise UserError(f"{p}: missing (listed in {where} as splits.{split}.shards[{i}])")
            if split == "rejected":
                if e.get("rows"):
                    oc.rejected_tars.append(_join(gen_rel, tar))
                oc.rejected_rows += int(e.get("rows") or 0)
                oc.rejected_bytes += tar_path.stat().st_size
                if not with_rejected:
                    continue
            table = pq.read_table(pq_path, columns=cols)
            if table.num_rows != e.get("rows"):
                raise UserError(f"{pq_path}: damaged shard: {table.num_rows} rows, the manifest {where} says {e.get('rows')}")
            d = table.to_pydict()
            members = oc.members if split == "train" else oc.rejected_members
            for role in IMAGE_ROLES:
                members.update(s for s in map(_member_suffix, d[f"{role}_member"]) if s)
            if any(t is not None for t in d["instruction"]):
                members.add("txt")
            members.add("json")
            if split == "train":
                if table.num_rows:  # a shard whose rows were all dropped adds an empty tar: left out
                    oc.train_tars.append(_join(gen_rel, tar))
                    oc.train_parquets.append(_join(gen_rel, pqf))
                oc.train_rows += table.num_rows
                oc.train_bytes += tar_path.stat().st_size
                for key, acc in (("task", oc.tasks), ("dataset", oc.datasets), ("licence", oc.licences)):
                    for v in d[key]:
                        k = v if v is not None else ("(none)" if key == "licence" else "")
                        acc[k] = acc.get(k, 0) + 1
    return oc


_CONFIG_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def assign_config_names(outputs: list[OutputCard]) -> None:
    """``name`` when one version of that output is under the root, ``name_version`` when several."""
    by_name: dict[str, int] = {}
    for o in outputs:
        by_name[o.name] = by_name.get(o.name, 0) + 1
    taken: set[str] = set()
    for o in outputs:
        base = o.name if by_name[o.name] == 1 else f"{o.name}_{o.version}"
        base = _CONFIG_SAFE.sub("_", base).strip("_") or "output"
        name, i = base, 2
        while name in taken or name == "default":
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        o.config_name = name
