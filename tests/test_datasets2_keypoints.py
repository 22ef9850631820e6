"""MPII, CrowdPose and AI Challenger readers: generated demo layouts and hand-written records."""

import json

import cv2
import numpy as np
import pytest

from instructdiffusion_data.demo import aic as demo_aic
from instructdiffusion_data.demo import crowdpose as demo_crowdpose
from instructdiffusion_data.demo import mpii as demo_mpii
from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.readers._base import NO_IMAGE_FILE, NO_JOINTS
from instructdiffusion_data.readers._keypoints import KEYPOINT_COUNT
from instructdiffusion_data.readers.aic import AICSource
from instructdiffusion_data.readers.crowdpose import CrowdPoseSource
from instructdiffusion_data.readers.mpii import MPIISource
from instructdiffusion_data.shard_tasks import run_stages_local


def _img(path, w=200, h=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))


def _by_name(row):
    return {j["name"]: j for j in row["meta"]["joints"]}


def test_mpii_hand_written_entry(tmp_path):
    _img(tmp_path / "images" / "015601864.jpg", 1280, 720)
    joints = [[620.0 + i, 394.0 + i] for i in range(16)]
    joints[9] = [-1.0, -1.0]  # head top not labelled
    vis = [1] * 16
    vis[9] = 0
    entries = [
        {"joints_vis": vis, "joints": joints, "image": "015601864.jpg", "scale": 3.021046, "center": [594.0, 257.0]},
        {"joints_vis": [1] * 16, "joints": [[900.0, 300.0 + i] for i in range(16)], "image": "015601864.jpg",
         "scale": 2.0, "center": [900.0, 320.0]},
        {"joints_vis": [1] * 16, "joints": [[1.0, 1.0]] * 16, "image": "missing.jpg", "scale": 1.0, "center": [5, 5]},
    ]
    (tmp_path / "mpii_train.json").write_text(json.dumps(entries))
    rows = list(MPIISource({"annotations": str(tmp_path / "mpii_train.json"), "images": str(tmp_path / "images")}).records())
    assert [r["keep"] for r in rows] == [True, True, False]
    assert rows[2]["drop_class"] == NO_IMAGE_FILE
    first = rows[0]
    assert first["task"] == "keypoint" and first["dataset"] == "mpii"
    assert (first["meta"]["width"], first["meta"]["height"]) == (1280, 720)
    j = _by_name(first)
    # MPII order: 0 r_ankle ... 6 pelvis, 7 thorax, 8 upper neck, 9 head top, 12 r_shoulder, 13 l_shoulder
    assert j["right ankle"] == {"name": "right ankle", "x": 619.0, "y": 393.0, "v": 2}  # 1-based -> 0-based
    assert j["left shoulder"]["x"] == 620.0 + 13 - 1
    assert j["pelvis"]["v"] == 2 and j["chest"]["v"] == 2 and j["neck"]["v"] == 2
    assert j["top of the head"]["v"] == 0 and j["top of the head"]["x"] == 0.0
    assert len(first["meta"]["joints"]) == 16
    # both people of the image are listed for "the leftmost person" instructions
    assert len(first["meta"]["people"]) == 2 and first["meta"]["bbox"] in first["meta"]["people"]
    assert first["meta"]["bbox"][0] < 620 and first["meta"]["bbox"][0] + first["meta"]["bbox"][2] > 634


def test_mpii_missing_joints_and_bad_json(tmp_path):
    _img(tmp_path / "images" / "a.jpg")
    (tmp_path / "test.json").write_text(json.dumps([{"image": "a.jpg", "center": [5, 5], "scale": 1.0}]))
    rows = list(MPIISource({"annotations": str(tmp_path / "test.json"), "images": str(tmp_path / "images")}).records())
    assert len(rows) == 1 and not rows[0]["keep"] and rows[0]["drop_class"] == NO_JOINTS
    assert json.loads(rows[0]["drop_detail"][0])["field"] == "joints"
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        list(MPIISource({"annotations": str(tmp_path / "bad.json"), "images": str(tmp_path / "images")}).records())
    with pytest.raises(ConfigError, match="source.images"):
        MPIISource({"annotations": str(tmp_path / "test.json"), "images": str(tmp_path / "nope")})


