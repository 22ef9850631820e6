"""The trainer can stream only the samples whose typed score columns reach minimums (data.min_scores),
read from each shard's parquet sidecar."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instructdiffusion_data.config import PipelineConfig, build
from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.runner import run


def test_score_gate_keeps_exactly_the_rows_a_parquet_query_keeps(tmp_path):
    from trainer.data import DataConfig
    from trainer.datasets import ScoreGate, resolve_datasets

    (tmp_path / "ann.txt").write_text("".join(f"r{i}\n" for i in range(30)))
    run(build(PipelineConfig, {"name": "lines", "source": {"type": "tests.helpers_core:LinesSource",
                                                             "path": str(tmp_path / "ann.txt")},
                               "stages": [{"type": "tests.helpers_core:PaintStage", "variants": 2}],
                               "writer": {"records_per_shard": 10}}), out=str(tmp_path), use_ray=False)
    root = tmp_path / "lines" / "v1"
    rng = np.random.default_rng(1)
    want = set()
    for p in sorted((root / "train").glob("*.parquet")):
        t = pq.read_table(p)
        aes = rng.uniform(3, 7, t.num_rows).astype(np.float32)
        aes[::5] = np.nan
        t = t.set_column(t.schema.get_field_index("aesthetic_laion_tgt"), "aesthetic_laion_tgt",
                         pa.array(aes, from_pandas=True))
        pq.write_table(t, p)
        want |= {k for k, a in zip(t.column("key").to_pylist(), aes) if a >= 5.0}
    cfg = DataConfig(outputs=[str(root)], min_scores={"aesthetic_laion_tgt": 5.0})
    specs = resolve_datasets(cfg)
    gate = ScoreGate(cfg.min_scores)
    import webdataset as wds

    seen = {s["__key__"] for s in wds.tarfile_to_samples()([{"url": u} for u in specs[0].shards]) if gate.ok(s)}
    assert seen == want and 0 < len(want) < 60 and gate.held == 60 - len(want)
    with pytest.raises(ConfigError, match="data.min_scores.aesthetic"):
        resolve_datasets(DataConfig(outputs=[str(root)], min_scores={"aesthetic": 5.0}))
