"""Whole-shard tasks: a shard whose stages are plain CPU tasks is read, processed and written in one task,
rows handed from step to step as Python objects. What each step sees must be what it would read back
from an Arrow table, and the written bytes must equal those of the operator chain (reader, one Ray
operator per stage, writer) that pipelines with GPU or actor-pool stages still use."""

import copy
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instructdiffusion_data.config import PipelineConfig, build
from instructdiffusion_data.runner import run
from instructdiffusion_data.schema import new_row, normalize_rows, rows_to_table, table_to_rows
from instructdiffusion_data.shard_tasks import fusable
from instructdiffusion_data.stage import Stage, StageConfig, child


@dataclass
class TagConfig(StageConfig):
    pass


class TagStage(Stage):
    """Puts values in meta that JSON changes (tuples, numpy scalars, int keys) and reads the previous
    stage's meta back: what it reads must already be JSON-shaped."""

    name = "tag"
    Config = TagConfig

    def process(self, rows):
        out = []
        for r in rows:
            m = r["meta"]
            assert isinstance(m.get("seen", []), list)  # a tuple written by an earlier stage reads back as a list
            assert all(isinstance(k, str) for k in m.get("by_id", {}))
            out.append(child(r, meta=dict(m, seen=(m.get("round", 0), np.int64(7)), round=np.float32(1.5),
                                          by_id={3: "x"}, flag=np.bool_(True))))
        return out


def digest_tree(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.suffix in (".tar", ".parquet")}


def pipeline(name, concurrency=None):
    return build(PipelineConfig, {
        "name": name,
        "source": {"type": "tests.helpers_core:CountSource", "n": 23, "bad_every": 5},
        "stages": [{"type": "tests.helpers_core:PaintStage", "variants": 2, "fail_on": 9, "batch_size": 3},
                   {"type": "tests.test_fused_shards:TagStage", "batch_size": 4, "concurrency": concurrency},
                   {"type": "tests.test_fused_shards:TagStage", "batch_size": 5}],
        "writer": {"records_per_shard": 6},
    })


def test_normalize_rows_is_the_arrow_round_trip():
    rows = [
        new_row(key="a", task="edit", dataset="d", meta={"t": (1, 2), "f": np.float32(0.1), "i": np.int64(3),
                                                         "b": np.bool_(False), "n": {1: [np.float64(2.5)]}, "s": "é"}),
        dict(new_row(key="b", meta={"bad": [1.0, math.nan]}), keep=None),  # non-finite: the row is dropped
        {"key": "c", "meta": '{"already": "text"}', "extra": 1, "src": bytearray(b"\xff\xd8x"), "_shard": np.int64(4)},
        {"key": "d", "meta": None, "keep": np.bool_(False), "drop_detail": ("x",), "drop_class": "c"},
        {"key": "e", "meta": {}, "tgt": bytearray(b"png"), "_rec": np.int32(2), "_nrec": 5},
    ]
    want = table_to_rows(rows_to_table(copy.deepcopy(rows)))
    got = normalize_rows(copy.deepcopy(rows))
    assert got == want
    assert [list(r) for r in got] == [list(r) for r in want]  # same columns, same order
    assert [type(r["keep"]) for r in got] == [bool] * len(rows)
    assert got[1]["keep"] is False and got[1]["drop_class"] == "non-finite number in meta"


def test_fusable_only_for_plain_cpu_stages():
    from instructdiffusion_data.runner import build as build_pipeline

    assert fusable(build_pipeline(pipeline("p"))[1])
    assert not fusable(build_pipeline(pipeline("q", concurrency=1))[1])


def test_whole_shard_tasks_write_the_bytes_of_the_operator_chain(tmp_path, ray_local):
    # without Ray: whole-shard tasks; on Ray with an actor-pool stage: reader, one operator per stage, writer
    local = run(pipeline("p"), out=str(tmp_path / "local"), use_ray=False)
    chain = run(pipeline("p", concurrency=1), out=str(tmp_path / "chain"), use_ray=True)
    fused_ray = run(pipeline("p"), out=str(tmp_path / "fused"), use_ray=True)
    a = digest_tree(tmp_path / "local" / "p" / "v1")
    assert a and a == digest_tree(tmp_path / "chain" / "p" / "v1") == digest_tree(tmp_path / "fused" / "p" / "v1")
    for s in (local, chain, fused_ray):
        assert not s.failed
        assert s.manifest["records"] == 23
        # 5 records dropped by the source and the one the stage fails on are one rejected row each; the
        # other 17 made 2 rows each
        assert s.manifest["splits"]["train"]["rows"] == 17 * 2
        assert s.manifest["splits"]["rejected"]["rows"] == 6


@dataclass
class BoomConfig(StageConfig):
    pass


class BoomStage(Stage):
    """Returns a row whose meta cannot be written as JSON: the whole shard fails, reported, and the run
    goes on with the other shards."""

    name = "boom"
    Config = BoomConfig

    def process(self, rows):
        return [child(r, meta=dict(r["meta"], obj=object())) if r["meta"]["record_id"] == 2 else r for r in rows]


def test_a_stage_that_breaks_its_shard_fails_that_shard_only(tmp_path):
    cfg = build(PipelineConfig, {
        "name": "b", "source": {"type": "tests.helpers_core:CountSource", "n": 8},
        "stages": [{"type": "tests.test_fused_shards:BoomStage"}], "writer": {"records_per_shard": 4}})
    s = run(cfg, out=str(tmp_path), use_ray=False)
    assert list(s.failed) == [0] and "stages failed: TypeError" in s.failed[0]
    assert s.manifest["complete"] is False and "000000" in s.manifest["failed_shards"]
    root = tmp_path / "b" / "v1"
    assert (root / "train" / "000001.stats.json").exists()  # the other shard committed
    assert not (root / "train" / "000000.stats.json").exists()
