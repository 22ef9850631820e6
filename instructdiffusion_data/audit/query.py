"""Queries over the audit index (:mod:`.catalog`): the page's filters, sorting, the SQL built from them, and
the thresholds drawn on the score histograms.

Every value coming from a request is a bound parameter; column names and sort orders come from fixed
whitelists. :class:`CatalogQueries` is the catalog's read side; :class:`~.catalog.Catalog` provides its
``_q`` (a query with parameters, after a refresh) and ``_remember`` (the member locations of a grid page).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ..schema import SCORE_COLUMNS

MAX_PAGE_SIZE = 200
MAX_SCORE_FILTERS = 10
MAX_TEXT = 200
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


def where_sql(f: Filters) -> tuple[str, list]:
    """The WHERE clause (over ``samples s``) of ``f`` and its bound parameters."""
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


def score_sql(name: str) -> tuple[str, list]:
    """The SQL of one score and its bound parameters: a typed column by its own name
    (``aesthetic_laion_tgt``, a whitelisted identifier), else the page's score map."""
    if name in SCORE_COLUMNS:
        return f"s.{name}", []
    return "s.scores[?]", [name]


class CatalogQueries:
    """The read side of :class:`~.catalog.Catalog`: search, counts, histograms and look-ups in ``samples``."""

    # provided by the catalog this is mixed into: run a query (after a refresh), keep a listed sample's
    # member location for the image routes
    _q: Callable[..., list[dict]]
    _remember: Callable[[dict], None]

    def search(self, f: Filters, *, sort: str = "key", order: str = "asc", page: int = 0,
               page_size: int = 48) -> dict:
        page_size = max(1, min(int(page_size), MAX_PAGE_SIZE))
        page = max(0, int(page))
        where, params = where_sql(f)
        direction = "DESC" if str(order).lower() == "desc" else "ASC"
        if sort.startswith("score:"):
            col, order_params = score_sql(sort[6:])
            order_sql = f"{col} {direction} NULLS LAST, s.output, s.key"
        else:
            order_sql, order_params = f"{SORT_COLUMNS.get(sort, 's.key')} {direction} NULLS LAST, s.output, s.key", []
        total = self._q(f"SELECT count(*) AS n FROM samples s WHERE {where}", params)[0]["n"]
        rows = self._q(
            f"""SELECT s.output, s.split, s.key, s.task, s.dataset, s.instruction, s.keep, s.drop_reason, s.reason,
                       s.scores, s.pair_id, s.group_id, s.guidance_scale, s.image_guidance_scale, s.has_reference,
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
        where, params = where_sql(f)
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
        where, params = where_sql(f)
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

    def find_key(self, output: str, key: str) -> dict | None:
        rows = self._q("SELECT * FROM samples s WHERE s.output = ? AND s.key = ? ORDER BY s.split DESC", [output, key])
        return rows[0] if rows else None

    def related(self, row: dict, column: str) -> list[dict]:
        """Other samples of the same output sharing ``pair_id`` or ``group_id``."""
        col = {"pair_id": "s.pair_id", "group_id": "s.group_id"}[column]
        if row.get(column) is None:
            return []
        rows = self._q(
            f"""SELECT s.output, s.split, s.key, s.task, s.dataset, s.instruction, s.keep, s.reason, s.scores,
                       s.guidance_scale, s.image_guidance_scale, coalesce(s.tgt_size, 0) > 0 AS has_tgt FROM samples s
                WHERE s.output = ? AND {col} = ?
                ORDER BY s.guidance_scale NULLS LAST, s.image_guidance_scale NULLS LAST, s.key LIMIT 64""",
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
                       any_value(s.dataset) AS dataset, list(s.key ORDER BY s.guidance_scale NULLS LAST, s.image_guidance_scale NULLS LAST, s.key) AS keys
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

