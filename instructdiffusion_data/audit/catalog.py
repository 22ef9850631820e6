"""The outputs under an audit root and a DuckDB index over their parquet sidecars.

An *output* is a folder holding ``manifest.json`` (written by :class:`~instructdiffusion_data.writer.ShardWriter`);
what it holds now is its *current generation* (:mod:`..generations`: the folder itself, or
``generations/NNNN`` once ``idd filter`` has re-cut it), whose finished shards are
``{train,rejected}/NNNNNN.parquet`` with a ``.stats.json`` beside them. The ``tar`` column is relative to
the output folder (``generations/0001/train/000000.tar``), so the page reads the current files. The catalog
loads every sidecar into one DuckDB table ``samples`` (one row per sample, without the ``meta`` JSON, which is
read back from the one parquet file of a sample when its page is opened) with the columns the page filters and
sorts on extracted once:

- the drop classes: format 2 sidecars (``instructdiffusion-data/2``) name them, ``drop_class`` (the first)
  and the ``class`` of each ``drop_detail`` entry (with its ``threshold`` when a rule failed); nothing parses
  ``drop_reason``, which is display text. Format 1 sidecars (no ``drop_class`` column) fall back to the
  reason text without its trailing ``(details)``, part by part;
- the scores as a ``MAP(VARCHAR, DOUBLE)`` under the names rules and thresholds use (``aesthetic_tgt``,
  ``giqa_tgt``, ``clip_sim_dir``, ...), taken from the typed float32 score columns (``schema.SCORE_COLUMNS``)
  where the sidecar has them, else from ``meta["scores"]``; the typed columns themselves, for filters and
  sorting by their own names;
- the pair and alignment-group ids.

Every value coming from a request is a bound parameter; column names and sort orders come from fixed
whitelists.

The index is rebuilt when the set of outputs, their current generations or one of their manifests changes
(checked at most every ``refresh_s`` seconds), so a rerun of ``idd run`` or ``idd filter`` shows up without
restarting the server.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from ..errors import UserError
from ..generations import GENERATIONS, POINTER, current
from ..schema import SCORE_COLUMNS
from ..writer import MANIFEST, SPLITS

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 200
MAX_SCORE_FILTERS = 10
MAX_TEXT = 200
LOC_CACHE = 20_000
LOC_NAMES = ("tar", "src_offset", "src_size", "tgt_offset", "tgt_size", "mask_offset", "mask_size")
LOC_COLUMNS = tuple(f"s.{c}" for c in LOC_NAMES)
SORT_COLUMNS = {"key": "s.key", "task": "s.task", "dataset": "s.dataset", "reason": "s.reason",
                "instruction": "s.instruction"}

# The page's score names are the names rules, thresholds, ``idd filter --set`` and drop classes use (the keys
# of meta["scores"]); where a sidecar has the typed float32 score columns (format 2, schema.SCORE_COLUMNS)
# their values come from those columns (first non-null), not from the meta JSON. Any other meta score is
# shown as it is. A typed column can also be filtered and sorted on by its own name (aesthetic_laion_tgt).
TYPED_SCORES: dict[str, tuple[str, ...]] = {
    **{f"aesthetic_{r}": (f"aesthetic_laion_{r}", f"aesthetic_classical_{r}") for r in ("src", "tgt", "diff")},
    **{n: (n,) for n in ("giqa_src", "giqa_tgt", "giqa_diff", "edit_change", "background_change", "replace_gain")},
    **{f"clip_sim_{n}": (f"ip2p_clip_sim_{n}",) for n in ("0", "1", "dir", "image")},
}
META_SCORE_ALIASES = {"clip_sim_direction": "clip_sim_dir"}  # InstructPix2Pix's older name, the same column
assert {c for cs in TYPED_SCORES.values() for c in cs} == set(SCORE_COLUMNS)


def rule_score(name: str) -> str:
    """The rule-facing score name of a page or typed column name: ``aesthetic_laion_tgt`` -> ``aesthetic_tgt``."""
    for rule, cols in TYPED_SCORES.items():
        if name in cols:
            return rule
    return META_SCORE_ALIASES.get(name, name)


# The meta JSON is parsed once per row (json_extract with a list of paths; try() turns invalid JSON into NULL).
_META_PATHS = ("$.scores", "$.filter", "$.pair_id", "$.group_id", "$.align_group", "$.guidance_scale",
               "$.record_id", "$.file", "$.reference")

# Format 1 sidecars (no drop_class / drop_detail): the classes are the reason text without its trailing
# "(details)", part by part; a "threshold=" among the details is the rule's threshold.
_LEGACY_PARTS = r"list_filter(string_split(coalesce(drop_reason, ''), ';'), lambda x: trim(x) <> '')"
_LEGACY_REASONS = rf"list_transform({_LEGACY_PARTS}, lambda x: regexp_replace(trim(x), '\s*\([^()]*\)\s*$', ''))"
_LEGACY_THRESHOLDS = (rf"list_transform({_LEGACY_PARTS}, lambda x: "
                      rf"TRY_CAST(nullif(regexp_extract(x, 'threshold=([-+0-9.eE]+)', 1), '') AS DOUBLE))")


def _j(path: str) -> str:
    return f"j[{_META_PATHS.index(path) + 1}]"


def _js(path: str) -> str:
    return f"json_extract_string({_j(path)}, '$')"


def _typed(col: str) -> str:
    # float32 -> the shortest decimal that round-trips (0.2, not 0.20000000298023224), as a DOUBLE
    return f"TRY_CAST(CAST({col} AS VARCHAR) AS DOUBLE)"


def load_sql(columns: set[str]) -> str:
    """The SELECT that loads one split's sidecars (``columns``: the union of their columns)."""
    has = columns.__contains__
    detail = "drop_detail" if has("drop_detail") else "NULL::VARCHAR[]"
    dclass = "drop_class" if has("drop_class") else "NULL::VARCHAR"
    casts = "".join(f", {_typed(c)} AS t_{c}" for c in SCORE_COLUMNS if has(c))  # once per row and column
    typed_cols = [f"{'t_' + c if has(c) else 'NULL::DOUBLE'} AS {c}" for c in SCORE_COLUMNS]
    entries = []
    for name, cols in TYPED_SCORES.items():
        present = [f"t_{c}" for c in cols if has(c)]
        if present:
            entries.append(f"{{'key': '{name}', 'value': coalesce({', '.join(present)}, NULL::DOUBLE)}}")
    meta_scores = f"""json_transform({_j('$.scores')}, '"MAP(VARCHAR, DOUBLE)"')"""
    if entries:
        typed = f"list_filter([{', '.join(entries)}], lambda x: x.value IS NOT NULL)"
        aliases = " AND ".join(
            f"NOT (e.key = '{old}' AND list_contains(list_transform(te, lambda t: t.key), '{new}'))"
            for old, new in META_SCORE_ALIASES.items())
        scores = (f"map_from_entries(list_concat(te, list_filter(coalesce(map_entries(ms), []), lambda e: "
                  f"NOT list_contains(list_transform(te, lambda t: t.key), e.key) AND {aliases})))")
    else:
        typed, scores = "[]::STRUCT(key VARCHAR, value DOUBLE)[]", "ms"
    return f"""
WITH r AS (SELECT *, try(json_extract(meta, [{", ".join(repr(p) for p in _META_PATHS)}])) AS j{casts}
           FROM read_parquet(?, filename = true, union_by_name = true)),
     d AS (SELECT *, {dclass} AS dclass_, {detail} AS detail_, {meta_scores} AS ms, {typed} AS te FROM r),
     c AS (SELECT *,
             CASE WHEN len(coalesce(detail_, [])) > 0
                  THEN list_transform(detail_, lambda x: coalesce(try(json_extract_string(x, '$.class')), dclass_, ''))
                  WHEN coalesce(dclass_, '') <> '' THEN [dclass_]
                  ELSE {_LEGACY_REASONS} END AS reasons_,
             CASE WHEN len(coalesce(detail_, [])) > 0
                  THEN list_transform(detail_, lambda x: TRY_CAST(try(json_extract_string(x, '$.threshold')) AS DOUBLE))
                  WHEN coalesce(dclass_, '') <> '' THEN [NULL::DOUBLE]
                  ELSE {_LEGACY_THRESHOLDS} END AS thresholds_
           FROM d)
SELECT ?::VARCHAR AS output, ?::VARCHAR AS split, key, task, dataset, instruction, keep, drop_reason,
       coalesce(nullif(dclass_, ''), reasons_[1]) AS drop_class, reasons_ AS reasons, thresholds_ AS reason_thresholds,
       array_to_string(reasons_, ';') AS reason,
       ?::VARCHAR || '/' || tar AS tar, filename AS pq_file,
       src_offset, src_size, tgt_offset, tgt_size, mask_offset, mask_size,
       {scores} AS scores, {", ".join(typed_cols)},
       {_j('$.filter')}::VARCHAR AS filter_json,
       {_js('$.pair_id')} AS pair_id,
       coalesce({_js('$.group_id')}, {_js('$.align_group')},
                CASE WHEN {_js('$.guidance_scale')} IS NOT NULL
                     THEN 'auto:' || coalesce(dataset, '') || ':'
                          || coalesce({_js('$.record_id')}, {_js('$.file')}, '') || ':'
                          || md5(coalesce(instruction, '')) END) AS group_id,
       TRY_CAST({_js('$.guidance_scale')} AS DOUBLE) AS guidance_scale,
       coalesce(json_type({_j('$.reference')}), 'NULL') <> 'NULL' AS has_reference
FROM c
"""


