"""The filter report streams the sidecars: typed score columns, bounded memory, the numbers of the
in-memory computation (exact counts and histograms; percentiles exact up to the reservoir size)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instructdiffusion_data.models import quality as q
from instructdiffusion_data.models import quality_report as qr
from instructdiffusion_data.schema import SCORE_COLUMNS


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        tgt = float(rng.normal(5, 1.5))
        src = float(rng.normal(6, 1))
        scores = {"aesthetic_tgt": tgt, "aesthetic_src": src, "aesthetic_diff": abs(src - tgt)}
        if i % 3:
            scores["edit_change"] = float(rng.uniform(0, 40))
        thr = {f: None for f in q.RULES} | {"aesthetic_tgt_min": 4.5, "edit_change_min": 4.0}
        prior = "inpaint_remove: removal check failed" if i % 17 == 0 else None
        failed = q.evaluate(scores, thr)
        meta = {"scores": scores, "filter": {"profile": "weightfree", "thresholds": thr, "failed": failed,
                                             "prior_drop": prior}}
        rows.append({"key": f"k{i:06d}", "keep": not failed and prior is None, "meta": meta})
    return rows


def _write_sidecars(root, rows, per_shard=5000):
    """Sidecars of an output: keep, meta and the typed score columns (as the writer fills them)."""
    from instructdiffusion_data.schema import typed_scores

    (root / "train").mkdir(parents=True)
    (root / "rejected").mkdir()
    for s in range(0, len(rows), per_shard):
        chunk = rows[s:s + per_shard]
        for split, keep in (("train", True), ("rejected", False)):
            part = [r for r in chunk if r["keep"] == keep]
            cols = {"key": [r["key"] for r in part], "keep": [r["keep"] for r in part],
                    "meta": [json.dumps(r["meta"]) for r in part]}
            typed = [typed_scores(r["meta"]) for r in part]
            for c in SCORE_COLUMNS:
                cols[c] = pa.array([t[c] for t in typed], pa.float32())
            pq.write_table(pa.table(cols), root / split / f"{s // per_shard:06d}.parquet")


def test_streamed_report_matches_the_rows_and_never_loads_them(tmp_path, monkeypatch):
    rows = _rows(12_000)
    _write_sidecars(tmp_path, rows)
    in_memory = qr.build_report(rows)

    def refuse(*a, **k):
        raise AssertionError("the report must stream the sidecars, not load every row")

    monkeypatch.setattr(q, "read_sidecar", refuse)
    monkeypatch.setattr(q, "iter_output_rows", refuse)
    monkeypatch.setattr(qr, "BATCH", 1000)
    streamed = qr.write_report(tmp_path)
    assert streamed["rows"] == in_memory["rows"] == 12_000
    for k in ("rows_scored", "rows_dropped_by_filter", "drops_per_rule", "failed_rules_of_rows_dropped_earlier",
              "thresholds", "profiles"):
        assert streamed[k] == in_memory[k], k
    assert streamed["drops_per_rule"]["aesthetic_tgt_min"] > 0
    for name, st in in_memory["scores"].items():
        got = streamed["scores"][name]
        assert got["count"] == st["count"] and got["histogram"] == {**st["histogram"]}
        assert got["mean"] == pytest.approx(st["mean"], rel=1e-6)
        assert got["percentiles"] == pytest.approx(st["percentiles"], rel=1e-6)
    assert streamed["scores"]["edit_change"]["count"] == sum(1 for i in range(12_000) if i % 3)
    tgt = streamed["scores"]["aesthetic_tgt"]
    assert sum(tgt["histogram"]["kept"]) + sum(tgt["histogram"]["rejected"]) == 12_000
    assert (tmp_path / tgt["png"]).is_file() and json.loads((tmp_path / qr.REPORT_FILE).read_text())["rows"] == 12_000


def test_percentiles_from_a_bounded_sample():
    rows = _rows(5000, seed=3)
    exact = qr.build_report(rows)
    small = qr.build_report(rows, reservoir=500)  # 500 values per score held, 5000 seen
    tgt, est = exact["scores"]["aesthetic_tgt"], small["scores"]["aesthetic_tgt"]
    assert est["count"] == 5000 and est["histogram"] == tgt["histogram"] and not est["percentiles_exact"]
    assert tgt["percentiles_exact"]
    spread = tgt["percentiles"]["p95"] - tgt["percentiles"]["p5"]
    for p in ("p5", "p25", "p50", "p75", "p95"):
        assert abs(est["percentiles"][p] - tgt["percentiles"][p]) < 0.1 * spread, p


def test_rule_names_old_and_new():
    scores = {"aesthetic_tgt": 3.0, "background_change": 9.0}
    thr = {"aesthetic_tgt_min": 4.5, "background_change_max": 4.0}
    assert q.evaluate(scores, thr) == ["aesthetic_tgt below minimum", "background_change above maximum"]
    f = q.failures(scores, thr)[0]
    assert f.detail() == {"value": 3.0, "threshold": 4.5}
    # the class, a displayed reason with details, and the older "score<threshold" all name the rule
    for text in ("aesthetic_tgt below minimum", "aesthetic_tgt below minimum (value=3.0, threshold=4.5)",
                 "aesthetic_tgt<4.5"):
        assert q.rule_of_reason(text) == "aesthetic_tgt_min"
    assert q.rule_of_reason("inpaint_remove: error") is None
