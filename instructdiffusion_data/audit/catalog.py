"""The outputs under an audit root and a DuckDB index over their parquet sidecars.

An *output* is a folder holding ``manifest.json`` (written by :class:`~instructdiffusion_data.writer.ShardWriter`);
what it holds now is its *current generation* (:mod:`..generations`: the folder itself, or
``generations/NNNN`` once ``idd filter`` has re-cut it), whose finished shards are
``{train,rejected}/NNNNNN.parquet`` with a ``.stats.json`` beside them. The ``tar`` column is relative to
the output folder (``generations/0001/train/000000.tar``), so the page reads the current files. The catalog
loads every sidecar into one DuckDB table ``samples`` (one row per sample, without the ``meta`` JSON, which is
read back from the one parquet file of a sample when its page is opened) with the columns the page filters and
sorts on extracted once: the drop-reason class, the scores as a ``MAP(VARCHAR, DOUBLE)``, the pair and
alignment-group ids. Every value coming from a request is a bound parameter; column names and sort orders
come from fixed whitelists.

The index is rebuilt when the set of outputs, their current generations or one of their manifests changes
(checked at most every ``refresh_s`` seconds), so a rerun of ``idd run`` or ``idd filter`` shows up without
restarting the server.
"""

from __future__ import annotations

import json
import logging
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

# The reason without per-record details, as writer.reason_class does it in Python.
_REASON_SQL = (r"array_to_string(list_transform(string_split(drop_reason, ';'), "
               r"lambda x: regexp_replace(x, '\s*\([^()]*\)\s*$', '')), ';')")


# The meta JSON is parsed once per row (json_extract with a list of paths; try() turns invalid JSON into NULL).
_META_PATHS = ("$.scores", "$.filter", "$.pair_id", "$.group_id", "$.align_group", "$.guidance_scale",
               "$.record_id", "$.file", "$.reference", "$.ref", "$.replacement.reference")


def _j(path: str) -> str:
    return f"j[{_META_PATHS.index(path) + 1}]"


def _js(path: str) -> str:
    return f"json_extract_string({_j(path)}, '$')"


_LOAD_SQL = f"""
WITH r AS (SELECT *, try(json_extract(meta, [{", ".join(repr(p) for p in _META_PATHS)}])) AS j
           FROM read_parquet(?, filename = true))
SELECT ?::VARCHAR AS output, ?::VARCHAR AS split, key, task, dataset, instruction, keep, drop_reason,
       coalesce({_REASON_SQL}, '') AS reason,
       ?::VARCHAR || '/' || tar AS tar, filename AS pq_file,
       src_offset, src_size, tgt_offset, tgt_size, mask_offset, mask_size,
       json_transform({_j('$.scores')}, '"MAP(VARCHAR, DOUBLE)"') AS scores,
       {_j('$.filter')}::VARCHAR AS filter_json,
       {_js('$.pair_id')} AS pair_id,
       coalesce({_js('$.group_id')}, {_js('$.align_group')},
                CASE WHEN {_js('$.guidance_scale')} IS NOT NULL
                     THEN 'auto:' || coalesce(dataset, '') || ':'
                          || coalesce({_js('$.record_id')}, {_js('$.file')}, '') || ':'
                          || md5(coalesce(instruction, '')) END) AS group_id,
       TRY_CAST({_js('$.guidance_scale')} AS DOUBLE) AS guidance_scale,
       coalesce(json_type({_j('$.reference')}), json_type({_j('$.ref')}),
                json_type({_j('$.replacement.reference')}), 'NULL') <> 'NULL' AS has_reference
FROM r
"""


_DDL = """output VARCHAR, split VARCHAR, key VARCHAR, task VARCHAR, dataset VARCHAR, instruction VARCHAR,
keep BOOLEAN, drop_reason VARCHAR, reason VARCHAR, tar VARCHAR, pq_file VARCHAR, src_offset BIGINT, src_size BIGINT,
tgt_offset BIGINT, tgt_size BIGINT, mask_offset BIGINT, mask_size BIGINT, scores MAP(VARCHAR, DOUBLE),
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
                        con.execute(f"INSERT INTO samples_new {_LOAD_SQL}", [files, rel, split, prefix])
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
        if f.reason:
            clauses.append("(s.reason = ? OR list_contains(string_split(s.reason, ';'), ?))")
            params += [f.reason, f.reason]
        if f.text:
            esc = f.text[:MAX_TEXT].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("(s.instruction ILIKE ? ESCAPE '\\' OR s.key ILIKE ? ESCAPE '\\')")
            params += [f"%{esc}%", f"%{esc}%"]
        for name, lo, hi in f.scores[:MAX_SCORE_FILTERS]:
            if lo is not None:
                clauses.append("s.scores[?] >= ?")
                params += [name, float(lo)]
            if hi is not None:
                clauses.append("s.scores[?] <= ?")
                params += [name, float(hi)]
            if lo is None and hi is None:
                clauses.append("s.scores[?] IS NOT NULL")
                params.append(name)
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
            order_sql, order_params = f"s.scores[?] {direction} NULLS LAST, s.output, s.key", [sort[6:]]
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
        rows = self._q(
            f"""SELECT part AS v, count(*) AS n FROM
                  (SELECT unnest(string_split(s.reason, ';')) AS part FROM samples s WHERE {where} AND s.reason <> '')
                GROUP BY 1 ORDER BY 2 DESC, 1""", params)
        out["reasons"] = {r["v"]: r["n"] for r in rows}
        out["total"] = sum(out["splits"].values())
        out["score_names"] = [r["name"] for r in self._q(
            f"SELECT DISTINCT unnest(map_keys(s.scores)) AS name FROM samples s WHERE {where} ORDER BY 1", params)]
        return out

    def histograms(self, f: Filters, bins: int = 20) -> list[dict]:
        """Per dataset and score: ``bins`` equal-width bins over the observed range, and the thresholds
        found in ``meta["filter"]`` or in drop reasons like ``aesthetic_tgt<5.0``."""
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
            f"""SELECT DISTINCT s.dataset, unnest(string_split(s.reason, ';')) AS part FROM samples s
                WHERE {where} AND s.reason <> '' LIMIT 2000""", params)
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
                    thr.update(thresholds_from_reason(rr["part"], name))
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
        try:
            with self._lock:
                got = self.con.execute("SELECT meta FROM read_parquet(?) WHERE key = ?",
                                       [row["pq_file"], row["key"]]).fetchone()
        except duckdb.Error as e:  # the sidecar changed or broke since it was indexed
            return {"_error": f"meta unreadable: {str(e).splitlines()[0][:300]}"}
        if not got or not got[0]:
            return {}
        try:
            meta = json.loads(got[0])
        except ValueError:
            return {"_unparsed": got[0]}
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


def thresholds_from_reason(reason: str, score: str) -> dict[str, float]:
    """Drop reasons name the rule: ``aesthetic_tgt<5.0`` -> {"aesthetic_tgt<": 5.0}."""
    reason = reason.strip()
    for op in ("<=", ">=", "<", ">"):
        if reason.startswith(score + op):
            try:
                value = float(reason[len(score) + len(op):].split()[0])
                return {f"rule {score}{op}{value:g}": value}
            except (ValueError, IndexError):
                return {}
    return {}
