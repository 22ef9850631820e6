"""Fuzzing the record structure of the COCO-family, keypoint and PhraseCut readers through the real
readers (issue 14 items 5 and 7): every field of a record, of its image entry and of the nested lists
is replaced by a wrong type, null, an empty value, NaN, Infinity, a huge integer, or removed. The file is
written as real JSON (``json.dumps`` writes bare ``NaN``/``Infinity`` tokens, as Python tools do) or a
refs pickle, and the source's ``records()`` runs on it. For every case:

* no exception escapes (a broken record is a dropped row, never a traceback);
* every input record id appears exactly once among the output rows (nothing silently lost);
* every dropped row has a reason class from the readers' fixed vocabulary (no per-record values in
  it) and details naming the file, the record and the field.

Broken *file structure* (``"annotations": {}``, ``images`` not a list, a top-level list, invalid JSON)
is one ConfigError line naming the file and the field.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import random

import cv2
import numpy as np
import pytest

from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.readers import _base, _keypoints
from instructdiffusion_data.readers._coco import DUPLICATE_ID
from instructdiffusion_data.readers._keypoints import COCO_JOINTS
from instructdiffusion_data.readers._keypoints import UNREADABLE_IMAGE
from instructdiffusion_data.readers.aic import AIC_JOINTS, AICSource
from instructdiffusion_data.readers.coco_keypoints import CocoKeypointsSource
from instructdiffusion_data.readers.coco_stuff import NO_LABELMAP, NO_SEGMENTS, CocoStuffSource
from instructdiffusion_data.readers.crowdpose import CROWDPOSE_JOINTS, CrowdPoseSource
from instructdiffusion_data.readers.grefcoco import GRefCocoSource
from instructdiffusion_data.readers.mpii import MPIISource
from instructdiffusion_data.readers import phrasecut as pc
from instructdiffusion_data.readers.refcoco import NO_SENTENCE, UNKNOWN_ANNOTATION, RefCocoSource

NAN, INF = float("nan"), float("inf")
DELETE = object()
BAD_VALUES = [DELETE, None, "x", "", True, [], {}, [None], NAN, INF, -INF, -1, 10**20]

REASONS = {_base.NO_IMAGE_FILE, _base.UNKNOWN_IMAGE, _base.NO_JOINTS, _base.BAD_FIELD, _base.NOT_FINITE, _base.CROWD,
           _base.EXCLUDED, _keypoints.UNKNOWN_CATEGORY, _keypoints.KEYPOINT_COUNT, _keypoints.BAD_VISIBILITY,
           UNREADABLE_IMAGE, NO_LABELMAP, NO_SEGMENTS, UNKNOWN_ANNOTATION, NO_SENTENCE, pc.NO_POLYGON, pc.TOO_SMALL,
           pc.TOO_LARGE, pc.AT_BORDER, pc.TOO_MANY, pc.TOO_LARGE_IMAGE, DUPLICATE_ID}


# -- helpers --------------------------------------------------------------------------------------

def valid_id(v):
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v != "")


def streamed(obj):
    """What a streamed (ijson) reader sees: integers beyond int64 arrive as floats."""
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, int) and abs(obj) >= 1 << 63:
        return float(obj)
    if isinstance(obj, list):
        return [streamed(v) for v in obj]
    if isinstance(obj, dict):
        return {k: streamed(v) for k, v in obj.items()}
    return obj


def mutate(doc, path, value):
    out = copy.deepcopy(doc)
    node = out
    for p in path[:-1]:
        node = node[p]
    if value is DELETE:
        if isinstance(node, dict):
            node.pop(path[-1], None)
        else:
            del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


def label(value):
    return "DELETE" if value is DELETE else repr(value)


def check_rows(rows, expected):
    ids = [r["meta"]["record_id"] for r in rows]
    assert sorted(ids) == sorted(str(i) for i in expected), "every input record exactly once"
    for r in rows:
        if r["keep"]:
            assert not r.get("drop_class")
            continue
        assert r["drop_class"] in REASONS, r["drop_class"]
        d = json.loads(r["drop_detail"][0])
        assert d["class"] == r["drop_class"]
        assert d.get("file") and d.get("field"), d
        assert d.get("record") == r["meta"]["record_id"], d
        json.dumps(r["meta"], allow_nan=False)  # the row's meta is writable (no NaN leaks into it)


def img(path, w=60, h=40):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))


# -- COCO-style keypoint files (COCO, CrowdPose, AIC converted) ---------------------------------

def coco_kp_doc(joints, extra_image=None):
    k = len(joints)

    def kps(seed):
        out = []
        for j in range(k):
            v = (j + seed) % 3
            out += [5 + j, 4 + j, v] if v else [0, 0, 0]
        return out

    images = [dict({"id": 1, "file_name": "000000000001.jpg", "width": 60, "height": 40}, **(extra_image or {})),
              dict({"id": 2, "file_name": "000000000002.jpg", "width": 60, "height": 40}, **(extra_image or {}))]
    anns = [{"id": 10, "image_id": 1, "category_id": 1, "keypoints": kps(1), "num_keypoints": 5, "bbox": [2, 3, 30, 30],
             "iscrowd": 0, "area": 900.0, "segmentation": [[2, 3, 32, 3, 32, 33]]},
            {"id": 11, "image_id": 1, "category_id": 1, "keypoints": kps(2), "num_keypoints": 5, "bbox": [20, 3, 30, 30],
             "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 1, "keypoints": kps(0), "num_keypoints": 5, "bbox": [1, 1, 10, 10],
             "iscrowd": 0}]
    return {"info": {}, "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": list(joints), "skeleton": []}]}


def coco_kp_expected(doc):
    doc = streamed(doc)
    anns = doc.get("annotations")
    out = []
    for i, a in enumerate(anns):
        if isinstance(a, dict) and valid_id(a.get("image_id")) and valid_id(a.get("id")):
            out.append(f"{a['image_id']}_{a['id']}")
        else:
            out.append(f"annotations[{i}]")
    return out


COCO_KP_PATHS = [("annotations", 0), *[("annotations", 0, k) for k in
                                        ("id", "image_id", "category_id", "keypoints", "bbox", "iscrowd", "num_keypoints")],
                 ("annotations", 0, "keypoints", 0), ("annotations", 0, "keypoints", 5), ("annotations", 0, "bbox", 1),
                 ("annotations", 2, "keypoints", 3), ("images", 0), ("images", 0, "id"), ("images", 0, "file_name"),
                 ("images", 0, "width"), ("images", 1, "height"), ("categories", 0, "keypoints"), ("categories", 0, "id")]

KP_READERS = {
    "coco": (CocoKeypointsSource, COCO_JOINTS, None),
    "crowdpose": (CrowdPoseSource, CROWDPOSE_JOINTS, {"crowdIndex": 0.5}),
    "aic_coco": (AICSource, AIC_JOINTS, None),
}


@pytest.mark.parametrize("reader", sorted(KP_READERS))
@pytest.mark.parametrize("path", COCO_KP_PATHS, ids=lambda p: ".".join(map(str, p)))
def test_fuzz_coco_style_keypoints(tmp_path, reader, path):
    cls, joints, extra = KP_READERS[reader]
    base = coco_kp_doc(joints, extra)
    (tmp_path / "img").mkdir()
    f = tmp_path / "person_keypoints.json"
    for value in BAD_VALUES:
        doc = mutate(base, path, value)
        f.write_text(json.dumps(doc))
        src = cls({"annotations": str(f), "images": str(tmp_path / "img")})
        rows = list(src.records())
        check_rows(rows, coco_kp_expected(doc))
        # the record the mutation hit is dropped when the value cannot be used
        if path[:2] == ("annotations", 0) and len(path) == 4 and path[2] == "bbox" and value in (NAN, INF, -INF):
            r = next(r for r in rows if r["meta"]["record_id"] == "1_10")
            assert r["drop_class"] == _base.NOT_FINITE and json.loads(r["drop_detail"][0])["field"] == "bbox"


def test_fuzz_coco_keypoints_random_combinations(tmp_path):
    """Many mutations at once, seeded: still no exception and every record accounted for."""
    rng = random.Random(7)
    base = coco_kp_doc(COCO_JOINTS)
    base["annotations"] = [dict(base["annotations"][i % 3], id=100 + i, image_id=1 + i % 2) for i in range(12)]
    f = tmp_path / "k.json"
    for _ in range(60):
        doc = copy.deepcopy(base)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(doc["annotations"]))
            a = doc["annotations"][i]
            if not isinstance(a, dict):
                continue
            key = rng.choice(["id", "image_id", "category_id", "keypoints", "bbox", "iscrowd"])
            val = rng.choice(BAD_VALUES)
            if key in ("keypoints", "bbox") and isinstance(a.get(key), list) and a[key] and rng.random() < 0.5:
                a[key] = list(a[key])
                a[key][rng.randrange(len(a[key]))] = val if val is not DELETE else None
            elif val is DELETE:
                a.pop(key, None)
            else:
                a[key] = val
        # keep annotation ids unique: a duplicate id is a different fault
        seen = set()
        for a in doc["annotations"]:
            if isinstance(a, dict) and valid_id(a.get("image_id")) and valid_id(a.get("id")):
                rid = f"{a['image_id']}_{a['id']}"
                if rid in seen:
                    a["id"] = f"dup{len(seen)}"
                seen.add(f"{a['image_id']}_{a['id']}")
        f.write_text(json.dumps(doc))
        rows = list(CocoKeypointsSource({"annotations": str(f), "images": str(tmp_path)}).records())
        check_rows(rows, coco_kp_expected(doc))


def test_coco_keypoints_specific_faults(tmp_path):
    doc = coco_kp_doc(COCO_JOINTS)
    doc["annotations"][0]["keypoints"] = "0,0,0"
    doc["annotations"][1]["keypoints"][4] = None
    doc["annotations"][2]["bbox"] = [1, NAN, 10, INF]
    doc["images"].append({"file_name": "no-id.jpg", "width": 5, "height": 5})
    doc["images"][1]["file_name"] = None
    doc["annotations"].append({"id": 13, "image_id": 1, "category_id": 1, "iscrowd": 1, "keypoints": [0] * 51,
                               "bbox": [0, 0, 5, 5]})
    f = tmp_path / "k.json"
    f.write_text(json.dumps(doc))
    src = CocoKeypointsSource({"annotations": str(f), "images": str(tmp_path)})
    rows = {r["meta"]["record_id"]: r for r in src.records()}

    def det(rid):
        return json.loads(rows[rid]["drop_detail"][0])

    assert rows["1_10"]["drop_class"] == _base.BAD_FIELD and det("1_10")["field"] == "keypoints"
    assert rows["1_11"]["drop_class"] == _base.BAD_FIELD and det("1_11")["field"] == "keypoints"
    # the image's file_name is null: the image entry is at fault, named as such
    assert rows["2_12"]["drop_class"] == _base.BAD_FIELD and det("2_12")["field"] == "images[].file_name"
    assert rows["1_13"]["drop_class"] == _base.CROWD and det("1_13")["field"] == "iscrowd"
    assert src.stats["images_without_id"] == 1 and src.stats["crowd"] == 1
    assert src.stats["nonstandard_numbers"] == 2  # NaN and Infinity tokens were read, not refused
    for r in rows.values():
        assert det(r["meta"]["record_id"])["file"] == str(f.resolve())
    # a NaN in a box is NOT_FINITE, naming the field
    doc["images"][1]["file_name"] = "000000000002.jpg"
    f.write_text(json.dumps(doc))
    r = {r["meta"]["record_id"]: r for r in CocoKeypointsSource({"annotations": str(f), "images": str(tmp_path)}).records()}
    assert r["2_12"]["drop_class"] == _base.NOT_FINITE and json.loads(r["2_12"]["drop_detail"][0])["field"] == "bbox"
    # include_crowd: the crowd annotation is a record (here without joints)
    r = {r["meta"]["record_id"]: r for r in CocoKeypointsSource({"annotations": str(f), "images": str(tmp_path),
                                                                 "include_crowd": True}).records()}
    assert r["1_13"]["drop_class"] == _base.NO_JOINTS


def test_coco_quirks_images_after_annotations_and_order(tmp_path):
    doc = coco_kp_doc(COCO_JOINTS)
    reordered = {"annotations": doc["annotations"][::-1], "categories": doc["categories"], "images": doc["images"]}
    f = tmp_path / "k.json"
    f.write_text(json.dumps(reordered, indent=1))
    rows = list(CocoKeypointsSource({"annotations": str(f), "images": str(tmp_path)}).records())
    assert [r["meta"]["record_id"] for r in rows] == ["2_12", "1_11", "1_10"]  # file order
    assert all(r["keep"] for r in rows)
    assert rows[1]["meta"]["people"] == [[20.0, 3.0, 30.0, 30.0], [2.0, 3.0, 30.0, 30.0]]
    assert rows[2]["meta"]["bbox"] == [2.0, 3.0, 30.0, 30.0] and rows[0]["meta"]["image_set"] == "coco"


@pytest.mark.parametrize("text,match", [
    ('{"images": [], "annotations": {}, "categories": []}', "field 'annotations' holds an object, expected a list"),
    ('{"images": {}, "annotations": [], "categories": []}', "field 'images' holds an object, expected a list"),
    ('{"images": 5, "annotations": [], "categories": []}', "field 'images' holds a number, expected a list"),
    ('{"annotations": [{"id": 1}], "categories": []}', "has no 'images' field"),
    ('{"images": [{"id": 1}], "categories": []}', "has no 'annotations' field"),
    ('{"images": [{"id": 1}], "annotations": [1], "categories": "person"}', "field 'categories' holds a string"),
    ('[{"id": 1}]', "is not a COCO-style JSON object"),
    ('{"images": [{"id": 1}], "annotations": [1, 2,, 3]}', "is not valid JSON"),
    ('{"images": [{"id": 1}], "annotations": [', "is not valid JSON"),
    ('', "is not valid JSON"),
])
@pytest.mark.parametrize("cls", [CocoKeypointsSource, CrowdPoseSource])
def test_file_structure_faults_are_one_config_error_line(tmp_path, text, match, cls):
    f = tmp_path / "person_keypoints_x.json"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        list(cls({"annotations": str(f), "images": str(tmp_path)}).records())
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg and "source.annotations" in msg


# -- AIC original and MPII -------------------------------------------------------------------------

AIC_ID = "054d9ce9201beffc76e5ff2169d2af2f027002ca"


def aic_doc():
    h = []
    for i in range(14):
        h += [10 + i, 5 + i, [1, 2, 3][i % 3]]
    return [{"url": "http://x/y.jpg", "image_id": AIC_ID,
             "keypoint_annotations": {"human1": list(h), "human2": [12, 12, 1] * 14},
             "human_annotations": {"human1": [5, 2, 40, 30], "human2": [1, 1, 20, 20]}},
            {"url": "http://x/z.jpg", "image_id": "b" * 40, "keypoint_annotations": {"human1": list(h)},
             "human_annotations": {"human1": [5, 2, 40, 30]}}]


def aic_expected(doc):
    out = []
    for i, e in enumerate(streamed(doc)):
        iid = e.get("image_id") if isinstance(e, dict) else None
        if not isinstance(iid, str) or not iid:
            out.append(f"entries[{i}]")
            continue
        kpa, boxes = e.get("keypoint_annotations"), e.get("human_annotations", {})
        if not isinstance(kpa, dict) or not isinstance(boxes, (dict, type(None))):
            out.append(iid)
            continue
        humans = set(kpa) | set(boxes or {})
        out += [f"{iid}_{h}" for h in humans] if humans else [iid]
    return out


AIC_PATHS = [(0,), (0, "image_id"), (0, "keypoint_annotations"), (0, "human_annotations"), (0, "url"),
             (0, "keypoint_annotations", "human1"), (0, "keypoint_annotations", "human1", 0),
             (0, "keypoint_annotations", "human1", 2), (0, "human_annotations", "human2"),
             (0, "human_annotations", "human2", 3), (1, "keypoint_annotations", "human1", 41)]


@pytest.mark.parametrize("path", AIC_PATHS, ids=lambda p: ".".join(map(str, p)))
def test_fuzz_aic_original(tmp_path, path):
    img(tmp_path / "imgs" / f"{AIC_ID}.jpg", 80, 60)
    img(tmp_path / "imgs" / f"{'b' * 40}.jpg", 80, 60)
    f = tmp_path / "aic.json"
    for value in BAD_VALUES:
        doc = mutate(aic_doc(), path, value)
        f.write_text(json.dumps(doc))
        check_rows(list(AICSource({"annotations": str(f), "images": str(tmp_path / "imgs")}).records()),
                   aic_expected(doc))


def mpii_doc():
    joints = [[10.0 + i, 8.0 + i] for i in range(16)]
    return [{"image": "a.jpg", "joints": joints, "joints_vis": [1] * 16, "center": [20, 20], "scale": 0.3},
            {"image": "a.jpg", "joints": [[40.0, 20.0 + i] for i in range(16)], "joints_vis": [1] * 16,
             "center": [40, 30], "scale": 0.2},
            {"image": "b.jpg", "joints": joints, "joints_vis": [1] * 16, "center": [20, 20], "scale": 0.3}]


def mpii_expected(doc):
    out, count = [], {}
    for i, e in enumerate(doc):
        im = e.get("image") if isinstance(e, dict) else None
        if isinstance(im, str) and im:
            out.append(f"{im}_{count.get(im, 0)}")
            count[im] = count.get(im, 0) + 1
        else:
            out.append(f"entries[{i}]")
    return out


MPII_PATHS = [(0,), (0, "image"), (0, "joints"), (0, "joints_vis"), (0, "center"), (0, "scale"), (0, "joints", 3),
              (0, "joints", 3, 1), (0, "joints_vis", 2), (1, "center", 0), (2, "image")]


@pytest.mark.parametrize("path", MPII_PATHS, ids=lambda p: ".".join(map(str, p)))
def test_fuzz_mpii(tmp_path, path):
    img(tmp_path / "images" / "a.jpg", 80, 60)
    img(tmp_path / "images" / "b.jpg", 80, 60)
    f = tmp_path / "mpii.json"
    for value in BAD_VALUES:
        doc = mutate(mpii_doc(), path, value)
        f.write_text(json.dumps(doc))
        check_rows(list(MPIISource({"annotations": str(f), "images": str(tmp_path / "images")}).records()),
                   mpii_expected(doc))


# -- COCO-Stuff --------------------------------------------------------------------------------------

def stuff_doc():
    rle = {"size": [40, 60], "counts": "0"}
    return {"images": [{"id": 1, "file_name": "a.jpg", "width": 60, "height": 40},
                       {"id": 2, "file_name": "b.jpg", "width": 60, "height": 40}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 92, "segmentation": dict(rle)},
                            {"id": 2, "image_id": 1, "category_id": 183, "segmentation": dict(rle)},
                            {"id": 3, "image_id": 2, "category_id": 93, "segmentation": dict(rle)},
                            {"id": 4, "image_id": 2, "category_id": 1, "segmentation": [[1, 1, 20, 1, 20, 20]]}],
            "categories": [{"id": 92, "name": "banner"}, {"id": 93, "name": "blanket"}, {"id": 1, "name": "person"}]}


def stuff_expected(doc):
    out = set()
    for i, a in enumerate(streamed(doc)["annotations"]):
        if isinstance(a, dict) and valid_id(a.get("image_id")):
            out.add(a["image_id"])
        else:
            out.add(f"annotations[0][{i}]")
    return sorted(str(x) for x in out)


STUFF_PATHS = [("annotations", 0), *[("annotations", 0, k) for k in ("id", "image_id", "category_id", "segmentation")],
               ("annotations", 0, "segmentation", "size"), ("annotations", 0, "segmentation", "counts"),
               ("annotations", 3, "segmentation", 0), ("annotations", 3, "segmentation", 0, 2),
               ("annotations", 1, "image_id"), ("images", 0), ("images", 0, "id"), ("images", 0, "file_name"),
               ("images", 1, "width"), ("categories", 0, "name")]


@pytest.mark.parametrize("path", STUFF_PATHS, ids=lambda p: ".".join(map(str, p)))
def test_fuzz_coco_stuff(tmp_path, path):
    (tmp_path / "img").mkdir()
    f = tmp_path / "stuff_val2017.json"
    for value in BAD_VALUES:
        doc = mutate(stuff_doc(), path, value)
        f.write_text(json.dumps(doc))
        check_rows(list(CocoStuffSource({"images": str(tmp_path / "img"), "annotations": [str(f)]}).records()),
                   stuff_expected(doc))


def test_coco_stuff_buckets_group_across_files(tmp_path, monkeypatch):
    """Several grouping buckets (a tiny bucket unit) and two files: one record per image, in image-id
    order, with the segments of both files; the bucket files are removed afterwards."""
    from instructdiffusion_data.readers import coco_stuff

    (tmp_path / "img").mkdir()
    n = 40
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 8, "height": 8} for i in range(1, n + 1)]
    rle = {"size": [8, 8], "counts": "0"}
    stuff = {"images": images, "categories": [],
             "annotations": [{"id": i, "image_id": 1 + (i * 7) % n, "category_id": 92, "segmentation": rle}
                             for i in range(n)]}
    inst = {"images": images, "categories": [],
            "annotations": [{"id": 1000 + i, "image_id": 1 + (i * 3) % n, "category_id": 1,
                             "segmentation": [[0, 0, 4, 0, 4, 4]]} for i in range(n)]}
    (tmp_path / "s.json").write_text(json.dumps(stuff))
    (tmp_path / "i.json").write_text(json.dumps(inst))
    monkeypatch.setattr(coco_stuff, "MB", 1024)  # ~2 kB per bucket: several buckets
    made = []
    real = coco_stuff.tempfile.TemporaryDirectory

    def spy(*a, **k):
        t = real(*a, **k)
        made.append(t.name)
        return t

    monkeypatch.setattr(coco_stuff.tempfile, "TemporaryDirectory", spy)
    src = CocoStuffSource({"images": str(tmp_path / "img"), "bucket_mb": 2,
                           "annotations": [str(tmp_path / "s.json"), str(tmp_path / "i.json")]})
    rows = list(src.records())
    assert [r["meta"]["image_id"] for r in rows] == list(range(1, n + 1))
    assert all(r["keep"] and {s["name"] for s in r["meta"]["segments"]} == {"banner", "person"} for r in rows)
    assert made and not any(__import__("os").path.exists(d) for d in made)


def test_coco_stuff_file_structure(tmp_path):
    f = tmp_path / "stuff.json"
    f.write_text('{"images": [{"id": 1}], "annotations": {"1": []}}')
    with pytest.raises(ConfigError, match=r"source.annotations\[0\]: .*field 'annotations' holds an object"):
        list(CocoStuffSource({"images": str(tmp_path), "annotations": [str(f)]}).records())


# -- RefCOCO / gRefCOCO ------------------------------------------------------------------------------

def ref_files():
    refs = [{"ref_id": 0, "ann_id": 5, "image_id": 9, "split": "train", "category_id": 18,
             "sentences": [{"sent": "left dog", "raw": "Left dog"}], "file_name": "COCO_train2014_000000000009_5.jpg"},
            {"ref_id": 1, "ann_id": 6, "image_id": 9, "split": "val", "category_id": 18, "sentences": [{"sent": "cat"}]},
            {"ref_id": 2, "ann_id": 6, "image_id": 9, "split": "train", "category_id": 18,
             "sentences": [{"sent": "the cat"}, "on the right"]}]
    inst = {"images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 30, "height": 20}],
            "annotations": [{"id": 5, "image_id": 9, "category_id": 18, "segmentation": [[1, 1, 6, 1, 6, 6]]},
                            {"id": 6, "image_id": 9, "category_id": 18, "segmentation": {"size": [20, 30], "counts": "0"}}],
            "categories": [{"id": 18, "name": "dog"}]}
    return refs, inst


def ref_expected(refs, selected=("train",)):
    out, other = [], 0
    for i, r in enumerate(refs):
        if not isinstance(r, dict) or not isinstance(r.get("split"), str):
            out.append(f"refs[{i}]")
        elif r["split"] not in selected:
            other += 1
        elif not valid_id(r.get("ref_id")):
            out.append(f"refs[{i}]")
        else:
            out.append(r["ref_id"])
    return out, other


REF_PATHS = [("refs", 0), *[("refs", 0, k) for k in ("ref_id", "ann_id", "image_id", "split", "sentences")],
             ("refs", 0, "sentences", 0), ("refs", 1, "split"), ("refs", 2, "sentences", 1),
             ("inst", "annotations", 0, "segmentation"), ("inst", "annotations", 0, "segmentation", 0, 3),
             ("inst", "annotations", 1, "segmentation", "size"), ("inst", "annotations", 0, "id"),
             ("inst", "images", 0, "id"), ("inst", "images", 0, "file_name"), ("inst", "images", 0, "height")]


@pytest.mark.parametrize("kind", ["refcoco", "grefcoco"])
@pytest.mark.parametrize("path", REF_PATHS, ids=lambda p: ".".join(map(str, p)))
def test_fuzz_refcoco_and_grefcoco(tmp_path, kind, path):
    (tmp_path / "train2014").mkdir()
    refs_name = "refs(unc).p" if kind == "refcoco" else "grefs(unc).json"
    for value in BAD_VALUES:
        refs, inst = ref_files()
        if kind == "grefcoco":
            for r in refs:
                r["ann_id"] = [r["ann_id"]]
        both = mutate({"refs": refs, "inst": inst}, path, value)
        refs, inst = both["refs"], both["inst"]
        if kind == "refcoco":
            (tmp_path / refs_name).write_bytes(pickle.dumps(refs, protocol=2))
            expected, other = ref_expected(refs)
            cls = RefCocoSource
        else:
            (tmp_path / refs_name).write_text(json.dumps(refs))
            expected, other = ref_expected(streamed(refs))
            cls = GRefCocoSource
        (tmp_path / "instances.json").write_text(json.dumps(inst))
        src = cls({"refs": str(tmp_path / refs_name), "instances": str(tmp_path / "instances.json"),
                   "images": str(tmp_path / "train2014")})
        check_rows(list(src.records()), expected)
        assert src.stats["refs_other_split"] == other  # refs of other splits are counted, not lost


# -- PhraseCut ----------------------------------------------------------------------------------------

def pc_files():
    sq = [[10, 10], [40, 10], [40, 30], [10, 30]]
    tasks = [{"task_id": "9__0", "image_id": 9, "ann_ids": [1], "instance_boxes": [[10, 10, 30, 20]],
              "Polygons": [[sq]], "phrase": "red car", "phrase_structure": {"type": "name"}},
             {"task_id": "9__1", "image_id": 9, "Polygons": [[[[50, 20], [70, 20], [70, 40], [50, 40]]]],
              "phrase": "tree"}]
    images = [{"image_id": 9, "width": 100, "height": 80, "coco_id": 123, "flickr_id": None}]
    return tasks, images


def pc_expected(tasks):
    out = []
    for i, t in enumerate(tasks):
        tid = t.get("task_id") if isinstance(t, dict) else None
        ok = isinstance(tid, (int, str)) and not isinstance(tid, bool) and tid != ""
        out.append(str(tid) if ok else f"val-{i}")
    return out


PC_PATHS = [("tasks", 0), *[("tasks", 0, k) for k in ("task_id", "image_id", "Polygons", "phrase", "ann_ids",
                                                      "instance_boxes", "phrase_structure")],
            ("tasks", 0, "Polygons", 0), ("tasks", 0, "Polygons", 0, 0, 1), ("tasks", 0, "Polygons", 0, 0, 1, 0),
            ("images", 0), ("images", 0, "image_id"), ("images", 0, "width"), ("images", 0, "height")]


@pytest.mark.parametrize("path", PC_PATHS, ids=lambda p: ".".join(map(str, p)))
def test_fuzz_phrasecut(tmp_path, path):
    root = tmp_path / "pc"
    img(root / "images" / "9.jpg", 100, 80)
    for value in BAD_VALUES:
        tasks, images = pc_files()
        both = mutate({"tasks": tasks, "images": images}, path, value)
        (root / "refer_val.json").write_text(json.dumps(both["tasks"]))
        (root / "image_data_split.json").write_text(json.dumps(both["images"]))
        src = pc.PhraseCutSource({"root": str(root), "splits": ["val"], "max_border_frac": 1.0})
        check_rows(list(src.records()), pc_expected(both["tasks"]))


# -- through the engine ---------------------------------------------------------------------------------

def test_fuzzed_file_through_idd_run(tmp_path):
    """A keypoint file full of faults runs to the end with --no-ray: exit 0, every record in the output
    (kept or rejected), the rejected rows' classes counted in the manifest."""
    from instructdiffusion_data.cli import main

    (tmp_path / "img").mkdir()
    for i in (1, 2):
        img(tmp_path / "img" / f"{i:012d}.jpg", 60, 40)
    doc = coco_kp_doc(COCO_JOINTS)
    doc["annotations"] += [{"id": 20, "image_id": 1, "category_id": 1, "keypoints": "bad", "bbox": [1, 1, 1, 1]},
                           {"id": 21, "image_id": 1, "category_id": 1, "keypoints": [1] * 51, "bbox": [NAN, 1, 1, 1]},
                           "not an annotation", {"id": 22, "image_id": 77}]
    f = tmp_path / "k.json"
    f.write_text(json.dumps(doc))
    cfg = tmp_path / "kp.yaml"
    cfg.write_text("name: kpfuzz\nsource: {type: coco_keypoints}\nstages:\n  - {type: render_keypoints}\n"
                   "writer: {records_per_shard: 3}\n")
    rc = main(["run", str(cfg), "--no-ray", "--out", str(tmp_path / "out"), "--set", f"source.annotations={f}",
               "--set", f"source.images={tmp_path / 'img'}"])
    assert rc == 0
    m = json.loads((tmp_path / "out" / "kpfuzz" / "v1" / "manifest.json").read_text())
    reasons = m["splits"]["rejected"]["drop_reasons"]
    assert reasons[_base.BAD_FIELD] == 2 and reasons[_base.NOT_FINITE] == 1 and reasons[_base.UNKNOWN_IMAGE] == 1
    assert m["records"] == len(doc["annotations"])
    assert m["source_stats"]["nonstandard_numbers"] == 1 and m["source_stats"]["annotations"] == 7
    assert math.isfinite(m["splits"]["train"]["rows"])


