"""Renderers and the verification: pixel checks on the written bytes, and bad input."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from instructdiffusion_data import imageio
from instructdiffusion_data.config import PipelineConfig, build
from instructdiffusion_data.readers._base import NO_JOINTS
from instructdiffusion_data.render import keypoints as K
from instructdiffusion_data.render import masks as M
from instructdiffusion_data.render.palette import PALETTE
from instructdiffusion_data.runner import run
from instructdiffusion_data.schema import make_key, new_row, rows_to_table, table_to_rows
from instructdiffusion_data.stages.render_keypoints import RenderKeypoints, describe_person
from instructdiffusion_data.stages.render_refseg import RenderRefseg
from instructdiffusion_data.stages.render_semseg import RenderSemseg


def textured(h=64, w=80, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(60, 190, (h, w, 3), dtype=np.uint8)


def kp_record(path, joints, people=None, bbox=None):
    return new_row(key=make_key("t", "r1", "rec"), task="keypoint", dataset="t",
                   meta={"file": str(path), "record_id": "r1", "joints": joints, "bbox": bbox, "people": people or []})


def test_keypoint_circles_exact_in_png(tmp_path):
    img = textured()
    p = tmp_path / "a.png"
    p.write_bytes(imageio.encode_png(img))
    joints = [{"name": "nose", "x": 20.0, "y": 20.0, "v": 2}, {"name": "left knee", "x": 60.0, "y": 40.0, "v": 1},
              {"name": "right knee", "x": 3.0, "y": 3.0, "v": 2}, {"name": "left eye", "x": 40.0, "y": 30.0, "v": 0}]
    st = RenderKeypoints({"tgt_format": "png", "variants_per_record": 3, "min_joints": 5, "max_joints": 5,
                          "radius_frac": 0.05})
    rows = table_to_rows(st(rows_to_table([kp_record(p, joints)])))
    assert len(rows) == 3 and len({r["key"] for r in rows}) == 3
    for r in rows:
        assert r["keep"] and r["meta"]["verified"]
        assert r["src"] == p.read_bytes()  # no resize needed: source bytes passed through
        tgt = imageio.decode(r["tgt"])
        drawn = r["meta"]["drawn"]
        # unlabelled joint (v=0) and the joint too close to the border for a whole circle are never drawn
        assert {d["joint"] for d in drawn} == {"nose", "left knee"}
        changed = np.any(tgt != img, -1)
        radius = r["meta"]["radius"]
        for d in drawn:
            assert tuple(tgt[int(d["y"]), int(d["x"])]) == PALETTE[d["color"]]
            assert d["joint"] in r["instruction"] and d["color"] in r["instruction"]
        yy, xx = np.nonzero(changed)
        near = np.min([np.hypot(xx - d["x"], yy - d["y"]) for d in drawn], axis=0)
        assert near.max() <= radius + 1  # nothing changed away from the circles
        assert len({d["color"] for d in drawn}) == len(drawn)


def test_keypoint_verification_drops_a_misplaced_circle(tmp_path):
    img = textured()
    p = tmp_path / "a.png"
    p.write_bytes(imageio.encode_png(img))
    pts, cols = [(30.0, 30.0)], [PALETTE["red"]]
    good = K.draw(img, pts, cols, 4)
    bad = K.draw(img, [(33.0, 30.0)], cols, 4)
    assert max(K.recover_centres(img, good, pts, cols, 4)) <= 0.5
    assert max(K.recover_centres(img, bad, pts, cols, 4)) > 1.5


def test_person_descriptions():
    people = [[0, 0, 10, 10], [50, 0, 10, 10], [100, 0, 10, 10]]
    assert describe_person([0, 0, 10, 10], people) == "the leftmost person"
    assert describe_person([50, 0, 10, 10], people) == "the person in the middle"
    assert describe_person([100, 0, 10, 10], people) == "the rightmost person"
    assert describe_person([0, 0, 10, 10], [[0, 0, 10, 10]]) == "the person"


def seg_record(path, segments, h, w):
    return new_row(key=make_key("s", "img1", "rec"), task="semantic_seg", dataset="s",
                   meta={"file": str(path), "record_id": "img1", "width": w, "height": h, "segments": segments})


def test_semseg_overlay_exact_and_absent_is_identical(tmp_path):
    img = textured(60, 80)
    p = tmp_path / "a.png"
    p.write_bytes(imageio.encode_png(img))
    seg = {"category_id": 18, "name": "dog", "polygons": [[10, 10, 50, 10, 50, 40, 10, 40]]}
    st = RenderSemseg({"tgt_format": "png", "variants_per_record": 12, "absent_ratio": 0.5})
    rows = table_to_rows(st(rows_to_table([seg_record(p, [seg], 60, 80)])))
    gt = M.polygons_to_mask(seg["polygons"], 60, 80)
    present = [r for r in rows if not r["meta"]["absent"]]
    absent = [r for r in rows if r["meta"]["absent"]]
    assert present and absent
    for r in present:
        assert r["keep"] and r["meta"]["verified"] and "dog" in r["instruction"] and r["meta"]["color"] in r["instruction"]
        tgt = imageio.decode(r["tgt"])
        c = np.array(PALETTE[r["meta"]["color"]], np.float32)
        expect = np.rint(img[gt].astype(np.float32) * 0.5 + c * 0.5)
        assert np.array_equal(tgt[gt], expect.astype(np.uint8))
        assert np.array_equal(tgt[~gt], img[~gt])
        assert np.array_equal(imageio.decode_gray(r["mask"]) > 0, gt)
    for r in absent:
        assert r["tgt"] == r["src"] and r["meta"]["category"] != "dog" and r["meta"]["category"] in r["instruction"]
        assert not imageio.decode_gray(r["mask"]).any()


def test_mask_verification_catches_wrong_region():
    img = textured(60, 80)
    gt = np.zeros((60, 80), bool)
    gt[10:40, 10:50] = True
    c = np.array(PALETTE["blue"], np.float32)
    rec, valid = M.recover_mask(img, M.overlay(img, gt, c), c)
    assert M.mask_iou(rec, gt, valid) >= 0.98
    shifted = np.roll(gt, 6, axis=1)
    rec, valid = M.recover_mask(img, M.overlay(img, shifted, c), c)
    assert M.mask_iou(rec, gt, valid) < 0.9


def test_referring_multi_and_no_target(tmp_path):
    img = textured(60, 80)
    p = tmp_path / "a.jpg"
    p.write_bytes(imageio.encode_jpeg(img, 95))
    t1 = {"polygons": [[5, 5, 20, 5, 20, 20, 5, 20]]}
    t2 = {"polygons": [[40, 30, 70, 30, 70, 55, 40, 55]]}
    multi = new_row(key="m", task="referring_seg", dataset="g", meta={"file": str(p), "record_id": "m1",
                    "sentences": ["all dogs"], "targets": [t1, t2], "no_target": False})
    none = new_row(key="n", task="referring_seg", dataset="g", meta={"file": str(p), "record_id": "n1",
                   "sentences": ["the purple giraffe"], "targets": [], "no_target": True})
    rows = table_to_rows(RenderRefseg({})(rows_to_table([multi, none])))
    m, n = [r for r in rows if r["meta"]["record_id"] == "m1"][0], [r for r in rows if r["meta"]["record_id"] == "n1"][0]
    mask = imageio.decode_gray(m["mask"]) > 0
    assert mask[10, 10] and mask[40, 50] and not mask[45, 20]
    assert m["keep"] and m["meta"]["verified"] and "all dogs" in m["instruction"]
    assert n["tgt"] == n["src"] == p.read_bytes() and "purple giraffe" in n["instruction"]


@pytest.mark.parametrize("case", ["missing", "corrupt", "polygon_outside"])
def test_bad_inputs_become_rejected_rows(tmp_path, case):
    p = tmp_path / "a.jpg"
    if case != "missing":
        p.write_bytes(b"not a jpeg at all" if case == "corrupt" else imageio.encode_jpeg(textured(30, 30)))
    seg = {"category_id": 18, "name": "dog",
           "polygons": [[100, 100, 120, 100, 120, 130]] if case == "polygon_outside" else [[1, 1, 9, 1, 9, 9]]}
    rows = table_to_rows(RenderSemseg({})(rows_to_table([seg_record(p, [seg], 30, 30)])))
    assert len(rows) == 1 and not rows[0]["keep"]
    reason = {"missing": "image file missing", "corrupt": "image is corrupt",
              "polygon_outside": "polygon lies outside the image"}[case]
    assert reason in rows[0]["drop_reason"] and "record=img1" in rows[0]["drop_reason"]


def test_task_pipelines_on_demo_data_over_ray(demo_root, tmp_path, ray_local):
    conf = build(PipelineConfig, {
        "name": "kp", "source": {"type": "coco_keypoints",
                                 "annotations": str(demo_root / "coco/annotations/person_keypoints_train2017.json"),
                                 "images": str(demo_root / "coco/train2017")},
        "stages": [{"type": "render_keypoints", "variants_per_record": 2}], "writer": {"records_per_shard": 8}})
    s = run(conf, out=str(tmp_path), use_ray=True)
    m = s.manifest["splits"]
    n_people = len(json.loads((demo_root / "coco/annotations/person_keypoints_train2017.json").read_text())["annotations"])
    no_joints = m["rejected"]["drop_reasons"].get(NO_JOINTS, 0)
    assert no_joints > 0 and m["train"]["rows"] + m["rejected"]["rows"] == 2 * (n_people - no_joints) + no_joints
    assert m["train"]["verified"]["passed"] == m["train"]["rows"] > 0
    for pq_path in (s.root / "train").glob("*.parquet"):
        for row in pq.read_table(pq_path).to_pylist():
            meta = json.loads(row["meta"])
            assert max(meta["size"]) <= 512 and meta["verified"]


# Words that count the marked joints: a template must put each inside {n:singular|plural}.
_COUNTING = ("circle", "circles", "dot", "dots", "marks", "marker", "markers", "each", "are")


def test_keypoint_templates_agree_in_number_with_the_joints_drawn():
    """Issue 15 item 6: one joint must never read "... and cover each with a round mark"."""
    import re
    import string

    from instructdiffusion_data.instructions import Number, fill, load_templates

    templates = load_templates("keypoint")
    for t in templates:
        # outside {n:...}, no word that counts the joints ("Circle {items}" and "Encircle" are verbs: fine)
        plain = "".join(lit for lit, _, _, _ in string.Formatter().parse(t))
        words = re.findall(r"[a-z]+", plain.lower())
        assert not [w for w in words[1:] if w in _COUNTING], t
        one = fill(t, items="the nose in red", person="the person", n=Number(1))
        three = fill(t, items="the nose in red, the left knee in blue and the right hip in green",
                     person="the person", n=Number(3))
        assert not re.search(r"\b(circles|dots|markers|each|are)\b", one), one
        assert not re.search(r"\b(a|an) (small |opaque |solid |filled |round |colored )*(circle|dot|marker)\b", three)
        assert not re.search(r"\bcover it\b|\bis by\b", three), three
    assert any("{n:" in t for t in templates)


def test_one_joint_gets_a_singular_instruction(tmp_path):
    img = textured()
    p = tmp_path / "a.png"
    p.write_bytes(imageio.encode_png(img))
    joints = [{"name": "nose", "x": 20.0, "y": 20.0, "v": 2}, {"name": "left knee", "x": 60.0, "y": 40.0, "v": 2}]
    one = RenderKeypoints({"variants_per_record": 40, "min_joints": 1, "max_joints": 1})
    two = RenderKeypoints({"variants_per_record": 40, "min_joints": 2, "max_joints": 2, "radius_frac": 0.02})
    singular = [r["instruction"] for r in table_to_rows(one(rows_to_table([kp_record(p, joints)])))]
    plural = [r["instruction"] for r in table_to_rows(two(rows_to_table([kp_record(p, joints)])))]
    assert singular and not any(w in s for s in singular for w in (" circles", " dots", " each ", " are "))
    assert any(" circles" in s or " dots" in s or " markers" in s for s in plural)
    assert not any(" a small circle" in s or " a solid dot" in s for s in plural)


def test_a_malformed_number_template_is_a_config_error(tmp_path):
    from instructdiffusion_data.errors import ConfigError
    from instructdiffusion_data.instructions import load_templates

    (tmp_path / "keypoint.txt").write_text("# header\nMark {items} with {n:dots}.\n")
    with pytest.raises(ConfigError, match=r"keypoint.txt:2: .*singular and a plural"):
        load_templates("keypoint", tmp_path)