def _crowdpose_doc(kps):
    return {"images": [{"file_name": "100000.jpg", "id": 100000, "height": 100, "width": 200, "crowdIndex": 0.57}],
            "annotations": [{"num_keypoints": 1, "iscrowd": 0, "keypoints": kps, "image_id": 100000,
                             "bbox": [10, 5, 50, 90], "category_id": 1, "id": 7}],
            "categories": [{"supercategory": "person", "id": 1, "name": "person",
                            "keypoints": ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
                                          "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
                                          "left_ankle", "right_ankle", "head", "neck"]}]}


def test_crowdpose_hand_written(tmp_path):
    _img(tmp_path / "images" / "100000.jpg")
    kps = [0, 0, 0] * 14
    kps[0:3] = [20, 30, 2]  # left shoulder visible
    kps[36:39] = [25, 8, 1]  # head (top of the head): flagged 1 as CrowdPose does
    kps[39:42] = [25, 20, 1]  # neck
    (tmp_path / "cp.json").write_text(json.dumps(_crowdpose_doc(kps)))
    cfg = {"annotations": str(tmp_path / "cp.json"), "images": str(tmp_path / "images")}
    row, = CrowdPoseSource(cfg).records()
    assert row["keep"], row["drop_reason"]  # num_keypoints=1 ignores head/neck; the reader counts itself
    j = _by_name(row)
    assert j["left shoulder"] == {"name": "left shoulder", "x": 20.0, "y": 30.0, "v": 2}
    assert j["top of the head"]["v"] == 1 and j["neck"] == {"name": "neck", "x": 25.0, "y": 20.0, "v": 1}
    assert j["right ankle"]["v"] == 0
    assert row["meta"]["crowd_index"] == 0.57 and row["meta"]["bbox"] == [10.0, 5.0, 50.0, 90.0]
    row2, = CrowdPoseSource({**cfg, "visibility": "label_flag"}).records()
    assert _by_name(row2)["neck"]["v"] == 2 and _by_name(row2)["right ankle"]["v"] == 0


def test_crowdpose_unlabelled_and_short_keypoints(tmp_path):
    _img(tmp_path / "images" / "100000.jpg")
    (tmp_path / "a.json").write_text(json.dumps(_crowdpose_doc([0, 0, 0] * 14)))
    (tmp_path / "b.json").write_text(json.dumps(_crowdpose_doc([1, 1, 2] * 5)))
    r, = CrowdPoseSource({"annotations": str(tmp_path / "a.json"), "images": str(tmp_path / "images")}).records()
    assert not r["keep"] and r["drop_class"] == NO_JOINTS
    r, = CrowdPoseSource({"annotations": str(tmp_path / "b.json"), "images": str(tmp_path / "images")}).records()
    assert not r["keep"] and r["drop_class"] == KEYPOINT_COUNT
    assert {k: v for k, v in json.loads(r["drop_detail"][0]).items() if k in ("expected", "got", "field")} == \
        {"expected": 42, "got": 15, "field": "keypoints"}


AIC_ID = "054d9ce9201beffc76e5ff2169d2af2f027002ca"


def _aic_original(tmp_path):
    _img(tmp_path / "imgs" / f"{AIC_ID}.jpg", 400, 300)
    h1 = []
    for i in range(14):
        h1 += [100 + i, 50 + i, [1, 2, 3][i % 3]]
    h1[3 * 2: 3 * 2 + 3] = [0, 0, 3]
    doc = [{"url": "http://www.sogou.com/x.jpg", "image_id": AIC_ID,
            "keypoint_annotations": {"human2": [10, 10, 1] * 14, "human1": h1},
            "human_annotations": {"human1": [90, 40, 200, 280], "human2": [5, 5, 60, 120]}}]
    (tmp_path / "aic.json").write_text(json.dumps(doc))
    return {"annotations": str(tmp_path / "aic.json"), "images": str(tmp_path / "imgs")}


def test_aic_original_visibility_and_boxes(tmp_path):
    rows = list(AICSource(_aic_original(tmp_path)).records())
    assert [r["meta"]["human"] for r in rows] == ["human1", "human2"]
    j = rows[0]["meta"]["joints"]
    assert [x["name"] for x in j[:3]] == ["right shoulder", "right elbow", "right wrist"]
    assert [x["name"] for x in j[-2:]] == ["top of the head", "neck"]
    # AIC 1 visible -> 2, 2 occluded -> 1, 3 not labelled -> 0 (coordinates cleared)
    assert [x["v"] for x in j[:6]] == [2, 1, 0, 2, 1, 0]
    assert j[2] == {"name": "right wrist", "x": 0.0, "y": 0.0, "v": 0}
    assert j[0]["x"] == 100.0 and j[0]["y"] == 50.0
    assert rows[0]["meta"]["bbox"] == [90.0, 40.0, 110.0, 240.0]  # x1,y1,x2,y2 -> x,y,w,h
    assert sorted(rows[0]["meta"]["people"]) == [[5.0, 5.0, 55.0, 115.0], [90.0, 40.0, 110.0, 240.0]]


