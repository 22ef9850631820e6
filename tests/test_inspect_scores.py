"""``idd inspect`` prints score percentiles of the typed columns and counts kept rows per task over
minimums; a DuckDB query over the sidecars gives the same counts (docs/shard-format.md)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instructdiffusion_data.cli import main
from instructdiffusion_data.config import PipelineConfig, build
from instructdiffusion_data.runner import run
from instructdiffusion_data.schema import SCORE_COLUMNS


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """An output whose sidecars carry typed scores (written in, as the quality filter's would be)."""
    tmp = tmp_path_factory.mktemp("scored")
    (tmp / "ann.txt").write_text("".join(f"r{i}\n" for i in range(40)))
    s = run(build(PipelineConfig, {"name": "lines", "source": {"type": "tests.helpers_core:LinesSource",
                                                                 "path": str(tmp / "ann.txt")},
                                   "stages": [{"type": "tests.helpers_core:PaintStage", "variants": 2}],
                                   "writer": {"records_per_shard": 16}}), out=str(tmp), use_ray=False)
    rng = np.random.default_rng(0)
    root = tmp / "lines" / "v1"
    for p in sorted((root / "train").glob("*.parquet")):
        t = pq.read_table(p)
        n = t.num_rows
        aes = rng.uniform(3, 7, n).astype(np.float32)
        giqa = rng.uniform(0, 1, n).astype(np.float32)
        giqa[::7] = np.nan  # not computed for some rows: null
        tasks = ["edit_remove" if i % 3 else "edit_add" for i in range(n)]
        t = t.set_column(t.schema.get_field_index("aesthetic_classical_tgt"), "aesthetic_classical_tgt", pa.array(aes))
        t = t.set_column(t.schema.get_field_index("giqa_tgt"), "giqa_tgt", pa.array(giqa, from_pandas=True))
        t = t.set_column(t.schema.get_field_index("task"), "task", pa.array(tasks))
        pq.write_table(t, p)
    return root


def test_percentiles_and_filtered_counts_match_duckdb(scored, capsys):
    import duckdb

    assert main(["inspect", str(scored), "--json", "--min", "aesthetic_classical_tgt=4.5", "--min", "giqa_tgt=p10"]) == 0
    summary = json.loads(capsys.readouterr().out)[0]
    files = sorted(str(p) for p in scored.glob("train/*.parquet"))
    p10, p50 = duckdb.sql(f"select quantile_cont(giqa_tgt, 0.10), quantile_cont(giqa_tgt, 0.5) "
                          f"from read_parquet({files!r}) where keep").fetchall()[0]
    assert summary["scores"]["giqa_tgt"]["p10"] == pytest.approx(p10, abs=1e-9)
    assert summary["scores"]["giqa_tgt"]["p50"] == pytest.approx(p50, abs=1e-9)
    assert summary["scores"]["giqa_tgt"]["n"] == duckdb.sql(
        f"select count(giqa_tgt) from read_parquet({files!r}) where keep").fetchall()[0][0]
    got = dict(duckdb.sql(f"""
        with t as (select * from read_parquet({files!r}) where keep)
        select task, count(*) from t
        where aesthetic_classical_tgt >= 4.5
          and giqa_tgt >= (select quantile_cont(giqa_tgt, 0.10) from t)
        group by task order by task""").fetchall())
    assert summary["filtered"]["tasks"] == got and sum(got.values()) > 0
    assert set(summary["scores"]) == {"aesthetic_classical_tgt", "giqa_tgt"}
    assert set(SCORE_COLUMNS) >= set(summary["scores"])


def test_text_output_and_bad_minimum(scored, capsys):
    assert main(["inspect", str(scored), "--min", "aesthetic_classical_tgt=p50"]) == 0
    text = capsys.readouterr().out
    assert "scores of kept rows" in text and "kept rows with aesthetic_classical_tgt >=" in text
    assert main(["inspect", str(scored), "--min", "nope=1"]) == 2
    assert "nope=1" in capsys.readouterr().err