_DDL = f"""output VARCHAR, split VARCHAR, key VARCHAR, task VARCHAR, dataset VARCHAR, instruction VARCHAR,
keep BOOLEAN, drop_reason VARCHAR, drop_class VARCHAR, reasons VARCHAR[], reason_thresholds DOUBLE[], reason VARCHAR,
tar VARCHAR, pq_file VARCHAR, src_offset BIGINT, src_size BIGINT,
tgt_offset BIGINT, tgt_size BIGINT, mask_offset BIGINT, mask_size BIGINT, scores MAP(VARCHAR, DOUBLE),
{", ".join(f"{c} DOUBLE" for c in SCORE_COLUMNS)},
filter_json VARCHAR, pair_id VARCHAR, group_id VARCHAR, guidance_scale DOUBLE, has_reference BOOLEAN"""


@dataclass
class Output:
    rel: str  # path relative to the root, posix, e.g. "keypoints_coco/v1"
    path: Path
    manifest: dict = field(default_factory=dict)  # the current generation's
    errors: list[str] = field(default_factory=list)
    generation: int = 0
    gen_rel: str = ""  # the current generation's folder relative to path ("" for generation 0)

    @property
    def data_dir(self) -> Path:
        return self.path / self.gen_rel if self.gen_rel else self.path

    @property
    def roots(self) -> dict[str, str]:
        """``manifest["roots"]``: the ``{source.x}`` tokens of paths in rows -> the paths they stand for."""
        roots = self.manifest.get("roots")
        return {str(k): str(v) for k, v in roots.items() if isinstance(v, str)} if isinstance(roots, dict) else {}

    def summary(self) -> dict:
        splits = self.manifest.get("splits") or {}
        return {
            "output": self.rel,
            "name": self.manifest.get("name") or self.rel,
            "version": self.manifest.get("version"),
            "mixture_weight": self.manifest.get("mixture_weight"),
            "errors": list(self.errors),
            "generation": self.generation,
            "splits": {s: {k: (splits.get(s) or {}).get(k, {} if k != "rows" else 0)
                           for k in ("rows", "tasks", "datasets", "drop_reasons")} for s in SPLITS},
        }