# -- source.exclude_image_ids in every reader -----------------------------------------------------------

def _excluded_and_kept(rows, is_excluded):
    for r in rows:
        if is_excluded(r):
            assert r["drop_class"] == _base.EXCLUDED, (r["meta"]["record_id"], r["drop_class"])
            assert json.loads(r["drop_detail"][0])["field"]
        else:
            assert r["drop_class"] != _base.EXCLUDED
    assert any(is_excluded(r) for r in rows) and not all(is_excluded(r) for r in rows)


@pytest.mark.parametrize("fmt", ["lines", "json", "single"])
def test_exclude_image_ids_in_every_reader(tmp_path, fmt):
    def ids_file(ids):
        f = tmp_path / f"exclude-{len(list(tmp_path.iterdir()))}.txt"
        if fmt == "json":
            f.write_text(json.dumps(list(ids)))
        elif fmt == "single":
            f.write_text(f"{ids[0]}\n")  # one id alone: still a list of one (not a JSON number)
        else:
            f.write_text("# eval images\n" + "\n".join(map(str, ids)) + "\n")
        return str(f)

    (tmp_path / "img").mkdir()
    # COCO-style keypoints (COCO, CrowdPose, AIC converted)
    for cls, joints in ((CocoKeypointsSource, COCO_JOINTS), (CrowdPoseSource, CROWDPOSE_JOINTS), (AICSource, AIC_JOINTS)):
        f = tmp_path / f"{cls.name}.json"
        f.write_text(json.dumps(coco_kp_doc(joints)))
        rows = list(cls({"annotations": str(f), "images": str(tmp_path / "img"), "exclude_image_ids": ids_file([1])}).records())
        _excluded_and_kept(rows, lambda r: r["meta"]["record_id"].startswith("1_"))
    # AIC original
    img(tmp_path / "imgs" / f"{AIC_ID}.jpg", 80, 60)
    img(tmp_path / "imgs" / f"{'b' * 40}.jpg", 80, 60)
    (tmp_path / "aic.json").write_text(json.dumps(aic_doc()))
    rows = list(AICSource({"annotations": str(tmp_path / "aic.json"), "images": str(tmp_path / "imgs"),
                           "exclude_image_ids": ids_file([AIC_ID])}).records())
    _excluded_and_kept(rows, lambda r: r["meta"]["record_id"].startswith(AIC_ID))
    # MPII (image ids are the image file names)
    img(tmp_path / "images" / "a.jpg", 80, 60)
    img(tmp_path / "images" / "b.jpg", 80, 60)
    (tmp_path / "mpii.json").write_text(json.dumps(mpii_doc()))
    rows = list(MPIISource({"annotations": str(tmp_path / "mpii.json"), "images": str(tmp_path / "images"),
                            "exclude_image_ids": ids_file(["a.jpg"])}).records())
    _excluded_and_kept(rows, lambda r: r["meta"]["record_id"].startswith("a.jpg_"))
    # COCO-Stuff, json and pixel maps
    (tmp_path / "stuff.json").write_text(json.dumps(stuff_doc()))
    rows = list(CocoStuffSource({"images": str(tmp_path / "img"), "annotations": [str(tmp_path / "stuff.json")],
                                 "exclude_image_ids": ids_file([2])}).records())
    _excluded_and_kept(rows, lambda r: r["meta"]["record_id"] == "2")
    (tmp_path / "pm").mkdir()
    for i in (1, 2):
        img(tmp_path / "coco" / f"{i:012d}.jpg", 8, 8)
        (tmp_path / "pm" / f"{i:012d}.png").write_bytes(b"png")
    rows = list(CocoStuffSource({"images": str(tmp_path / "coco"), "pixelmaps": str(tmp_path / "pm"),
                                 "exclude_image_ids": ids_file([2])}).records())
    _excluded_and_kept(rows, lambda r: r["meta"]["record_id"] == "000000000002")
    # RefCOCO (refs(unc).p) and gRefCOCO: one more image so that something stays
    refs, inst = ref_files()
    inst["images"].append({"id": 10, "file_name": "COCO_train2014_000000000010.jpg", "width": 30, "height": 20})
    refs.append(dict(refs[0], ref_id=7, image_id=10))
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (tmp_path / "instances.json").write_text(json.dumps(inst))
    (tmp_path / "grefs(unc).json").write_text(json.dumps([dict(r, ann_id=[r["ann_id"]]) for r in refs]))
    for cls, name in ((RefCocoSource, "refs(unc).p"), (GRefCocoSource, "grefs(unc).json")):
        rows = list(cls({"refs": str(tmp_path / name), "instances": str(tmp_path / "instances.json"),
                         "images": str(tmp_path / "img"), "exclude_image_ids": ids_file([9])}).records())
        _excluded_and_kept(rows, lambda r: r["meta"]["image_id"] == 9)
    # PhraseCut (Visual Genome image ids)
    root = tmp_path / "pc"
    img(root / "images" / "9.jpg", 100, 80)
    img(root / "images" / "10.jpg", 100, 80)
    tasks, images = pc_files()
    tasks.append(dict(tasks[0], task_id="10__0", image_id=10))
    images.append(dict(images[0], image_id=10))
    (root / "refer_val.json").write_text(json.dumps(tasks))
    (root / "image_data_split.json").write_text(json.dumps(images))
    rows = list(pc.PhraseCutSource({"root": str(root), "splits": ["val"], "max_border_frac": 1.0,
                                    "exclude_image_ids": ids_file([9])}).records())
    _excluded_and_kept(rows, lambda r: r["meta"]["record_id"].startswith("9__"))


