"""Issue 14 item 7 (serialisation): meta is written as strict JSON, and the auditor survives legacy NaN.

``json.dumps`` writes NaN/Infinity as the bare tokens ``NaN``/``Infinity``, which are not JSON: the sidecar
``meta`` and the ``.json`` member were invalid and the auditor's /api/sample answered 500.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from instructdiffusion_data.schema import dumps_meta, make_key, new_row
from tests.helpers_audit import keypoint_rows, write_output


def strict_loads(text):
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("meta, path", [
    ({"scores": {"aesthetic": float("nan")}}, "meta.scores.aesthetic"),
    ({"a": [1, 2, {"b": float("inf")}]}, "meta.a[2].b"),
    ({"x": -math.inf}, "meta.x"),
    ({"np": np.float32("nan")}, "meta.np"),
    ({"arr": np.array([0.5, np.inf])}, "meta.arr[1]"),
    ({"t": (1.0, float("nan"))}, "meta.t[1]"),
])
def test_dumps_meta_refuses_non_finite_numbers_naming_the_key_path(meta, path):
    with pytest.raises(ValueError) as err:
        dumps_meta(meta)
    assert str(err.value).startswith(f"{path} is not a finite number")


def test_dumps_meta_output_is_unchanged_for_finite_values():
    meta = {"b": 1.5, "a": [np.int64(3), np.float32(0.25), np.array([1, 2])], "s": "NaN", "n": None, "t": True}
    text = dumps_meta(meta)
    assert text == '{"a":[3,0.25,[1,2]],"b":1.5,"n":null,"s":"NaN","t":true}'
    assert strict_loads(text)["s"] == "NaN"


def test_writer_never_writes_invalid_json(tmp_path):
    """A row whose meta holds NaN either stops the write with the ValueError or is written as strict JSON;
    the old writer wrote ``NaN`` into the sidecar and the ``.json`` member."""
    import tarfile

    from instructdiffusion_data.writer import ShardWriter

    rows = keypoint_rows(2)
    rows[1]["meta"] = {**rows[1]["meta"], "score": float("nan")}
    w = ShardWriter(tmp_path / "o" / "v1")
    try:
        w.write_shard(0, rows)
    except ValueError as e:
        assert "meta.score" in str(e)
        return
    for p in (tmp_path / "o" / "v1").rglob("*.parquet"):
        for m in pq.read_table(p, columns=["meta"]).column("meta").to_pylist():
            strict_loads(m)
    for t in (tmp_path / "o" / "v1").rglob("*.tar"):
        with tarfile.open(t) as tf:
            for member in tf.getmembers():
                if member.name.endswith(".json"):
                    strict_loads(tf.extractfile(member).read())


def _legacy_nan(out):
    """Rewrite one sidecar row's meta the way the old writer did: bare NaN and Infinity tokens."""
    for p in sorted((out / "train").glob("*.parquet")):
        t = pq.read_table(p)
        metas = t.column("meta").to_pylist()
        meta = json.loads(metas[0])
        metas[0] = json.dumps({**meta, "scores": {"aesthetic_tgt": float("nan"), "giqa": float("inf")},
                               "bad": [float("-inf"), 1.0]})
        assert "NaN" in metas[0] and "Infinity" in metas[0]
        pq.write_table(t.set_column(t.schema.get_field_index("meta"), "meta", pa.array(metas, pa.string())), p)
        return t.column("key")[0].as_py()
    raise AssertionError("no sidecar")


def test_auditor_answers_valid_json_for_legacy_nan_meta(tmp_path):
    from instructdiffusion_data.audit.app import create_app

    root = tmp_path / "root"
    out = write_output(root / "kp" / "v1", keypoint_rows(3), name="kp")
    key = _legacy_nan(out)
    c = TestClient(create_app(root, cache_dir=tmp_path / "cache", refresh_s=0), raise_server_exceptions=False)
    res = c.get("/api/sample", params={"output": "kp/v1", "split": "train", "key": key})
    assert res.status_code == 200, res.text[:300]
    body = strict_loads(res.text)
    assert body["meta"]["scores"] == {"aesthetic_tgt": None, "giqa": None}
    assert body["meta"]["bad"] == [None, 1.0]
    assert body["meta"]["joints"]  # the rest of meta is intact
    for path in ("/api/samples", "/api/counts", "/api/histograms", "/api/outputs"):
        res = c.get(path, params={"output": "kp/v1"} if path != "/api/outputs" else {})
        assert res.status_code == 200, (path, res.text[:300])
        strict_loads(res.text)
