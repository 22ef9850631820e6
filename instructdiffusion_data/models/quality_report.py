"""The quality filter's report over an output: ``filter_report.json`` and one histogram PNG per score.

Memory is bounded whatever the output's size: the sidecars are streamed batch by batch with only the
columns the report needs (``keep``, the typed float32 score columns :data:`schema.SCORE_COLUMNS`, and
``meta`` for the filter's decisions), in two passes:

1. counts, sums, minimum and maximum per score, a uniform reservoir sample of at most
   :data:`RESERVOIR` values per score for the percentiles (exact while a score has no more values than
   that), and the filter's facts (rows scored, thresholds, drops per rule);
2. the kept/rejected histogram counts in fixed bins between each score's minimum and maximum.

Scores are reported under their ``meta["scores"]`` names (``aesthetic_tgt``, ``giqa_diff``, ...;
InstructPix2Pix's CLIP scores as ``clip_sim_0`` / ``clip_sim_1`` / ``clip_sim_dir`` / ``clip_sim_image``),
at the float32 precision of the sidecar's columns. The driver runs this after a run (the stage's
``finalize``) and ``idd filter`` after a re-filter.
"""

from __future__ import annotations

import inspect
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..schema import SCORE_COLUMNS, typed_scores

REPORT_FILE = "filter_report.json"
REPORT_DIR = "filter_report"
RESERVOIR = 65_536  # score values kept per score for the percentiles
BATCH = 4096  # sidecar rows per read
MAX_THRESHOLD_SETS = 10_000  # distinct threshold sets counted one by one (GIQA per source folder)
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)

# report name -> typed columns, first non-null wins (the two aesthetic scales never meet in one row)
_NAMES: dict[str, tuple[str, ...]] = {
    **{f"aesthetic_{r}": (f"aesthetic_laion_{r}", f"aesthetic_classical_{r}") for r in ("src", "tgt", "diff")},
    **{n: (n,) for n in ("giqa_src", "giqa_tgt", "giqa_diff", "edit_change", "background_change", "replace_gain")},
    **{n[len("ip2p_"):]: (n,) for n in SCORE_COLUMNS if n.startswith("ip2p_")},
}


# -- accumulating ----------------------------------------------------------------------------------

class _Score:
    """Streaming statistics of one score: count/sum/min/max, a bounded uniform sample, histograms."""

    def __init__(self, cap: int, rng: np.random.Generator):
        self.count = 0
        self.sum = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self.cap = cap
        self.sample = np.empty(0, np.float64)
        self.rng = rng
        self.kept: np.ndarray | None = None
        self.rejected: np.ndarray | None = None

    def add(self, v: np.ndarray) -> None:
        if not v.size:
            return
        self.sum += float(v.sum())
        self.lo = min(self.lo, float(v.min()))
        self.hi = max(self.hi, float(v.max()))
        seen = self.count
        self.count += int(v.size)
        room = self.cap - self.sample.size
        if room > 0:
            self.sample = np.concatenate([self.sample, v[:room]])
            v, seen = v[room:], seen + min(room, v.size)
        if v.size:  # reservoir sampling (algorithm R, vectorised over the batch)
            idx = np.arange(seen + 1, seen + v.size + 1)
            slot = (self.rng.random(v.size) * idx).astype(np.int64)
            hit = slot < self.cap
            # later values win a slot drawn twice, as they would one by one
            self.sample[slot[hit]] = v[hit]

    def edges(self, bins: int) -> np.ndarray:
        lo, hi = self.lo, self.hi
        if hi <= lo:
            hi = lo + 1.0
        return np.linspace(lo, hi, bins + 1)

    def count_bins(self, v: np.ndarray, keep: np.ndarray, edges: np.ndarray) -> None:
        if self.kept is None:
            self.kept = np.zeros(len(edges) - 1, np.int64)
            self.rejected = np.zeros(len(edges) - 1, np.int64)
        self.kept += np.histogram(v[keep], edges)[0]
        self.rejected += np.histogram(v[~keep], edges)[0]


