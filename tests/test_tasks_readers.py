"""Readers of the first task datasets, on generated demo data and on hand-written records in the
real field layouts, including the bad-input cases."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from instructdiffusion_data import imageio
from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.readers.coco_keypoints import CocoKeypointsSource
from instructdiffusion_data.readers.coco_stuff import CocoStuffSource
from instructdiffusion_data.readers.grefcoco import GRefCocoSource
from instructdiffusion_data.readers._base import NO_JOINTS, UNKNOWN_IMAGE
from instructdiffusion_data.readers._keypoints import UNKNOWN_CATEGORY
from instructdiffusion_data.readers.refcoco import UNKNOWN_ANNOTATION, RefCocoSource


def detail(row):
    return json.loads(row["drop_detail"][0])


def test_coco_keypoints_demo(demo_root):
    ann = json.loads((demo_root / "coco/annotations/person_keypoints_train2017.json").read_text())
    recs = list(CocoKeypointsSource({"annotations": str(demo_root / "coco/annotations/person_keypoints_train2017.json"),
                                     "images": str(demo_root / "coco/train2017")}).records())
    assert len(recs) == len(ann["annotations"])
    kept = [r for r in recs if r["keep"]]
    dropped = [r for r in recs if not r["keep"]]
    assert len(dropped) == sum(a["num_keypoints"] == 0 for a in ann["annotations"]) > 0
    assert all(r["drop_class"] == NO_JOINTS for r in dropped)
    m = kept[0]["meta"]
    assert len(m["joints"]) == 17 and m["joints"][5]["name"] == "left shoulder"
    assert Path(m["file"]).is_file() and len(m["people"]) >= 1


def write_coco(tmp_path, images, annotations, categories=None):
    doc = {"images": images, "annotations": annotations,
           "categories": categories or [{"id": 1, "name": "person", "keypoints": ["nose", "left_eye"], "skeleton": []}]}
    p = tmp_path / "person_keypoints_val2017.json"
    p.write_text(json.dumps(doc))
    return p


def test_coco_keypoints_handwritten_and_bad_records(tmp_path):
    (tmp_path / "img").mkdir()
    imageio_bytes = imageio.encode_jpeg(np.full((40, 60, 3), 90, np.uint8))
    (tmp_path / "img" / "000000000001.jpg").write_bytes(imageio_bytes)
    images = [{"id": 1, "file_name": "000000000001.jpg", "width": 60, "height": 40}]
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "keypoints": [30, 20, 2, 31, 18, 1], "num_keypoints": 2,
         "bbox": [20, 5, 20, 30], "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 1, "keypoints": [0, 0, 0, 0, 0, 0], "num_keypoints": 0,
         "bbox": [0, 0, 5, 5], "iscrowd": 0},
        {"id": 12, "image_id": 99, "category_id": 1, "keypoints": [1, 1, 2, 0, 0, 0], "num_keypoints": 1,
         "bbox": [0, 0, 5, 5], "iscrowd": 0},
        {"id": 13, "image_id": 1, "category_id": 7, "keypoints": [1, 1, 2, 0, 0, 0], "num_keypoints": 1,
         "bbox": [0, 0, 5, 5], "iscrowd": 0},
    ]
    p = write_coco(tmp_path, images, anns)
    recs = {r["meta"]["record_id"]: r for r in CocoKeypointsSource({"annotations": str(p), "images": str(tmp_path / "img")}).records()}
    assert recs["1_10"]["keep"] and recs["1_10"]["meta"]["joints"][1] == {"name": "left eye", "x": 31.0, "y": 18.0, "v": 1}
    assert recs["1_11"]["drop_class"] == NO_JOINTS
    assert recs["99_12"]["drop_class"] == UNKNOWN_IMAGE
    assert detail(recs["99_12"])["file"].endswith("person_keypoints_val2017.json")
    assert recs["1_13"]["drop_class"] == UNKNOWN_CATEGORY and detail(recs["1_13"])["category_id"] == 7


def test_coco_keypoints_missing_paths_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="source.annotations: file not found"):
        CocoKeypointsSource({"annotations": str(tmp_path / "x.json"), "images": str(tmp_path)})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        list(CocoKeypointsSource({"annotations": str(bad), "images": str(tmp_path)}).records())


def test_coco_stuff_json_and_pixelmap_forms_agree(demo_root):
    js = list(CocoStuffSource({"images": str(demo_root / "coco/train2017"), "annotations": [
        str(demo_root / "cocostuff/annotations/stuff_train2017.json"),
        str(demo_root / "coco/annotations/instances_train2017.json")]}).records())
    pm = list(CocoStuffSource({"images": str(demo_root / "coco/train2017"),
                               "pixelmaps": str(demo_root / "cocostuff/stuffthingmaps_trainval2017/train2017")}).records())
    assert len(js) == len(pm) == 12 and all(r["keep"] for r in js + pm)
    names = {s["name"] for r in js for s in r["meta"]["segments"]}
    assert "person" in names and "other" not in names
    assert all(s.get("rle") or s.get("polygons") for r in js for s in r["meta"]["segments"])


def test_coco_stuff_unknown_category_goes_to_rejected(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(imageio.encode_jpeg(np.zeros((8, 8, 3), np.uint8)))
    doc = {"images": [{"id": 5, "file_name": "a.jpg", "width": 8, "height": 8}],
           "annotations": [{"id": 1, "image_id": 5, "category_id": 999, "segmentation": {"size": [8, 8], "counts": "0"}}],
           "categories": [{"id": 92, "name": "banner"}]}
    p = tmp_path / "stuff_val2017.json"
    p.write_text(json.dumps(doc))
    (rec,) = CocoStuffSource({"images": str(tmp_path / "img"), "annotations": [str(p)]}).records()
    assert not rec["keep"] and rec["drop_class"] == UNKNOWN_CATEGORY
    assert detail(rec)["category_id"] == 999 and detail(rec)["field"] == "category_id"


def test_refcoco_pickle_and_grefcoco(demo_root):
    refs = pickle.load(open(demo_root / "refcoco/refcoco/refs(unc).p", "rb"))
    recs = list(RefCocoSource({"refs": str(demo_root / "refcoco/refcoco/refs(unc).p"),
                               "instances": str(demo_root / "refcoco/refcoco/instances.json"),
                               "images": str(demo_root / "coco/train2014"), "splits": ["train", "val"]}).records())
    assert len(recs) == len(refs) and all(r["keep"] for r in recs)
    assert recs[0]["meta"]["sentences"] == [s["sent"] for s in sorted(refs, key=lambda r: r["ref_id"])[0]["sentences"]]
    g = list(GRefCocoSource({"refs": str(demo_root / "grefcoco/grefs(unc).json"),
                             "instances": str(demo_root / "grefcoco/instances.json"),
                             "images": str(demo_root / "coco/train2014"), "splits": ["train", "val"]}).records())
    multi = [r for r in g if len(r["meta"]["targets"]) > 1]
    none = [r for r in g if r["meta"]["no_target"]]
    assert multi and none and all(r["meta"]["targets"] == [] for r in none)


def test_refcoco_handwritten_record_real_layout(tmp_path):
    (tmp_path / "train2014").mkdir()
    (tmp_path / "train2014" / "COCO_train2014_000000000009.jpg").write_bytes(imageio.encode_jpeg(np.zeros((20, 30, 3), np.uint8)))
    refs = [{"sent_ids": [0, 1], "file_name": "COCO_train2014_000000000009_5.jpg", "ann_id": 5, "ref_id": 0,
             "image_id": 9, "split": "train", "category_id": 18,
             "sentences": [{"tokens": ["left", "dog"], "raw": "Left dog", "sent_id": 0, "sent": "left dog"},
                           {"tokens": ["dog"], "raw": "dog!", "sent_id": 1, "sent": "dog"}]},
            {"sent_ids": [2], "file_name": "x.jpg", "ann_id": 77, "ref_id": 1, "image_id": 9, "split": "train",
             "category_id": 18, "sentences": [{"tokens": ["cat"], "raw": "cat", "sent_id": 2, "sent": "cat"}]}]
    with open(tmp_path / "refs(unc).p", "wb") as fh:
        pickle.dump(refs, fh, protocol=2)
    inst = {"images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 30, "height": 20}],
            "annotations": [{"id": 5, "image_id": 9, "category_id": 18, "iscrowd": 0, "bbox": [1, 1, 5, 5],
                             "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]}], "categories": [{"id": 18, "name": "dog"}]}
    (tmp_path / "instances.json").write_text(json.dumps(inst))
    recs = list(RefCocoSource({"refs": str(tmp_path / "refs(unc).p"), "instances": str(tmp_path / "instances.json"),
                               "images": str(tmp_path / "train2014")}).records())
    assert recs[0]["keep"] and recs[0]["meta"]["sentences"] == ["left dog", "dog"]
    assert recs[0]["meta"]["targets"][0]["polygons"] == [[1, 1, 6, 1, 6, 6, 1, 6]]
    assert not recs[1]["keep"] and recs[1]["drop_class"] == UNKNOWN_ANNOTATION and detail(recs[1])["ann_id"] == 77
