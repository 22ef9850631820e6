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

The filters, sorting and queries over ``samples`` are :mod:`.query`.

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

import duckdb

from ..errors import UserError
from ..generations import GENERATIONS, POINTER, current
from ..schema import SCORE_COLUMNS, drop_entries
from ..writer import MANIFEST, SPLITS
from .query import LOC_COLUMNS, META_SCORE_ALIASES, TYPED_SCORES, CatalogQueries

log = logging.getLogger(__name__)

LOC_CACHE = 20_000

# The meta JSON is parsed once per row (json_extract with a list of paths; try() turns invalid JSON into NULL).
_META_PATHS = ("$.scores", "$.filter", "$.pair_id", "$.group_id", "$.align_group", "$.guidance_scale",
               "$.record_id", "$.file", "$.reference", "$.image_guidance_scale")

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
       TRY_CAST({_js('$.image_guidance_scale')} AS DOUBLE) AS image_guidance_scale,
       coalesce(json_type({_j('$.reference')}), 'NULL') <> 'NULL' AS has_reference
FROM c
"""


_DDL = f"""output VARCHAR, split VARCHAR, key VARCHAR, task VARCHAR, dataset VARCHAR, instruction VARCHAR,
keep BOOLEAN, drop_reason VARCHAR, drop_class VARCHAR, reasons VARCHAR[], reason_thresholds DOUBLE[], reason VARCHAR,
tar VARCHAR, pq_file VARCHAR, src_offset BIGINT, src_size BIGINT,
tgt_offset BIGINT, tgt_size BIGINT, mask_offset BIGINT, mask_size BIGINT, scores MAP(VARCHAR, DOUBLE),
{", ".join(f"{c} DOUBLE" for c in SCORE_COLUMNS)},
filter_json VARCHAR, pair_id VARCHAR, group_id VARCHAR, guidance_scale DOUBLE,
image_guidance_scale DOUBLE, has_reference BOOLEAN"""


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


class Catalog(CatalogQueries):
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
                doc = drop_entries({"drop_detail": [d]})[0]
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
