"""``idd overlap``: images shared between training outputs and evaluation splits (RefCOCO val/testA/testB
are COCO train2014 images), the ids file it writes, and ``source.exclude_image_ids`` removing them."""

from __future__ import annotations

import json
import pickle

import pyarrow.parquet as pq

from instructdiffusion_data.cli import main
from instructdiffusion_data.commands.overlap import identities, overlap
from instructdiffusion_data.config import PipelineConfig, build
from instructdiffusion_data.readers._base import EXCLUDED
from instructdiffusion_data.runner import run


def run_keypoints(demo_root, out, **source):
    conf = build(PipelineConfig, {
        "name": "kp", "source": {"type": "coco_keypoints",
                                 "annotations": str(demo_root / "coco/annotations/person_keypoints_train2017.json"),
                                 "images": str(demo_root / "coco/train2017"), **source},
        "stages": [{"type": "render_keypoints", "variants_per_record": 1}], "writer": {"records_per_shard": 16}})
    return run(conf, out=str(out), use_ray=False)


def train_image_ids(root):
    ids = set()
    for f in (root / "train").glob("*.parquet"):
        for m in pq.read_table(f, columns=["meta"]).column("meta").to_pylist():
            ids.add(json.loads(m)["image_id"])
    return ids


def test_identities():
    assert identities("coco", {"image_id": 9, "image_set": "coco"}) == [("coco", "9")]
    assert identities("phrasecut", {"image_id": "2339", "image_set": "vg", "coco_id": 123}) == [("vg", "2339"), ("coco", "123")]
    # other datasets never match COCO ids by accident
    assert identities("crowdpose", {"image_id": 9}) == [("dataset:crowdpose", "9")]
    assert identities("mpii", {"file": "/x/images/015601864.jpg"}) == [("dataset:mpii", "015601864.jpg")]


def test_overlap_refcoco_val_in_coco_keypoints_then_excluded(demo_root, tmp_path, capsys):
    refs_file = demo_root / "refcoco/refcoco/refs(unc).p"
    refs = pickle.load(open(refs_file, "rb"))
    val_ids = {r["image_id"] for r in refs if r["split"] == "val"}
    s = run_keypoints(demo_root, tmp_path / "a")
    trained = train_image_ids(s.root)
    expected = val_ids & trained
    assert expected  # the demo's RefCOCO val images carry people with joints

    ids_file = tmp_path / "exclude.txt"
    rc = main(["overlap", str(s.root), "--eval", str(refs_file), "--write", str(ids_file), "--check"])
    out = capsys.readouterr().out
    assert rc == 1  # --check: something is shared
    assert f"refs(unc).p:val: {len(expected)} images shared" in out
    lines = [ln for ln in ids_file.read_text().splitlines() if not ln.startswith("#")]
    assert sorted(map(int, lines)) == sorted(expected)

    # the ids file is a valid source.exclude_image_ids: the rerun leaves those images out of train
    s2 = run_keypoints(demo_root, tmp_path / "b", exclude_image_ids=str(ids_file))
    assert not train_image_ids(s2.root) & val_ids
    excluded = s2.manifest["splits"]["rejected"]["drop_reasons"].get(EXCLUDED, 0)
    people = json.loads((demo_root / "coco/annotations/person_keypoints_train2017.json").read_text())["annotations"]
    assert excluded == sum(1 for a in people if a["image_id"] in expected)
    rep = overlap([str(s2.root)], [str(refs_file)])
    assert all(v["images"] == 0 for o in rep["outputs"].values() for v in o["shared"].values())
    assert main(["overlap", str(s2.root), "--eval", str(refs_file), "--check"]) == 0


def test_overlap_named_splits_outputs_and_id_lists(demo_root, tmp_path, capsys):
    s = run_keypoints(demo_root, tmp_path / "kp")
    trained = sorted(train_image_ids(s.root))
    a, b, c = trained[0], trained[1], trained[2]
    refs = [{"ref_id": 1, "image_id": a, "split": "testA", "ann_id": 1, "sentences": []},
            {"ref_id": 2, "image_id": b, "split": "testB", "ann_id": 2, "sentences": []},
            {"ref_id": 3, "image_id": c, "split": "train", "ann_id": 3, "sentences": []},
            {"ref_id": 4, "image_id": 999999, "split": "val", "ann_id": 4, "sentences": []}]
    (tmp_path / "refs(google).p").write_bytes(pickle.dumps(refs, protocol=2))
    rep = overlap([str(tmp_path / "kp")], [str(tmp_path / "refs(google).p")])
    (name, o), = rep["outputs"].items()
    assert name == "kp/v1"
    assert o["shared"]["refs(google).p:testA"]["images"] == 1
    assert o["shared"]["refs(google).p:testB"]["images"] == 1
    assert o["shared"]["refs(google).p:val"]["images"] == 0
    assert "refs(google).p:train" not in o["shared"]  # train is not an evaluation split by default
    rep = overlap([str(s.root)], [str(tmp_path / "refs(google).p")], splits={"train"})
    assert list(rep["eval"]) == ["refs(google).p:train"] and rep["shared_ids"] == [str(c)]

    # an id list and an output folder as evaluation sets
    (tmp_path / "val_ids.txt").write_text(f"# my val images\n{a}\n{b}\n")
    rep = overlap([str(s.root)], [str(tmp_path / "val_ids.txt"), str(tmp_path / "kp")])
    o = rep["outputs"]["kp/v1"]["shared"]
    assert o["val_ids.txt"]["images"] == 2 and o["kp/v1"]["images"] == len(trained)
    assert main(["overlap", str(tmp_path), "--eval", str(tmp_path / "val_ids.txt"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["outputs"]["kp/v1"]["shared"]["val_ids.txt"]["images"] == 2


def test_overlap_bad_arguments_are_one_line(tmp_path, capsys):
    assert main(["overlap", str(tmp_path / "nope"), "--eval", str(tmp_path / "x.p")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "bad.p").write_bytes(b"not a pickle")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"name": "o", "version": "v1", "splits": {}}))
    assert main(["overlap", str(tmp_path / "out"), "--eval", str(tmp_path / "bad.p")]) == 2
    err = capsys.readouterr().err
    assert "--eval" in err and "not a refs pickle" in err and len(err.strip().splitlines()) == 1