@dataclass
class Filters:
    output: str | None = None
    split: str | None = None
    task: str | None = None
    dataset: str | None = None
    reason: str | None = None
    text: str | None = None
    scores: list[tuple[str, float | None, float | None]] = field(default_factory=list)
    label_keys: list[str] | None = None


def finished_parquets(split_dir: Path) -> list[str]:
    """Sidecars of finished shards (their stats json exists), sorted."""
    if not split_dir.is_dir():
        return []
    out = []
    for p in sorted(split_dir.glob("*.parquet")):
        if (split_dir / (p.name[: -len(".parquet")] + ".stats.json")).is_file():
            out.append(str(p))
    return out


def scan_outputs(root: Path) -> dict[str, Output]:
    """Every folder under ``root`` with a manifest.json or a generation pointer (not descending into an
    output), with the manifest of its current generation."""
    found: dict[str, Output] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != GENERATIONS)
        if MANIFEST in filenames or POINTER in filenames:
            p = Path(dirpath)
            rel = p.relative_to(root).as_posix()
            try:
                gen = current(p)
            except UserError as e:
                log.warning("%s: %s; output skipped", p, e)
                gen = None
            if gen is not None:
                found[rel] = Output(rel, p, gen.manifest, generation=gen.number, gen_rel=gen.rel)
            dirnames[:] = []
    return found