class ReportBuilder:
    """Accumulates the report from batches (:meth:`add_facts`, :meth:`add_scores`, then
    :meth:`count_bins`), holding at most ``reservoir`` values per score."""

    def __init__(self, bins: int = 30, reservoir: int = RESERVOIR, seed: int = 0):
        self.bins = bins
        self.reservoir = reservoir
        self.rng = np.random.default_rng(seed)
        self.rows = 0
        self.scored = 0
        self.filtered_out = 0
        self.profiles: Counter = Counter()
        self.thresholds: Counter = Counter()
        self.per_rule: Counter = Counter()
        self.also_failed: Counter = Counter()
        self.scores: dict[str, _Score] = {}
        self._edges: dict[str, np.ndarray] = {}

    def add_facts(self, flt: Any) -> None:
        """One row scored by the filter (its ``meta["filter"]``)."""
        from .quality import rule_of_reason

        if not isinstance(flt, dict) or not flt:
            return
        self.scored += 1
        self.profiles[str(flt.get("profile", "?"))] += 1
        key = json.dumps(flt.get("thresholds", {}), sort_keys=True)
        if key in self.thresholds or len(self.thresholds) < MAX_THRESHOLD_SETS:
            self.thresholds[key] += 1
        failed = flt.get("failed") or []
        prior = flt.get("prior_drop")
        for f in failed:
            field = rule_of_reason(f) or f
            (self.also_failed if prior else self.per_rule)[field] += 1
        if failed and not prior:
            self.filtered_out += 1

    def add_scores(self, scores: dict[str, np.ndarray]) -> None:
        for name, v in scores.items():
            v = v[np.isfinite(v)]
            if v.size:
                self.scores.setdefault(name, _Score(self.reservoir, self.rng)).add(v)

    def edges(self, name: str) -> np.ndarray:
        if name not in self._edges:
            self._edges[name] = self.scores[name].edges(self.bins)
        return self._edges[name]

    def count_bins(self, scores: dict[str, np.ndarray], keep: np.ndarray) -> None:
        for name, v in scores.items():
            if name not in self.scores:
                continue
            ok = np.isfinite(v)
            self.scores[name].count_bins(v[ok], keep[ok], self.edges(name))

    def result(self) -> dict:
        used = json.loads(self.thresholds.most_common(1)[0][0]) if self.thresholds else {}
        report: dict[str, Any] = {
            "rows": self.rows, "rows_scored": self.scored, "rows_dropped_by_filter": self.filtered_out,
            "profiles": dict(self.profiles), "thresholds": used, "threshold_sets": len(self.thresholds),
            "drops_per_rule": dict(sorted(self.per_rule.items())),
            "failed_rules_of_rows_dropped_earlier": dict(sorted(self.also_failed.items())),
            "scores": {},
        }
        for name, st in sorted(self.scores.items()):
            edges = self.edges(name)
            zeros = [0] * self.bins
            report["scores"][name] = {
                "count": st.count, "mean": st.sum / st.count, "min": st.lo, "max": st.hi,
                "percentiles": {f"p{q}": float(np.percentile(st.sample, q)) for q in PERCENTILES},
                "percentiles_exact": st.count <= st.sample.size,
                "histogram": {"edges": [float(e) for e in edges],
                              "kept": st.kept.tolist() if st.kept is not None else zeros,
                              "rejected": st.rejected.tolist() if st.rejected is not None else zeros},
            }
        return report


# -- reading ---------------------------------------------------------------------------------------