def test_ref_file_structure_faults(tmp_path):
    (tmp_path / "img").mkdir()
    refs, inst = ref_files()
    (tmp_path / "instances.json").write_text(json.dumps(inst))
    cfg = {"instances": str(tmp_path / "instances.json"), "images": str(tmp_path / "img")}
    (tmp_path / "refs(umd).p").write_bytes(pickle.dumps({"refs": refs}, protocol=2))
    with pytest.raises(ConfigError, match=r"source.refs: .*refs\(umd\).p holds dict, expected a list of refs"):
        list(RefCocoSource({**cfg, "refs": str(tmp_path / "refs(umd).p")}).records())
    (tmp_path / "refs(google).p").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ConfigError, match=r"source.refs: .*refs\(google\).p is not a refs pickle"):
        list(RefCocoSource({**cfg, "refs": str(tmp_path / "refs(google).p")}).records())
    (tmp_path / "grefs(unc).json").write_text(json.dumps({"refs": refs}))
    with pytest.raises(ConfigError, match="must hold a list of refs"):
        list(GRefCocoSource({**cfg, "refs": str(tmp_path / "grefs(unc).json")}).records())
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (tmp_path / "instances.json").write_text(json.dumps({"images": inst["images"], "annotations": {}}))
    with pytest.raises(ConfigError, match="source.instances: .*field 'annotations' holds an object") as e:
        list(RefCocoSource({**cfg, "refs": str(tmp_path / "refs(unc).p")}).records())
    assert "\n" not in str(e.value)