class Catalog:
    """The outputs under ``root`` and the DuckDB index over their sidecars (thread safe)."""

    def __init__(self, root: str | os.PathLike, refresh_s: float = 2.0):
        self.root = Path(root).resolve()
        self.refresh_s = refresh_s
        self.outputs: dict[str, Output] = {}
        self._signature: tuple = ()
        self._checked = 0.0
        self._lock = threading.RLock()
        self._loc: OrderedDict[tuple, dict] = OrderedDict()  # (output, split, key) -> member offsets
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET threads TO 2")
        self.refresh(force=True)

    # -- loading ---------------------------------------------------------------------------------------
    def _scan_signature(self, outputs: dict[str, Output]) -> tuple:
        sig = []
        for rel, out in sorted(outputs.items()):
            try:
                st = (out.data_dir / MANIFEST).stat()
                sig.append((rel, out.generation, st.st_mtime_ns, st.st_size))
            except OSError:
                sig.append((rel, out.generation, 0, 0))
        return tuple(sig)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.refresh_s:
            return
        with self._lock:
            self._checked = now
            outputs = scan_outputs(self.root)
            sig = self._scan_signature(outputs)
            if not force and sig == self._signature:
                return
            t0 = time.perf_counter()
            con = self.con
            con.execute("DROP TABLE IF EXISTS samples_new")
            con.execute(f"CREATE TABLE samples_new ({_DDL})")
            for rel, out in sorted(outputs.items()):
                for split in SPLITS:
                    files = finished_parquets(out.data_dir / split)
                    if not files:
                        continue
                    prefix = f"{out.gen_rel}/{split}" if out.gen_rel else split  # tar paths relative to out.path
                    try:
                        cols = {r[0] for r in con.execute(
                            "DESCRIBE SELECT * FROM read_parquet(?, union_by_name = true)", [files]).fetchall()}
                        con.execute(f"INSERT INTO samples_new {load_sql(cols)}", [files, rel, split, prefix])
                    except duckdb.Error as e:  # one unreadable sidecar must not take the page down
                        con.execute("DELETE FROM samples_new WHERE output = ? AND split = ?", [rel, split])
                        out.errors.append(f"{split}: sidecars unreadable ({str(e).splitlines()[0][:300]})")
                        log.warning("%s/%s: sidecars unreadable, split skipped: %s", out.path, split, e)
            con.execute("DROP TABLE IF EXISTS samples")
            con.execute("ALTER TABLE samples_new RENAME TO samples")
            con.execute("CREATE INDEX samples_key ON samples(key)")  # point look-ups (images, sample view)
            self.outputs = outputs
            self._signature = sig
            self._loc.clear()
            n = con.execute("SELECT count(*) FROM samples").fetchone()[0]
            log.info("audit index: %d outputs, %d samples (%.2fs)", len(outputs), n, time.perf_counter() - t0)

    def _q(self, sql: str, params: list | None = None) -> list[dict]:
        self.refresh()
        with self._lock:
            cur = self.con.execute(sql, params or [])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

    def output(self, rel: str) -> Output | None:
        self.refresh()
        return self.outputs.get(rel)

    # -- queries ---------------------------------------------------------------------------------------
    @staticmethod
    def _where(f: Filters) -> tuple[str, list]:
        clauses, params = ["true"], []
        for col, val in (("output", f.output), ("split", f.split), ("task", f.task), ("dataset", f.dataset)):
            if val:
                clauses.append(f"s.{col} = ?")
                params.append(val)
        if f.reason:  # a drop class (any of the row's reasons), or the whole ';'-joined text
            clauses.append("(list_contains(s.reasons, ?) OR s.reason = ?)")
            params += [f.reason, f.reason]
        if f.text:
            esc = f.text[:MAX_TEXT].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("(s.instruction ILIKE ? ESCAPE '\\' OR s.key ILIKE ? ESCAPE '\\')")
            params += [f"%{esc}%", f"%{esc}%"]
        for name, lo, hi in f.scores[:MAX_SCORE_FILTERS]:
            col, cparams = score_sql(name)
            if lo is not None:
                clauses.append(f"{col} >= ?")
                params += [*cparams, float(lo)]
            if hi is not None:
                clauses.append(f"{col} <= ?")
                params += [*cparams, float(hi)]
            if lo is None and hi is None:
                clauses.append(f"{col} IS NOT NULL")
                params += cparams
        if f.label_keys is not None:  # "output\0key" strings of the samples with the wanted label
            clauses.append("list_contains(?, s.output || chr(0) || s.key)")
            params.append(list(f.label_keys))
        return " AND ".join(clauses), params

    def search(self, f: Filters, *, sort: str = "key", order: str = "asc", page: int = 0,
               page_size: int = 48) -> dict:
        page_size = max(1, min(int(page_size), MAX_PAGE_SIZE))
        page = max(0, int(page))
        where, params = self._where(f)
        direction = "DESC" if str(order).lower() == "desc" else "ASC"
        if sort.startswith("score:"):
            col, order_params = score_sql(sort[6:])
            order_sql = f"{col} {direction} NULLS LAST, s.output, s.key"
        else:
            order_sql, order_params = f"{SORT_COLUMNS.get(sort, 's.key')} {direction} NULLS LAST, s.output, s.key", []
        total = self._q(f"SELECT count(*) AS n FROM samples s WHERE {where}", params)[0]["n"]
        rows = self._q(
            f"""SELECT s.output, s.split, s.key, s.task, s.dataset, s.instruction, s.keep, s.drop_reason, s.reason,
                       s.scores, s.pair_id, s.group_id, s.guidance_scale, s.has_reference,
                       coalesce(s.mask_size, 0) > 0 AS has_mask, coalesce(s.src_size, 0) > 0 AS has_src,
                       coalesce(s.tgt_size, 0) > 0 AS has_tgt, {", ".join(LOC_COLUMNS)}
                FROM samples s WHERE {where} ORDER BY {order_sql} LIMIT ? OFFSET ?""",
            params + order_params + [page_size, page * page_size])
        for r in rows:
            r["scores"] = dict(r["scores"] or {})
            self._remember({c: r.pop(c) for c in LOC_NAMES} | {"output": r["output"], "split": r["split"],
                                                                  "key": r["key"]})
        return {"total": total, "page": page, "page_size": page_size, "rows": rows}

    def counts(self, f: Filters) -> dict:
        where, params = self._where(f)
        out: dict[str, Any] = {}
        for name, col in (("splits", "s.split"), ("tasks", "s.task"), ("datasets", "s.dataset")):
            rows = self._q(f"SELECT {col} AS v, count(*) AS n FROM samples s WHERE {where} GROUP BY 1 ORDER BY 2 DESC, 1",
                           params)
            out[name] = {str(r["v"]): r["n"] for r in rows}
        # every drop class of every row (a row failing two rules counts under both) ...
        rows = self._q(
            f"""SELECT part AS v, count(*) AS n FROM
                  (SELECT unnest(s.reasons) AS part FROM samples s WHERE {where})
                WHERE part IS NOT NULL AND part <> '' GROUP BY 1 ORDER BY 2 DESC, 1""", params)
        out["reasons"] = {r["v"]: r["n"] for r in rows}
        # ... and the first class only (drop_class: what the manifest's drop_reasons count)
        rows = self._q(
            f"""SELECT s.drop_class AS v, count(*) AS n FROM samples s WHERE {where} AND s.drop_class <> ''
                GROUP BY 1 ORDER BY 2 DESC, 1""", params)
        out["drop_classes"] = {r["v"]: r["n"] for r in rows}
        out["total"] = sum(out["splits"].values())
        out["score_names"] = [r["name"] for r in self._q(
            f"SELECT DISTINCT unnest(map_keys(s.scores)) AS name FROM samples s WHERE {where} ORDER BY 1", params)]
        return out

    def histograms(self, f: Filters, bins: int = 20) -> list[dict]:
        """Per dataset and score: ``bins`` equal-width bins over the observed range, and the thresholds
        found in ``meta["filter"]`` or in the drops (class ``aesthetic_tgt below minimum`` with its
        ``threshold`` detail, or the older ``aesthetic_tgt<5.0``)."""
        bins = max(2, min(int(bins), 100))
        where, params = self._where(f)
        stats = self._q(
            f"""WITH v AS (SELECT s.dataset, unnest(map_keys(s.scores)) AS name, unnest(map_values(s.scores)) AS value,
                                  s.keep FROM samples s WHERE {where})
                SELECT dataset, name, min(value) AS lo, max(value) AS hi, count(value) AS n
                FROM v WHERE value IS NOT NULL AND isfinite(value) GROUP BY 1, 2 ORDER BY 1, 2""", params)
        counts = self._q(
            f"""WITH v AS (SELECT s.dataset, unnest(map_keys(s.scores)) AS name, unnest(map_values(s.scores)) AS value,
                                  s.keep FROM samples s WHERE {where}),
                 r AS (SELECT dataset, name, min(value) AS lo, max(value) AS hi FROM v
                       WHERE value IS NOT NULL AND isfinite(value) GROUP BY 1, 2)
                SELECT v.dataset, v.name, v.keep,
                       least(CAST(floor((v.value - r.lo) / nullif(r.hi - r.lo, 0) * ?) AS BIGINT), ? - 1) AS b,
                       count(*) AS n
                FROM v JOIN r ON v.dataset IS NOT DISTINCT FROM r.dataset AND v.name = r.name
                WHERE v.value IS NOT NULL AND isfinite(v.value) GROUP BY 1, 2, 3, 4""", params + [bins, bins])
        filters = self._q(
            f"SELECT DISTINCT s.dataset, s.filter_json FROM samples s WHERE {where} AND s.filter_json IS NOT NULL "
            "LIMIT 200", params)
        reasons = self._q(
            f"""SELECT DISTINCT dataset, part, thr FROM
                  (SELECT s.dataset, unnest(s.reasons) AS part, unnest(s.reason_thresholds) AS thr
                   FROM samples s WHERE {where} AND len(s.reasons) > 0)
                WHERE part IS NOT NULL AND part <> '' LIMIT 2000""", params)
        out = []
        for st in stats:
            ds, name = st["dataset"], st["name"]
            kept, dropped = [0] * bins, [0] * bins
            for c in counts:
                if c["dataset"] == ds and c["name"] == name:
                    b = 0 if c["b"] is None else int(c["b"])
                    (kept if c["keep"] else dropped)[b] += c["n"]
            thr = {}
            for fr in filters:
                if fr["dataset"] == ds:
                    thr.update(thresholds_from_filter(fr["filter_json"], name))
            for rr in reasons:
                if rr["dataset"] == ds:
                    thr.update(thresholds_from_reason(rr["part"], name, rr["thr"]))
            by_value: dict[float, list[str]] = {}
            for label, value in sorted(thr.items()):
                by_value.setdefault(value, []).append(label)
            out.append({"dataset": ds, "score": name, "min": st["lo"], "max": st["hi"], "n": st["n"],
                        "bins": bins, "kept": kept, "dropped": dropped,
                        "thresholds": [{"label": ", ".join(ls), "value": v} for v, ls in sorted(by_value.items())]})
        return out

    def row(self, output: str, split: str, key: str) -> dict | None:
        rows = self._q("SELECT * FROM samples s WHERE s.key = ? AND s.output = ? AND s.split = ?", [key, output, split])
        if not rows:
            return None
        r = rows[0]
        r["scores"] = dict(r["scores"] or {})
        return r

    def _remember(self, loc: dict) -> None:
        with self._lock:
            self._loc[(loc["output"], loc["split"], loc["key"])] = loc
            while len(self._loc) > LOC_CACHE:
                self._loc.popitem(last=False)

    def cached_location(self, output: str, split: str, key: str) -> dict | None:
        """The remembered location only (no query, no refresh): safe on the event loop."""
        return self._loc.get((output, split, key))

    def location(self, output: str, split: str, key: str) -> dict | None:
        """Where a sample's members are (tar and offsets): remembered from the grid page that listed it
        (the thumbnails of a page need no query), else one indexed look-up."""
        self.refresh()
        with self._lock:
            loc = self._loc.get((output, split, key))
        if loc is not None:
            return loc
        rows = self._q(f"SELECT s.output, s.split, s.key, {', '.join(LOC_COLUMNS)} FROM samples s "
                       "WHERE s.key = ? AND s.output = ? AND s.split = ?", [key, output, split])
        if not rows:
            return None
        self._remember(rows[0])
        return rows[0]

    def find_key(self, output: str, key: str) -> dict | None:
        rows = self._q("SELECT * FROM samples s WHERE s.output = ? AND s.key = ? ORDER BY s.split DESC", [output, key])
        return rows[0] if rows else None

    def meta(self, row: dict) -> dict:
        """The full ``meta`` of a sample, read from its own parquet file."""
        return self.sample_doc(row)[0]

    def sample_doc(self, row: dict) -> tuple[dict, list[dict]]:
        """``(meta, drops)`` of a sample, read from its own parquet file: ``drops`` is its ``drop_detail``
        (one dict per reason, ``class`` first; format 1 sidecars have none: [])."""
        try:
            with self._lock:
                try:
                    got = self.con.execute("SELECT meta, drop_detail FROM read_parquet(?) WHERE key = ?",
                                           [row["pq_file"], row["key"]]).fetchone()
                except duckdb.BinderException:  # a format 1 sidecar: no drop_detail column
                    got = self.con.execute("SELECT meta, NULL FROM read_parquet(?) WHERE key = ?",
                                           [row["pq_file"], row["key"]]).fetchone()
        except duckdb.Error as e:  # the sidecar changed or broke since it was indexed
            return {"_error": f"meta unreadable: {str(e).splitlines()[0][:300]}"}, []
        if not got:
            return {}, []
        drops = []
        for d in got[1] or []:
            try:
                doc = json.loads(d)
            except (TypeError, ValueError):
                doc = {"class": str(d)}
            drops.append(doc if isinstance(doc, dict) else {"class": str(doc)})
        return self._parse_meta(got[0]), drops

    @staticmethod
    def _parse_meta(text: str | None) -> dict:
        if not text:
            return {}
        try:
            meta = json.loads(text)
        except ValueError:
            return {"_unparsed": text}
        return meta if isinstance(meta, dict) else {"_value": meta}

    def related(self, row: dict, column: str) -> list[dict]:
        """Other samples of the same output sharing ``pair_id`` or ``group_id``."""
        col = {"pair_id": "s.pair_id", "group_id": "s.group_id"}[column]
        if row.get(column) is None:
            return []
        rows = self._q(
            f"""SELECT s.output, s.split, s.key, s.task, s.dataset, s.instruction, s.keep, s.reason, s.scores,
                       s.guidance_scale, coalesce(s.tgt_size, 0) > 0 AS has_tgt FROM samples s
                WHERE s.output = ? AND {col} = ? ORDER BY s.guidance_scale NULLS LAST, s.key LIMIT 64""",
            [row["output"], row[column]])
        for r in rows:
            r["scores"] = dict(r["scores"] or {})
        return rows

    def groups(self, output: str | None, page: int = 0, page_size: int = 24) -> dict:
        page_size = max(1, min(int(page_size), MAX_PAGE_SIZE))
        params: list = []
        cond = "s.group_id IS NOT NULL"
        if output:
            cond += " AND s.output = ?"
            params.append(output)
        total = self._q(f"""SELECT count(*) AS n FROM (SELECT s.output, s.group_id FROM samples s WHERE {cond}
                             GROUP BY 1, 2 HAVING count(*) >= 2)""", params)[0]["n"]
        rows = self._q(
            f"""SELECT s.output, s.group_id, count(*) AS candidates, any_value(s.instruction) AS instruction,
                       any_value(s.dataset) AS dataset, list(s.key ORDER BY s.guidance_scale NULLS LAST, s.key) AS keys
                FROM samples s WHERE {cond} GROUP BY 1, 2 HAVING count(*) >= 2
                ORDER BY 1, 2 LIMIT ? OFFSET ?""", params + [page_size, max(0, int(page)) * page_size])
        return {"total": total, "rows": rows}

    def group(self, output: str, group_id: str) -> list[dict]:
        return self.related({"output": output, "group_id": group_id}, "group_id")


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, float]]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, dict) and any(isinstance(v.get(n), str) for n in ("score", "name", "rule")):
                label = next(v[n] for n in ("score", "name", "rule") if isinstance(v.get(n), str))
                for k, x in v.items():
                    if isinstance(x, (int, float)) and not isinstance(x, bool):
                        out.append((f"{label}.{k}", float(x)))
            else:
                out += _flatten(v, f"{prefix}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out.append((prefix, float(obj)))
    return out


def thresholds_from_filter(filter_json: str | None, score: str) -> dict[str, float]:
    """Numbers in ``meta["filter"]`` whose path names ``score`` ({"aesthetic_tgt": 5}, {"aesthetic_tgt_min": 5},
    {"thresholds": {"aesthetic_tgt": {"min": 5}}}, [{"score": "aesthetic_tgt", "value": 5}] ...). Read defensively:
    whatever the filter writes, an unknown shape gives no threshold rather than an error."""
    if not filter_json:
        return {}
    score = rule_score(score)
    try:
        doc = json.loads(filter_json)
    except ValueError:
        return {}
    if isinstance(doc, dict) and isinstance(doc.get("thresholds"), dict):
        doc = {"thresholds": doc["thresholds"]}  # the quality filter's layout: only the numbers it used
    out = {}
    for path, value in _flatten(doc):
        parts = path.replace("[", ".").split(".")
        if any(p == score or p.startswith((score + "_", score + "<", score + ">")) for p in parts):
            out[path] = value
    return out


def thresholds_from_reason(reason: str, score: str, threshold: float | None = None) -> dict[str, float]:
    """The threshold a drop names for ``score`` (a page name or a typed column name), labelled
    ``rule <score><op><value>``:

    - a rule class, ``aesthetic_tgt below minimum`` / ``background_change above maximum`` (the quality
      filter, :func:`..models.quality.failures`), whose threshold is the drop's ``threshold`` detail
      (``threshold``, from ``drop_detail``; for older text, a ``threshold=`` in the reason's details);
    - the older ``aesthetic_tgt<5.0`` form (the number in the text).
    """
    reason = (reason or "").strip()
    base = rule_score(score)
    names = {base, score}
    for name in names:
        for word, op in ((" below minimum", "<"), (" above maximum", ">")):
            if reason == name + word or reason.startswith(name + word + " ("):
                value = threshold
                if value is None and "threshold=" in reason:
                    try:
                        value = float(reason.split("threshold=", 1)[1].split(",")[0].split(")")[0])
                    except ValueError:
                        value = None
                if value is None or not math.isfinite(value):
                    return {}
                return {f"rule {base}{op}{value:g}": float(value)}
    for name in names:
        for op in ("<=", ">=", "<", ">"):
            if reason.startswith(name + op):
                try:
                    value = float(reason[len(name) + len(op):].split()[0])
                    return {f"rule {base}{op}{value:g}": value}
                except (ValueError, IndexError):
                    return {}
    return {}


def score_sql(name: str) -> tuple[str, list]:
    """The SQL of one score and its bound parameters: a typed column by its own name
    (``aesthetic_laion_tgt``, a whitelisted identifier), else the page's score map."""
    if name in SCORE_COLUMNS:
        return f"s.{name}", []
    return "s.scores[?]", [name]
