"""Resume knows its inputs: which finished shards were made from other inputs than the plan's, and a
one-line description of what changed (docs/reliability.md, "Inputs that change")."""

from __future__ import annotations

import json

from .readers._base import PLAN_DIR, RecordSource, ShardSpec, Source, file_facts
from .storage import Location
from .writer import ShardWriter


def changed_inputs(source: Source, writer: ShardWriter, loc: Location, specs: list[ShardSpec],
                    done: set[int]) -> tuple[list[int], list[int], str]:
    """Finished shards whose inputs differ from the plan (or that the plan no longer has), and a
    one-line description of what changed."""
    by_index = {s.index: s for s in specs}
    changed, stale = [], sorted(i for i in done if i not in by_index)
    what = ""
    for i in sorted(done & set(by_index)):
        try:
            st = writer.shard_stats(i)
        except (OSError, ValueError):
            changed.append(i)
            continue
        rec = (st.get("inputs") or {}).get("fingerprint")
        if rec != by_index[i].fingerprint:
            changed.append(i)
            if not what:
                what = describe_change(source, loc, st, by_index[i])
    if not what and stale:
        what = f"the inputs now make {len(specs)} shards, shards up to {max(stale)} were written before"
    return changed, stale, what


def describe_change(source: Source, loc: Location, st: dict, spec: ShardSpec) -> str:
    old = {f[0]: f[1:] for f in (st.get("inputs") or {}).get("files") or []}
    if isinstance(source, RecordSource):
        for d in (loc / PLAN_DIR).dirs():
            f = loc / PLAN_DIR / d / "index.json"
            try:
                idx = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if idx.get("fingerprint") == (st.get("inputs") or {}).get("fingerprint"):
                old = {x[0]: x[1:] for x in idx.get("inputs", [])}
        now = {f[0]: f[1:] for f in source.inputs_fingerprint(0)[1]}
    else:
        now = {p: file_facts(p)[1:] for it in spec.items or [] for p in it}
    for name in sorted(set(old) | set(now)):
        a, b = old.get(name), now.get(name)
        if a != b:
            if a is None:
                return f"new input {name}"
            if b is None or b[0] < 0:
                return f"input {name} is gone"
            return f"input {name} changed (size {a[0]} -> {b[0]}, mtime {a[1]} -> {b[1]})"
    return f"inputs of shard {spec.index} ({spec.label}) changed"
