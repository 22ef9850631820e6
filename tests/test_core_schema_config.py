import subprocess
import sys
from pathlib import Path

import pytest

from instructdiffusion_data.config import PipelineConfig, build, load_pipeline_config
from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.schema import ARROW_SCHEMA, COLUMNS, make_key, new_row, rows_to_table, table_to_rows

REPO = Path(__file__).resolve().parent.parent
IDD = [sys.executable, "-m", "instructdiffusion_data.cli"]


def test_schema_has_design_columns():
    assert COLUMNS == ("key", "task", "dataset", "src", "tgt", "instruction", "mask", "meta", "keep", "drop_reason",
                       "drop_class", "drop_detail")
    assert set(COLUMNS) <= set(ARROW_SCHEMA.names)


def test_keys_are_deterministic_safe_and_distinct():
    a = make_key("coco", "100_7", "v0")
    assert a == make_key("coco", "100_7", "v0")
    assert a != make_key("coco", "100_7", "v1") != make_key("coco", "100_8", "v0")
    assert "." not in make_key("x", "a.b/c d", 0) and "/" not in make_key("x", "a.b/c d", 0)
    # two ids that sanitise to the same slug still get different keys
    assert make_key("x", "a.b", 0) != make_key("x", "a/b", 0)


def test_rows_round_trip_through_arrow():
    row = new_row(key="k", task="keypoint", dataset="coco", src=b"\xff\xd8x", meta={"a": [1, 2], "b": {"c": 1.5}})
    back = table_to_rows(rows_to_table([row]))[0]
    assert back["meta"] == {"a": [1, 2], "b": {"c": 1.5}} and back["src"] == b"\xff\xd8x" and back["keep"] is True


def test_config_rejects_unknown_key_and_wrong_type():
    with pytest.raises(ConfigError, match=r"writer\.records_per_shardz: unknown key"):
        build(PipelineConfig, {"name": "x", "source": {}, "writer": {"records_per_shardz": 3}})
    with pytest.raises(ConfigError, match=r"writer\.records_per_shard: expected int, got 'many'"):
        build(PipelineConfig, {"name": "x", "source": {}, "writer": {"records_per_shard": "many"}})
    with pytest.raises(ConfigError, match=r"name: required key is missing"):
        build(PipelineConfig, {"source": {}})


def test_set_overrides_address_stages_by_type(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\nsource: {type: coco_keypoints}\nstages:\n  - {type: render_keypoints, max_joints: 5}\n")
    c = load_pipeline_config(cfg, ["stages.render_keypoints.max_joints=3", "writer.records_per_shard=7", "seed=4"])
    assert c.stages[0]["max_joints"] == 3 and c.writer.records_per_shard == 7 and c.seed == 4


def _run_cli(args, cwd=REPO):
    return subprocess.run(IDD + args, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("name: t\nsource: {type: coco_keypoints, annotations: nope.json, images: .}\n", "source.annotations: file not found: nope.json"),
        ("name: t\nsource: {type: coco_keypoint}\n", "source.type: unknown 'coco_keypoint'"),
        ("name: t\nsource: {type: coco_keypoints, annotationz: x}\n", "annotationz: unknown key"),
        ("name: t\nsource: {type: coco_keypoints, annotations: a.json, images: .}\n"
         "stages: [{type: render_keypoints, max_joints: lots}]\n",
         "stages[0](render_keypoints).max_joints: expected int, got 'lots'"),
    ],
)
def test_config_errors_are_one_line_before_any_work(tmp_path, yaml_text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    (tmp_path / "a.json").write_text("{}")
    res = _run_cli(["run", str(cfg), "--out", str(tmp_path / "out"), "--no-ray"], cwd=tmp_path)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert expected in lines[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_a_nan_in_meta_drops_that_row_not_the_batch():
    from instructdiffusion_data.schema import new_row, rows_to_table, table_to_rows

    rows = table_to_rows(rows_to_table([new_row(key="a", meta={"scores": {"x": float("nan")}}),
                                        new_row(key="b", meta={"y": 1})]))
    a, b = rows
    assert a["keep"] is False and a["drop_class"] == "non-finite number in meta"
    assert a["meta"] == {"scores": {"x": None}} and '"path": "meta.scores.x"' in a["drop_detail"][0]
    assert b["keep"] is True and b["meta"] == {"y": 1}
