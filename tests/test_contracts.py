"""contracts.py: each meta payload decoded in one place, written back as read, malformed fields named."""

import base64
import json

import cv2
import numpy as np
import pytest

from instructdiffusion_data.contracts import (
    DrawnJoint,
    FilterRecord,
    PersonKeypoints,
    ReferencePatch,
    Scores,
    Segment,
    record_drop,
    union_mask,
)
from instructdiffusion_data.errors import RecordError
from instructdiffusion_data.imageio import encode_png
from instructdiffusion_data.schema import new_row


def _rgba_png(rgba):
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    return buf.tobytes()


def test_reference_round_trip_and_pixels(tmp_path):
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[1:5, 2:6] = (10, 200, 30, 255)
    gallery = tmp_path / "g"
    (gallery / "patches").mkdir(parents=True)
    data = _rgba_png(rgba)
    (gallery / "patches" / "000000.tar").write_bytes(b"x" * 10 + data)
    written = {"label": "cup", "file": str(tmp_path / "src.png"), "bbox": [1, 1, 4, 3],
               "patch_png_b64": base64.b64encode(data).decode(), "gallery": str(gallery),
               "patch": {"tar": "patches/000000.tar", "offset": 10, "size": len(data)}, "gallery_id": 3,
               "similarity": 0.5, "rank": 0, "something_new": [1, 2]}
    ref = ReferencePatch.from_meta({"reference": written})
    assert ref.to_meta() == written and ref.extra == {"something_new": [1, 2]}
    assert np.array_equal(ref.rgba(), rgba) and np.array_equal(ref.gallery_rgba(), rgba)
    assert tuple(ref.rgb((128, 128, 128))[0, 0]) == (128, 128, 128) and tuple(ref.rgb(None)[2, 3]) == (10, 200, 30)
    # without the embedded copy: the file cropped to bbox, no mask
    (tmp_path / "src.png").write_bytes(encode_png(np.full((10, 10, 3), 7, np.uint8)))
    no_copy = ReferencePatch.from_meta({"reference": {k: v for k, v in written.items() if k != "patch_png_b64"}})
    assert no_copy.rgba().shape == (3, 4, 4) and no_copy.rgba()[..., 3].min() == 255


@pytest.mark.parametrize("bad,field", [
    ("just/a/path.png", "reference"),
    ({"bbox": [0, 0, float("nan"), 2]}, "reference.bbox"),
    ({"patch": {"tar": "t", "offset": -1, "size": 3}}, "reference.patch"),
    ({"label": 5}, "reference.label"),
])
def test_reference_malformed_fields_are_named(bad, field):
    with pytest.raises(RecordError) as e:
        ReferencePatch.from_meta({"reference": bad}, record="r1")
    assert e.value.field == field and e.value.record == "r1"


def test_a_contract_error_drops_with_class_and_details():
    row = new_row(key="k")
    try:
        ReferencePatch.from_meta({"reference": {"patch_png_b64": "@@"}}).rgba(record="r9")
    except RecordError as e:
        record_drop(row, "caption", e)
    assert row["drop_class"] == "caption: reference patch is not base64"
    assert json.loads(row["drop_detail"][0]) == {"class": "caption: reference patch is not base64",
                                                 "field": "reference.patch_png_b64", "record": "r9"}


def test_keypoints_contract():
    meta = {"joints": [{"name": "nose", "x": 3, "y": 4.5, "v": 2}, {"name": "left knee", "x": 1.0, "y": 2.0, "v": 0}],
            "bbox": [0, 0, 10, 20], "people": [[0, 0, 10, 20], [30, 0, 10, 20]]}
    kp = PersonKeypoints.from_meta(meta)
    assert kp.joints[0].x == 3.0 and kp.joints[1].v == 0 and len(kp.people) == 2
    assert kp.to_meta()["joints"][0] == {"name": "nose", "x": 3.0, "y": 4.5, "v": 2}
    assert kp.joints[0].scaled(0.5).to_meta() == {"name": "nose", "x": 1.5, "y": 2.25, "v": 2}
    for bad, field in (({"joints": "no"}, "joints"),
                       ({"joints": [{"name": "nose", "x": float("inf"), "y": 1, "v": 2}]}, "joints[0]"),
                       ({"joints": [{"name": "nose", "x": 1, "y": 1, "v": "2"}]}, "joints[0].v")):
        with pytest.raises(RecordError) as e:
            PersonKeypoints.from_meta(bad)
        assert e.value.field == field
    d = DrawnJoint("nose", 1.23456, 2.0, 2, "red", [255, 0, 0])
    assert DrawnJoint.from_meta(d.to_meta()).to_meta() == d.to_meta() and d.to_meta()["x"] == 1.235


def test_segments_decode_in_one_place():
    poly = {"polygons": [[1, 1, 8, 1, 8, 6, 1, 6]], "name": "dog", "category_id": 18}
    seg = Segment.from_meta(poly)
    assert seg.to_meta() == poly and seg.mask(10, 10).sum() > 20
    from pycocotools import mask as mu

    m = np.zeros((10, 10), np.uint8, order="F")
    m[2:4, 2:5] = 1
    rle = mu.encode(m)
    rle = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
    both = union_mask([poly, {"rle": rle}], 10, 10)
    assert both.sum() >= seg.mask(10, 10).sum() and union_mask([], 4, 4).sum() == 0
    with pytest.raises(RecordError) as e:
        Segment.from_meta({"name": "x"}, record="r", where="segments[2]")
    assert e.value.field == "segments[2]"


def test_scores_and_filter_record():
    meta = {"scores": {"aesthetic_tgt": 5.5, "clip_sim_0": 0.3, "giqa_tgt": "bad"},
            "filter": {"profile": "weightfree", "thresholds": {"aesthetic_tgt_min": 4.5}, "failed": [],
                       "prior_drop": None, "scorers": {}, "audit": "accept"}}
    sc = Scores.from_meta(meta)
    assert sc.as_dict() == {"aesthetic_tgt": 5.5} and sc.other == {"clip_sim_0": 0.3}
    sc.update({"edit_change": 12.0})
    assert sc.to_meta() == {"aesthetic_tgt": 5.5, "clip_sim_0": 0.3, "edit_change": 12.0}
    fr = FilterRecord.from_meta(meta)
    assert fr.extra == {"audit": "accept"} and fr.to_meta()["audit"] == "accept"
    assert fr.to_meta()["thresholds"] == {"aesthetic_tgt_min": 4.5} and "skipped" not in fr.to_meta()
    assert FilterRecord.from_meta({}) is None