def test_repeated_ids_are_dropped_not_keyed_twice(tmp_path):
    """A repeated annotation / entry / ref / task id would give two rows one key (the writer refuses a
    shard with a repeated key): the second one is a dropped row (``duplicate record id``) under
    ``<id>#<where>``, and the rows' keys stay unique."""
    (tmp_path / "img").mkdir()
    doc = coco_kp_doc(COCO_JOINTS)
    doc["annotations"].append(dict(doc["annotations"][0]))
    (tmp_path / "k.json").write_text(json.dumps(doc))
    src = CocoKeypointsSource({"annotations": str(tmp_path / "k.json"), "images": str(tmp_path / "img")})
    rows = list(src.records())
    assert [r["meta"]["record_id"] for r in rows] == ["1_10", "1_11", "2_12", "1_10#annotations[3]"]
    assert rows[3]["drop_class"] == DUPLICATE_ID and rows[0]["keep"] and src.stats["duplicate_ids"] == 1
    assert len({r["key"] for r in rows}) == 4

    img(tmp_path / "imgs" / f"{AIC_ID}.jpg", 80, 60)
    img(tmp_path / "imgs" / f"{'b' * 40}.jpg", 80, 60)
    a = aic_doc()
    (tmp_path / "aic.json").write_text(json.dumps(a + [a[0]]))
    rows = list(AICSource({"annotations": str(tmp_path / "aic.json"), "images": str(tmp_path / "imgs")}).records())
    assert [r["meta"]["record_id"] for r in rows][-2:] == [f"{AIC_ID}_human1#entries[2]", f"{AIC_ID}_human2#entries[2]"]
    assert {r["drop_class"] for r in rows[-2:]} == {DUPLICATE_ID} and len({r["key"] for r in rows}) == len(rows)

    refs, inst = ref_files()
    refs.append(dict(refs[0]))
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (tmp_path / "instances.json").write_text(json.dumps(inst))
    rows = list(RefCocoSource({"refs": str(tmp_path / "refs(unc).p"), "instances": str(tmp_path / "instances.json"),
                               "images": str(tmp_path / "img")}).records())
    assert [r["meta"]["record_id"] for r in rows] == ["0", "2", "0#refs[3]"] and rows[2]["drop_class"] == DUPLICATE_ID

    root = tmp_path / "pc"
    img(root / "images" / "9.jpg", 100, 80)
    tasks, images = pc_files()
    (root / "refer_val.json").write_text(json.dumps(tasks + [tasks[1]]))
    (root / "image_data_split.json").write_text(json.dumps(images))
    rows = list(pc.PhraseCutSource({"root": str(root), "splits": ["val"], "max_border_frac": 1.0}).records())
    assert [r["meta"]["record_id"] for r in rows] == ["9__0", "9__1", "9__1#val-2"]
    assert rows[2]["drop_class"] == DUPLICATE_ID


