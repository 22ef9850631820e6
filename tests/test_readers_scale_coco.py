"""The COCO keypoint reader streams its file: memory is bounded by the compact image index and one
annotation, not by the file (COCO's train2017 keypoint file is 238 MB; ``json.load`` of it takes
several GB). A realistic file (about 0.9 kB per person annotation: 17 keypoint triples, a polygon, box,
area, ids; about two people per image) at 2k and 20k people: the peak traced memory while iterating
the records grows far less than the input (ratio < 2 for 10x the input), and stays far below what
loading the file whole takes."""

from __future__ import annotations

import json
import random
import tracemalloc

import pytest

from instructdiffusion_data.readers.coco_keypoints import COCO_JOINTS, CocoKeypointsSource


def write_coco(path, n_people: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    n_images = max(1, n_people // 2)
    with open(path, "w") as fh:
        fh.write('{"info": {"description": "scale test"}, "licenses": [], "images": [')
        for i in range(1, n_images + 1):
            fh.write(("," if i > 1 else "") + json.dumps(
                {"license": 1, "file_name": f"{i:012d}.jpg", "coco_url": f"http://images.cocodataset.org/x/{i:012d}.jpg",
                 "height": 480, "width": 640, "date_captured": "2013-11-14 16:28:13", "id": i}))
        fh.write('], "annotations": [')
        for a in range(n_people):
            kps = []
            for _ in range(17):
                v = rng.choice((0, 1, 2, 2))
                kps += [rng.randint(0, 639), rng.randint(0, 479), v] if v else [0, 0, 0]
            ann = {"segmentation": [[round(rng.uniform(0, 640), 2) for _ in range(48)]],
                   "num_keypoints": sum(1 for v in kps[2::3] if v), "area": round(rng.uniform(100, 5000), 4),
                   "iscrowd": 0, "keypoints": kps, "image_id": rng.randint(1, n_images),
                   "bbox": [round(rng.uniform(0, 500), 2), round(rng.uniform(0, 300), 2),
                            round(rng.uniform(10, 100), 2), round(rng.uniform(10, 150), 2)],
                   "category_id": 1, "id": 100000 + a}
            fh.write(("," if a else "") + json.dumps(ann))
        fh.write('], "categories": ' + json.dumps([{"supercategory": "person", "id": 1, "name": "person",
                                                    "keypoints": COCO_JOINTS, "skeleton": []}]) + "}")


def peak_while_reading(path, images_dir) -> tuple[int, int]:
    src = CocoKeypointsSource({"annotations": str(path), "images": str(images_dir)})
    tracemalloc.start()
    try:
        n = 0
        for row in src.records():  # consumed one by one, as the engine's split does
            n += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, n


def test_peak_memory_does_not_grow_with_the_file(tmp_path):
    sizes = {}
    for n in (2000, 20000):
        f = tmp_path / f"person_keypoints_{n}.json"
        write_coco(f, n)
        size = f.stat().st_size
        assert 0.8e3 < size / n < 1.1e3  # realistic: about 0.9 kB per annotation
        peak, rows = peak_while_reading(f, tmp_path)
        assert rows == n
        sizes[n] = (size, peak)
    (s_small, p_small), (s_big, p_big) = sizes[2000], sizes[20000]
    ratio = p_big / p_small
    print(f"peak traced memory: 2k people {p_small / 1e6:.1f} MB ({s_small / 1e6:.1f} MB file), "
          f"20k people {p_big / 1e6:.1f} MB ({s_big / 1e6:.1f} MB file), ratio {ratio:.2f}")
    assert ratio < 2.0
    # far below the file itself (json.load holds several times the file size)
    assert p_big < 0.75 * s_big


def test_the_c_backend_streams():
    from instructdiffusion_data.readers._json_stream import ijson_backend

    assert ijson_backend().backend == "yajl2_c"


def test_images_after_annotations_stream_the_same(tmp_path):
    """COCO files written with ``annotations`` before ``images`` read the same records."""
    f = tmp_path / "a.json"
    write_coco(f, 300, seed=1)
    doc = json.loads(f.read_text())
    g = tmp_path / "b.json"
    g.write_text(json.dumps({"annotations": doc["annotations"], "categories": doc["categories"],
                             "images": doc["images"]}))
    a = list(CocoKeypointsSource({"annotations": str(f), "images": str(tmp_path)}).records())
    b = list(CocoKeypointsSource({"annotations": str(g), "images": str(tmp_path)}).records())
    strip = [{k: v for k, v in r["meta"].items() if k not in ("annotation_file",)} for r in a]
    assert strip == [{k: v for k, v in r["meta"].items() if k not in ("annotation_file",)} for r in b]
    assert [r["key"] for r in a] == [r["key"] for r in b] and len(a) == 300


def write_stuff(path, n_anns: int, seed: int = 0) -> None:
    """A COCO-Stuff-like file: about 1 kB per annotation (a compressed RLE string), 8 per image."""
    rng = random.Random(seed)
    n_images = max(1, n_anns // 8)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    with open(path, "w") as fh:
        fh.write('{"images": [' + ",".join(json.dumps({"id": i, "file_name": f"{i:012d}.jpg", "width": 640,
                                                       "height": 480}) for i in range(1, n_images + 1)))
        fh.write('], "annotations": [')
        for a in range(n_anns):
            counts = "".join(rng.choice(letters) for _ in range(900))
            fh.write(("," if a else "") + json.dumps(
                {"id": a, "image_id": rng.randint(1, n_images), "category_id": 92 + a % 90, "iscrowd": 0,
                 "segmentation": {"size": [480, 640], "counts": counts}, "area": 1.0, "bbox": [0, 0, 1, 1]}))
        fh.write('], "categories": []}')


def test_coco_stuff_memory_bounded_by_one_bucket(tmp_path):
    """COCO-Stuff needs every annotation of an image together; the reader groups them through on-disk
    buckets of ``bucket_mb``: memory is one bucket plus the image index, not the file."""
    from instructdiffusion_data.readers.coco_stuff import CocoStuffSource

    peaks = {}
    for n in (1000, 10000):
        f = tmp_path / f"stuff_{n}.json"
        write_stuff(f, n)
        src = CocoStuffSource({"images": str(tmp_path), "annotations": [str(f)], "bucket_mb": 1})
        tracemalloc.start()
        try:
            images = sum(1 for _ in src.records())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert images == n // 8 and src.stats["annotations"] == n
        peaks[n] = (f.stat().st_size, peak)
    (s_small, p_small), (s_big, p_big) = peaks[1000], peaks[10000]
    print(f"COCO-Stuff peak: {p_small / 1e6:.1f} MB ({s_small / 1e6:.1f} MB file) -> {p_big / 1e6:.1f} MB "
          f"({s_big / 1e6:.1f} MB file)")
    assert p_big / p_small < 2.0 and p_big < 0.75 * s_big
