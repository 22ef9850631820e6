"""PhraseCut reader: demo data, a hand-written record in the release's field layout, selection rules."""

import json
from pathlib import Path

import numpy as np
import pytest

from instructdiffusion_data.demo import phrasecut as demo
from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.imageio import encode_jpeg
from instructdiffusion_data.readers.phrasecut import PhraseCutSource, border_fraction, parse_polygons, polygons_to_mask
from instructdiffusion_data.readers._base import BAD_FIELD, NO_IMAGE_FILE, UNKNOWN_IMAGE
from instructdiffusion_data.readers.phrasecut import NO_POLYGON, TOO_MANY


def _write_release(root: Path, tasks: list, images: list, split: str = "val", files=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    (root / f"refer_{split}.json").write_text(json.dumps(tasks))
    (root / "image_data_split.json").write_text(json.dumps(images))
    for image_id in files if files is not None else [im["image_id"] for im in images]:
        w = next(im["width"] for im in images if im["image_id"] == image_id)
        h = next(im["height"] for im in images if im["image_id"] == image_id)
        (root / "images" / f"{image_id}.jpg").write_bytes(encode_jpeg(np.full((h, w, 3), 128, np.uint8)))
    return root


def detail(row):
    return json.loads(row["drop_detail"][0])


def _square(x, y, s):
    return [[x, y], [x + s, y], [x + s, y + s], [x, y + s]]


def _task(tid, image_id, polygons, phrase="man in red shirt", **extra):
    t = {"task_id": tid, "image_id": image_id, "ann_ids": [1000 + i for i in range(len(polygons))],
         "instance_boxes": [[0, 0, 1, 1] for _ in polygons], "Polygons": polygons, "phrase": phrase,
         "phrase_structure": {"name": "man", "attributes": [], "relation_ids": [],
                              "relation_descriptions": [["in", "red shirt"]], "type": "relation"}}
    t.update(extra)
    return t


IMG = {"image_id": 2339, "width": 100, "height": 80, "url": "https://cs.stanford.edu/people/rak248/VG_100K/2339.jpg",
       "split": "val", "coco_id": None, "flickr_id": 1234}


def test_handwritten_release_record(tmp_path):
    # Two instances, one with two overlapping polygons, one degenerate polygon, and the legacy iob field.
    polys = [[_square(10, 10, 20), _square(20, 20, 20)], [_square(60, 30, 10), [[1, 1], [2, 2]]]]
    tasks = [_task("2339__0", 2339, polys, iob=[[0, 1]], phrase="  man   in red shirt ")]
    root = _write_release(tmp_path / "VGPhraseCut_v0", tasks, [IMG])
    rows = list(PhraseCutSource({"root": str(root), "splits": ["val"], "max_border_frac": 1.0}).records())
    assert len(rows) == 1
    r = rows[0]
    assert r["keep"], r["drop_reason"]
    m = r["meta"]
    assert m["record_id"] == "2339__0" and m["image_id"] == "2339" and m["split"] == "val"
    assert m["file"] == str((root / "images" / "2339.jpg").resolve())
    assert (m["width"], m["height"]) == (100, 80) and m["flickr_id"] == 1234
    assert m["phrase"] == "man in red shirt"
    assert m["phrase_structure"]["relation_descriptions"] == [["in", "red shirt"]]
    assert m["skipped_polygons"] == 1
    mask = polygons_to_mask(m["polygons"], 80, 100)
    # union (not XOR) of the overlapping squares: nothing missing where they overlap
    assert mask[25, 25] == 255 and mask[15, 15] == 255 and mask[35, 35] == 255 and mask[35, 15] == 0
    assert mask[35, 65] == 255
    # fillPoly includes both edges: a square of side 20 covers 21x21 pixels; union = 2*441 - 11*11, + 11*11
    assert np.count_nonzero(mask) == 2 * 441 - 121 + 121
    assert m["region"]["area_frac"] == pytest.approx(np.count_nonzero(mask) / 8000, abs=1e-6)
    assert m["region"]["bbox"][:2] == [10, 10]


def test_bad_records_are_dropped_with_reasons(tmp_path):
    ok = [_square(30, 20, 20)]
    tasks = [
        _task("t-ok", 2339, [ok]),
        _task("t-nopoly", 2339, [[[[1, 1], [2, 2]]]]),  # only a degenerate polygon
        _task("t-badpoint", 2339, [[[[1, "x"], [2, 2], [3, 1]]]]),
        {"task_id": "t-nophrase", "image_id": 2339, "Polygons": [[ok]]},
        _task("t-noimage-entry", 999, [ok]),
        _task("t-missing-file", 77, [ok]),
        "not a task",
    ]
    images = [IMG, dict(IMG, image_id=77)]
    root = _write_release(tmp_path / "pc", tasks, images, files=[2339])
    src = PhraseCutSource({"root": str(root), "splits": ["val"]})
    rows = list(src.records())
    assert len(rows) == len(tasks)  # nothing silently skipped
    by = {r["meta"]["record_id"]: r for r in rows}
    assert by["t-ok"]["keep"]
    assert by["t-nopoly"]["drop_class"] == NO_POLYGON
    assert by["t-badpoint"]["drop_class"] == BAD_FIELD
    assert detail(by["t-badpoint"])["problem"].startswith("instance 0 polygon 0 has a point")
    assert by["t-nophrase"]["drop_class"] == BAD_FIELD and detail(by["t-nophrase"])["field"] == "phrase"
    assert by["t-noimage-entry"]["drop_class"] == UNKNOWN_IMAGE
    assert by["t-missing-file"]["drop_class"] == NO_IMAGE_FILE
    assert by["val-6"]["drop_class"] == BAD_FIELD and detail(by["val-6"])["field"] == "task"
    for r in rows:  # every rejection names its file and record
        if not r["keep"]:
            d = detail(r)
            assert d["file"] and d["record"] == r["meta"]["record_id"]
    assert src.stats == {"tasks": 7, "kept": 1, "dropped": 6}


def test_selection_rules_and_deterministic_cap(tmp_path):
    tasks = [
        _task("tiny", 2339, [[_square(50, 40, 3)]]),  # 0.1% of the image
        _task("huge", 2339, [[_square(0, 0, 79)]]),  # > 50%
        _task("cut", 2339, [[_square(-10, 30, 20)]]),  # half outside the left border
    ] + [_task(f"e{i}", 2339, [[_square(12 + 15 * i, 30, 12)]]) for i in range(5)]
    root = _write_release(tmp_path / "pc", tasks, [IMG])
    cfg = {"root": str(root), "splits": ["val"], "max_per_image": 2}
    rows = list(PhraseCutSource(cfg, seed=3).records())
    by = {r["meta"]["record_id"]: r for r in rows}
    assert by["tiny"]["drop_class"] == "region too small" and detail(by["tiny"])["min"] == 0.01
    assert detail(by["tiny"])["area"] == pytest.approx(16 / 8000)
    assert by["huge"]["drop_class"] == "region too large"
    assert by["cut"]["drop_class"] == "region cut by the image border"
    kept = sorted(r["meta"]["record_id"] for r in rows if r["keep"])
    assert len(kept) == 2 and all(k.startswith("e") for k in kept)
    capped = [r for r in rows if r["drop_class"] == TOO_MANY]
    assert len(capped) == 3 and detail(capped[0])["eligible"] == 5 and detail(capped[0])["max"] == 2
    # reason classes carry no per-record numbers
    assert len({r["drop_class"] for r in capped}) == 1
    # same choice whatever the file order; another seed may choose differently but still 2
    (root / "refer_val.json").write_text(json.dumps(tasks[::-1]))
    again = sorted(r["meta"]["record_id"] for r in PhraseCutSource(cfg, seed=3).records() if r["keep"])
    assert again == kept
    assert len([r for r in PhraseCutSource(cfg, seed=4).records() if r["keep"]]) == 2


def test_border_fraction():
    m = np.zeros((50, 50), np.uint8)
    m[20:30, 20:30] = 255
    assert border_fraction(m) == 0.0
    m[:] = 0
    m[20:30, 0:5] = 255  # a region cut by the left edge: one of its four sides lies on the border
    assert 0.25 < border_fraction(m) < 0.45


def test_parse_polygons_structure_errors():
    assert parse_polygons("x")[2] == "expected a list of instances"
    assert parse_polygons([[[[1, 2], [3, float("nan")], [0, 0]]]])[2].startswith("instance 0 polygon 0")
    polys, skipped, err = parse_polygons([[_square(0, 0, 4), [[0, 0], [1, 1], [2, 2]]]])  # collinear: zero area
    assert err is None and skipped == 1 and len(polys[0]) == 1


def test_config_errors(tmp_path):
    root = _write_release(tmp_path / "pc", [], [IMG])
    with pytest.raises(ConfigError, match="unknown split"):
        PhraseCutSource({"root": str(root), "splits": ["dev"]})
    with pytest.raises(ConfigError, match="refer_train.json"):
        PhraseCutSource({"root": str(root), "splits": ["train"]})
    with pytest.raises(ConfigError, match="source.root"):
        PhraseCutSource({"root": str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match="min_area_frac"):
        PhraseCutSource({"root": str(root), "splits": ["val"], "min_area_frac": 0.6})


def test_demo_data_is_deterministic_and_readable(tmp_path):
    a = demo.generate(tmp_path / "a", 12, 5)
    b = demo.generate(tmp_path / "b", 12, 5)
    assert a["tasks"] == b["tasks"] and a["images"] == 12
    for f in sorted((tmp_path / "a" / "phrasecut").rglob("*")):
        if f.is_file():
            assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f
    root = tmp_path / "a" / "phrasecut"
    rows = list(PhraseCutSource({"root": str(root), "splits": ["train", "val", "test"]}).records())
    assert len(rows) == a["tasks"]  # miniv repeats val tasks and is not read here
    kept = [r for r in rows if r["keep"]]
    assert len(kept) >= 12
    structs = [r["meta"]["phrase_structure"] for r in rows]
    assert {s["type"] for s in structs} == {"name", "attribute", "relation"}
    assert any(s["relation_descriptions"] for s in structs)
    # the polygons are the drawn objects: the image differs from its background under the mask
    from instructdiffusion_data.imageio import decode

    r = kept[0]
    img = decode(Path(r["meta"]["file"]).read_bytes())
    assert img.shape[:2] == (r["meta"]["height"], r["meta"]["width"])
    mask = polygons_to_mask(r["meta"]["polygons"], *img.shape[:2]) > 0
    assert mask.any() and (~mask).any()
