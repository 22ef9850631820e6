"""Generations on an object store (S3 API, moto on loopback; issue 14 item 2): ``idd filter`` writes the new
generation's objects, then one PUT of ``CURRENT.json`` switches; a kill before the PUT leaves the old
generation current and its leftovers are removed by the next filter; ``idd inspect --verify`` and ``idd mix``
read the current generation through the same module."""

from __future__ import annotations

import json
import signal

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from instructdiffusion_data import config as cfgmod
from instructdiffusion_data import generations, runner
from instructdiffusion_data.cli import main as idd
from instructdiffusion_data.generations import current
from instructdiffusion_data.storage import Location
from tests.test_cluster_storage import BUCKET, s3  # noqa: F401  (the moto fixture)
from tests.test_gen_faults import run_idd


def _cfg():
    return cfgmod.build(cfgmod.PipelineConfig, {
        "name": "qpairs", "version": "v1", "seed": 0,
        "source": {"type": "tests.helpers_quality:PairSource", "n": 8},
        "stages": [
            {"type": "tests.helpers_quality:RemoveStage", "blur_step": 0.6, "drop_record": 1, "batch_size": 4},
            {"type": "quality_filter", "aesthetic_tgt_min": 0.0, "aesthetic_diff_max": None,
             "background_change_max": None, "edit_change_min": 4.0, "batch_size": 4},
        ],
        "writer": {"records_per_shard": 3},
    })


def splits_of(uri: str) -> dict[str, str]:
    """``{key: split}`` of the current generation, every key once, read through the object store."""
    gen = current(uri)
    out: dict[str, str] = {}
    for split in ("train", "rejected"):
        for e in gen.manifest["splits"][split]["shards"]:
            loc = gen.file(e["parquet"])
            keys = pq.read_table(loc.path, filesystem=loc.fs, columns=["key"]).column("key").to_pylist()
            assert len(keys) == e["rows"]
            for k in keys:
                assert k not in out
                out[k] = split
            assert gen.file(e["tar"]).fs.get_file_info(gen.file(e["tar"]).path).size == e["tar_bytes"]
    return out


def upload(root, fs, prefix: str) -> None:
    """Copy a local output to the object store (the quality_filter stage's report writer is local-only, so the
    output is built locally: what is under test here is the filter and the readers on the store)."""
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with fs.open_output_stream(f"{prefix}/{p.relative_to(root).as_posix()}") as fh:
                fh.write(p.read_bytes())


def objects(fs, prefix: str) -> dict[str, int]:
    return {i.path[len(prefix) + 1:]: i.size for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
            if i.type == pafs.FileType.File}


def test_filter_on_an_object_store(s3, tmp_path, capsys):  # noqa: F811
    fs = s3["fs"]
    uri = f"s3://{BUCKET}/gen/qpairs/v1"
    upload(runner.run(_cfg(), out=str(tmp_path / "local"), use_ray=False).root, fs, f"{BUCKET}/gen/qpairs/v1")
    before = splits_of(uri)
    gen0 = {k: v for k, v in objects(fs, f"{BUCKET}/gen/qpairs/v1").items() if k.startswith(("train/", "rejected/"))}
    args = ["filter", uri, "--set", "aesthetic_tgt_min=7.0"]

    # killed after its shards but before the pointer PUT: generation 0 stays current
    r = run_idd(args, IDD_FAULT_AT="filter.manifest:1")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert current(uri).number == 0 and splits_of(uri) == before
    assert generations.garbage(uri).keys() == {1}

    assert idd(args) == 0
    ptr = json.loads(Location(uri + "/CURRENT.json").read_text())
    assert ptr["generation"] == 1 and ptr["committed"] == [0, 1]
    after = splits_of(uri)
    assert after.keys() == before.keys() and after != before
    assert not generations.garbage(uri)
    now = objects(fs, f"{BUCKET}/gen/qpairs/v1")
    assert {k: v for k, v in now.items() if k in gen0} == gen0  # generation 0 untouched
    assert "generations/0001/filter_report.json" in now and "generations/0001/.idd-generation.json" in now

    # killed right after the switch: the new generation is current and whole
    r = run_idd(["filter", uri, "--set", "aesthetic_tgt_min=0.0"], IDD_FAULT_AT="filter.pointer:1")
    assert r.returncode == -signal.SIGKILL
    assert current(uri).number == 2 and splits_of(uri) == before

    # idd mix over an object-store root names the current generation's objects by URI
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"name: t\nroot: s3://{BUCKET}/gen\ndatasets:\n  - {{name: qpairs, output: qpairs/v1}}\n")
    assert idd(["mix", str(mix), "--out", str(tmp_path / "m.json")]) == 0
    d = json.loads((tmp_path / "m.json").read_text())["datasets"][0]
    assert d["generation"] == 2 and all(x.startswith(f"s3://{BUCKET}/gen/qpairs/v1/generations/0002/train/")
                                        for x in d["shards"])

    capsys.readouterr()
    assert idd(["inspect", uri, "--verify"]) == 0
    out_obj = fs.open_output_stream(f"{BUCKET}/gen/qpairs/v1/generations/0002/train/000000.tar")
    out_obj.write(b"not a tar")
    out_obj.close()
    assert idd(["inspect", uri, "--verify"]) == 1
    assert "generations/0002/train/000000.tar: damaged" in capsys.readouterr().out
    assert idd(["mix", str(mix), "--out", str(tmp_path / "m.json")]) == 2
    assert "generations/0002/train/000000.tar: damaged shard" in capsys.readouterr().err
    assert idd(["filter", uri]) == 2  # nor does the filter read a damaged shard
    assert "generations/0002/train/000000.tar: damaged shard" in capsys.readouterr().err