def _named(cols: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Report-named score arrays (float64, NaN = absent) from typed score columns."""
    out = {}
    for name, sources in _NAMES.items():
        v = np.full(n, np.nan)
        for c in sources:
            col = cols.get(c)
            if col is not None:
                v = np.where(np.isnan(v), col, v)
        if not np.isnan(v).all():
            out[name] = v
    return out


def _typed_from_meta(metas: list[dict]) -> dict[str, np.ndarray]:
    """Typed score columns computed from parsed metas, at the sidecar's float32 precision."""
    typed = [typed_scores(m) for m in metas]
    return {c: np.array([t[c] if t[c] is not None else np.nan for t in typed], np.float32).astype(np.float64)
            for c in SCORE_COLUMNS}


def _sidecars(root: Path | str) -> list[Any]:
    """The sidecar parquet files of exactly the folder ``root`` (Paths, or Locations on an object store)."""
    from .quality import shard_sidecars

    kw = {"resolve": False} if "resolve" in inspect.signature(shard_sidecars).parameters else {}
    return [p for splits in shard_sidecars(root, **kw).values() for _, p in sorted(splits.items())]


def _parquet(path: Any):
    import pyarrow.parquet as pq

    from ..errors import UserError

    try:
        if isinstance(path, (str, Path)):
            return pq.ParquetFile(str(path))
        return pq.ParquetFile(path.fs.open_input_file(path.path))
    except FileNotFoundError:
        raise UserError(f"{path}: sidecar missing") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: damaged sidecar ({str(e).splitlines()[0][:200]})") from None


def _sidecar_batches(paths: list[Any], with_meta: bool) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], list]]:
    """``(keep, report-named scores, metas-with-a-filter or [])`` per batch of every sidecar."""
    import pyarrow.compute as pc

    for path in paths:
        pf = _parquet(path)
        names = set(pf.schema_arrow.names)
        typed = [c for c in SCORE_COLUMNS if c in names]
        legacy = len(typed) < len(SCORE_COLUMNS)  # a sidecar written before the typed columns
        cols = ["keep", *typed] + (["meta"] if (with_meta or legacy) and "meta" in names else [])
        for batch in pf.iter_batches(batch_size=BATCH, columns=cols):
            n = batch.num_rows
            keep = np.asarray(batch.column("keep").fill_null(False).to_numpy(zero_copy_only=False), bool)
            metas: list[dict] = []
            if "meta" in cols:
                meta_col = batch.column("meta")
                if legacy:
                    parsed = [json.loads(m) if m else {} for m in meta_col.to_pylist()]
                    scores = _named(_typed_from_meta(parsed), n)
                    metas = [m for m in parsed if m.get("filter")] if with_meta else []
                else:
                    # parse only the metas that hold a filter record
                    hit = pc.fill_null(pc.match_substring(meta_col, '"filter":'), False).to_numpy(zero_copy_only=False)
                    metas = [json.loads(m) for m, h in zip(meta_col.to_pylist(), hit) if h and m]
            if not legacy:
                arrays = {c: batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in typed}
                scores = _named(arrays, n)
            yield keep, scores, metas


def _row_batches(rows: Iterable[dict]) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], list]]:
    """The same batches from row dicts (``{"keep", "meta"}``, meta parsed)."""
    chunk: list[dict] = []

    def flush():
        metas = [r.get("meta") or {} for r in chunk]
        keep = np.array([bool(r.get("keep")) for r in chunk], bool)
        return keep, _named(_typed_from_meta(metas), len(chunk)), [m for m in metas if m.get("filter")]

    for r in rows:
        chunk.append(r)
        if len(chunk) >= BATCH:
            yield flush()
            chunk = []
    if chunk:
        yield flush()


def build_report(rows: Iterable[dict] | None = None, bins: int = 30, *, root: Path | str | None = None,
                 reservoir: int = RESERVOIR) -> dict:
    """Per-score statistics (kept/rejected histograms, percentiles), drop counts per rule, thresholds:
    of ``rows`` (row dicts with ``keep`` and a parsed ``meta``; read twice, so a list) or, streamed, of
    the sidecars of the output folder ``root``."""
    if rows is None and root is None:
        raise ValueError("build_report: give rows or root")
    rb = ReportBuilder(bins, reservoir)
    if rows is not None:
        rows = rows if isinstance(rows, (list, tuple)) else list(rows)
        first, second = _row_batches(rows), _row_batches(rows)
    else:
        paths = _sidecars(root)
        first, second = _sidecar_batches(paths, True), _sidecar_batches(paths, False)
    for keep, scores, metas in first:
        rb.rows += len(keep)
        for m in metas:
            rb.add_facts(m.get("filter"))
        rb.add_scores(scores)
    if rb.scores:
        for keep, scores, _ in second:
            rb.count_bins(scores, keep)
    return rb.result()