def test_aic_coco_form_detected(tmp_path):
    _img(tmp_path / "imgs" / f"{AIC_ID}.jpg", 400, 300)
    doc = {"images": [{"file_name": f"{AIC_ID}.jpg", "id": 1, "width": 400, "height": 300}],
           "annotations": [{"image_id": 1, "id": 1, "category_id": 1, "iscrowd": 0, "bbox": [1, 2, 30, 40],
                            "keypoints": [5, 6, 2] + [7, 8, 1] + [0, 0, 0] * 12, "num_keypoints": 2}],
           "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "aic_train.json").write_text(json.dumps(doc))
    cfg = {"annotations": str(tmp_path / "aic_train.json"), "images": str(tmp_path / "imgs")}
    row, = AICSource(cfg).records()
    assert row["meta"]["joints"][0] == {"name": "right shoulder", "x": 5.0, "y": 6.0, "v": 2}
    assert row["meta"]["joints"][1]["v"] == 1 and row["meta"]["joints"][13]["name"] == "neck"
    with pytest.raises(ConfigError, match="expected a list"):
        list(AICSource({**cfg, "format": "original"}).records())


@pytest.mark.parametrize("demo,make", [
    (demo_mpii, lambda d: MPIISource({"annotations": str(d / "mpii/annotations/mpii_train.json"), "images": str(d / "mpii/images")})),
    (demo_crowdpose, lambda d: CrowdPoseSource({"annotations": str(d / "crowdpose/json/crowdpose_train.json"),
                                                "images": str(d / "crowdpose/images")})),
    (demo_aic, lambda d: AICSource({"annotations": str(d / "aic/keypoint_train_annotations_20170909.json"),
                                    "images": str(d / "aic/keypoint_train_images_20170902")})),
    (demo_aic, lambda d: AICSource({"annotations": str(d / "aic/annotations/aic_train.json"),
                                    "images": str(d / "aic/keypoint_train_images_20170902")})),
])
def test_demo_layouts_read_and_joints_on_the_figures(tmp_path, demo, make):
    info = demo.generate(tmp_path, 6, 0)
    rows = list(make(tmp_path).records())
    kept = [r for r in rows if r["keep"]]
    assert len(rows) == info["people"] and len(kept) >= len(rows) - 1
    for r in kept[:4]:
        img = cv2.imread(r["meta"]["file"])
        assert img.shape[:2] == (r["meta"]["height"], r["meta"]["width"])
        bx, by, bw, bh = r["meta"]["bbox"]
        for j in r["meta"]["joints"]:
            if j["v"]:
                assert 0 <= j["x"] < r["meta"]["width"] and 0 <= j["y"] < r["meta"]["height"]
                assert bx - 1 <= j["x"] <= bx + bw + 1 and by - 1 <= j["y"] <= by + bh + 1
    # the keys are stable: reading again gives the same keys in the same order
    assert [r["key"] for r in make(tmp_path).records()] == [r["key"] for r in rows]


def test_render_keypoints_draws_named_mpii_joints(tmp_path):
    from instructdiffusion_data import imageio
    from instructdiffusion_data.stage import stage_class

    demo_mpii.generate(tmp_path, 3, 1)
    recs = [r for r in MPIISource({"annotations": str(tmp_path / "mpii/annotations/mpii_train.json"),
                                   "images": str(tmp_path / "mpii/images")}).records() if r["keep"]]
    out = run_stages_local([stage_class("render_keypoints")({"variants_per_record": 2}, seed=0)], recs[:2])
    kept = [r for r in out if r["keep"]]
    assert kept, [r["drop_reason"] for r in out]
    names = {j["name"] for j in recs[0]["meta"]["joints"]}
    for r in kept:
        src, tgt = imageio.decode(r["src"]), imageio.decode(r["tgt"])
        assert src.shape == tgt.shape and (np.abs(src.astype(int) - tgt).max() > 50)
        assert any(n in r["instruction"] for n in names)