def test_input_files_are_the_annotation_files_and_the_exclusion_list(tmp_path):
    """The resume fingerprint covers what decides the records: the annotation files (all of
    COCO-Stuff's list) and source.exclude_image_ids, not every image of the folder."""
    (tmp_path / "img").mkdir()
    for i in range(3):
        img(tmp_path / "img" / f"{i}.jpg", 8, 8)
    (tmp_path / "k.json").write_text(json.dumps(coco_kp_doc(COCO_JOINTS)))
    ex = tmp_path / "ex.txt"
    ex.write_text("1\n")
    src = CocoKeypointsSource({"annotations": str(tmp_path / "k.json"), "images": str(tmp_path / "img"),
                               "exclude_image_ids": str(ex)})
    assert src.input_files() == [str(tmp_path / "k.json"), str(ex)]
    fp = src.inputs_fingerprint(8)[0]
    ex.write_text("1\n2\n")
    assert src.inputs_fingerprint(8)[0] != fp  # a changed exclusion list is a changed input
    (tmp_path / "s.json").write_text(json.dumps(stuff_doc()))
    (tmp_path / "i.json").write_text(json.dumps(stuff_doc()))
    src = CocoStuffSource({"images": str(tmp_path / "img"), "annotations": [str(tmp_path / "s.json"), str(tmp_path / "i.json")]})
    assert src.input_files() == [str(tmp_path / "s.json"), str(tmp_path / "i.json")]
    refs, inst = ref_files()
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (tmp_path / "instances.json").write_text(json.dumps(inst))
    src = RefCocoSource({"refs": str(tmp_path / "refs(unc).p"), "instances": str(tmp_path / "instances.json"),
                         "images": str(tmp_path / "img")})
    assert src.input_files() == [str(tmp_path / "refs(unc).p"), str(tmp_path / "instances.json")]