def write_report(root: Path, rows: Iterable[dict] | None = None, bins: int = 30) -> dict:
    """Write ``filter_report.json`` and ``filter_report/<score>.png`` into the output folder ``root``
    (from ``rows`` when given, else streamed from the folder's sidecars)."""
    from .quality import RULES

    root = Path(root)
    rep = build_report(rows, bins, root=root)
    d = root / REPORT_DIR
    d.mkdir(exist_ok=True)
    for old in d.glob("*.png"):
        old.unlink()
    thr_of_score = {rule.score: (rep["thresholds"].get(field), rule.op) for field, rule in RULES.items()}
    for name, st in rep["scores"].items():
        thr, op = thr_of_score.get(name, (None, None))
        png = d / f"{name}.png"
        h = st["histogram"]
        draw_histogram(png, name, np.array(h["kept"]), np.array(h["rejected"]), np.array(h["edges"]), thr, op)
        st["png"] = f"{REPORT_DIR}/{png.name}"
    (root / REPORT_FILE).write_text(json.dumps(rep, indent=1, sort_keys=True))
    return rep


def draw_histogram(path: Path, name: str, hk: np.ndarray, hr: np.ndarray, edges: np.ndarray,
                   threshold: float | None, op: str | None) -> None:
    """A stacked histogram of bin counts (kept green, rejected red) with the threshold as a blue line,
    drawn with OpenCV."""
    W, H, L, R, T, B = 720, 420, 60, 20, 40, 60
    img = np.full((H, W, 3), 255, np.uint8)
    top = max(1, int((hk + hr).max())) if len(hk) else 1
    pw, ph = W - L - R, H - T - B
    nb = len(edges) - 1
    for i in range(nb):
        x0 = L + int(i * pw / nb)
        x1 = L + int((i + 1) * pw / nb) - 1
        yk = int(hk[i] / top * ph)
        yr = int(hr[i] / top * ph)
        base = T + ph
        if yk:
            cv2.rectangle(img, (x0, base - yk), (x1, base), (60, 170, 60), -1)
        if yr:
            cv2.rectangle(img, (x0, base - yk - yr), (x1, base - yk), (60, 60, 210), -1)
    cv2.line(img, (L, T + ph), (L + pw, T + ph), (0, 0, 0), 1)
    cv2.line(img, (L, T), (L, T + ph), (0, 0, 0), 1)
    font = cv2.FONT_HERSHEY_SIMPLEX
    lo, hi = float(edges[0]), float(edges[-1])
    for j in range(5):
        v = lo + (hi - lo) * j / 4
        x = L + int(pw * j / 4)
        cv2.line(img, (x, T + ph), (x, T + ph + 5), (0, 0, 0), 1)
        cv2.putText(img, f"{v:.3g}", (x - 18, T + ph + 22), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, str(top), (5, T + 10), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    title = f"{name}: kept {int(hk.sum())} (green), rejected {int(hr.sum())} (red)"
    if threshold is not None and hi > lo:
        x = L + int(np.clip((threshold - lo) / (hi - lo), 0, 1) * pw)
        cv2.line(img, (x, T), (x, T + ph), (200, 80, 0), 2)
        title += f", cut {op} {threshold:.3g} (blue)"
    cv2.putText(img, title, (L, 25), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "score", (L + pw // 2 - 20, H - 15), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    # OpenCV writes BGR: the colours above are BGR triples
    cv2.imwrite(str(path), img)
