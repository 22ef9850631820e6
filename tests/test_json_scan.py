"""The structural scan of a few fields (readers/_json_scan.py) against the parser it stands in for: for
any file, ``JsonStream.fields`` equals the projection of ``JsonStream.items``; on standard files the scan
itself reads them (no fallback), in windows of any size."""

from __future__ import annotations

import io
import json
import math
import random

import pytest

from instructdiffusion_data.readers._json_scan import ScanUnsupported, scan_fields
from instructdiffusion_data.readers._json_stream import JsonStream

FIELDS = ("id", "image_id", "iscrowd", "bbox")


def _projection(path) -> list:
    return [{f: o[f] for f in FIELDS if f in o} if isinstance(o, dict) else o
            for o in JsonStream(str(path), "x").items("annotations.item")]


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _ann(rng: random.Random, i: int) -> dict:
    a = {"segmentation": [[round(rng.uniform(0, 300), 2) for _ in range(rng.randint(0, 40))]],
         "num_keypoints": rng.randint(0, 17), "area": round(rng.uniform(0, 1e4), 3),
         "iscrowd": rng.choice([0, 0, 0, 1]), "keypoints": [rng.randint(0, 300) for _ in range(51)],
         "image_id": rng.randint(1, 50), "bbox": [round(rng.uniform(0, 300), 2) for _ in range(4)],
         "category_id": 1, "id": 1000 + i}
    if rng.random() < 0.2:  # a crowd RLE: an object nested in the item, with a "size" array
        a["segmentation"] = {"counts": [rng.randint(0, 99) for _ in range(20)], "size": [240, 320]}
    if rng.random() < 0.1:
        del a["bbox"]
    if rng.random() < 0.1:
        a["name"] = "bbox"  # a string value that reads like a wanted name
    if rng.random() < 0.1:
        a["extra"] = {"id": "nested, not the item's", "bbox": [[1, 2]]}
    keys = list(a)
    rng.shuffle(keys)
    return {k: a[k] for k in keys}


def _doc(rng: random.Random, n: int) -> dict:
    return {"info": {"year": 2017, "description": "[not] {an} \"array\"".replace('"', "'")},
            "images": [{"id": k, "file_name": f"{k:012d}.jpg", "width": 320, "height": 240} for k in range(1, 51)],
            "annotations": [_ann(rng, i) for i in range(n)],
            "categories": [{"id": 1, "name": "person"}]}


@pytest.mark.parametrize("dump", [
    {},  # json.dumps defaults: ", " and ": "
    {"separators": (",", ":")},
    {"indent": 2},
    {"indent": "\t", "separators": (" , ", " : ")},
])
@pytest.mark.parametrize("seed", [0, 1])
def test_scan_equals_parse_on_standard_files(tmp_path, dump, seed):
    rng = random.Random(seed)
    p = tmp_path / "a.json"
    p.write_text(json.dumps(_doc(rng, 300), **dump))
    want = _projection(p)
    assert len(want) == 300
    for chunk in (1 << 20, 4096, 700, 97):
        with open(p, "rb") as fh:
            got = list(scan_fields(fh, "annotations", FIELDS, chunk=chunk))  # the scan itself, no fallback
        assert _same(got, want), chunk
    assert _same(list(JsonStream(str(p), "x").fields("annotations", FIELDS)), want)


@pytest.mark.parametrize("text", [
    # not objects, or oddities the scan refuses: the parser's result comes back all the same
    '{"annotations": [1, {"id": 2}, null, [3]]}',
    '{"annotations": [{"id": 1, "bbox": [1,2,3,4]}, 7]}',
    '{"annotations": [{"id": "a\\"b", "image_id": 1}]}',
    '{"annotations": [{"id": 12345678901234567890123, "image_id": 1}]}',
    '{"annotations": [{"id": 1e400, "image_id": NaN, "bbox": [Infinity, 1, 2, -Infinity]}]}',
    '{"annotations": [{"id": 1, "id": 2, "image_id": 3, "image_id": {"x": [1, {"y": 2}]}}]}',
    '{"annotations": [{"id": 1}], "x": 1, "annotations": [{"id": 2}, {"bbox": []}]}',
    '{"annotations": {"id": 1}}',
    '{"annotations": []}',
    '{"images": [], "annotations": [ ]   }',
    '[{"id": 1}]',
    '{"info": "annotations", "annotations": [{"iscrowd": true, "bbox": "1,2"}]}',
])
def test_fields_equal_parse_on_odd_files(tmp_path, text):
    p = tmp_path / "odd.json"
    p.write_text(text)
    try:
        want = _projection(p)
    except Exception as e:  # the parser refuses the file: so must fields (the same error)
        with pytest.raises(type(e)):
            list(JsonStream(str(p), "x").fields("annotations", FIELDS))
        return
    got = list(JsonStream(str(p), "x").fields("annotations", FIELDS))
    assert _same(got, want)
    for g, w in zip(got, want):  # NaN and infinities come back as the parser gives them
        for f in FIELDS:
            if isinstance(w, dict) and isinstance(w.get(f), float) and not math.isfinite(w[f]):
                assert math.isnan(g[f]) == math.isnan(w[f])


def test_scan_refuses_what_it_cannot_read_exactly():
    for text in (b'{"annotations": [{"id": "a\\"b"}]}', b'{"annotations": [1]}', b'[{"id": 1}]',
                 b'{"annotations": [{"id": 12345678901234567890}]}', b'{"annotations": [{"id": 1}'):
        with pytest.raises(ScanUnsupported):
            list(scan_fields(io.BytesIO(text), "annotations", FIELDS, chunk=8))


def test_keypoint_records_unchanged_by_the_scan(tmp_path, monkeypatch):
    """The COCO keypoint reader gives the same records (people boxes, repeated ids) whether its box pass
    runs on the scan or on the parser."""
    from instructdiffusion_data.readers import _json_scan
    from instructdiffusion_data.readers.coco_keypoints import CocoKeypointsSource

    rng = random.Random(3)
    doc = _doc(rng, 120)
    doc["categories"][0]["keypoints"] = ["nose"] * 17
    doc["annotations"].append(dict(doc["annotations"][5]))  # a repeated id
    p = tmp_path / "kp.json"
    p.write_text(json.dumps(doc))
    (tmp_path / "img").mkdir()

    def rows():
        src = CocoKeypointsSource({"annotations": str(p), "images": str(tmp_path / "img")})
        return [(r["key"] if "key" in r else None, r.get("drop_reason"), json.dumps(r.get("meta"), sort_keys=True))
                for r in src.records()]

    fast = rows()

    def refuse(*a, **k):
        raise ScanUnsupported("test")
        yield

    monkeypatch.setattr(_json_scan, "scan_fields", refuse)
    assert rows() == fast
    assert len(fast) == 121
