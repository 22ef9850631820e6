"""SA-1B and OpenImages region readers against hand-made records in the published layouts."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.imageio import encode_jpeg
from instructdiffusion_data.replace.regions import RegionSelect, region_mask

from .helpers_readers import rows_of


def _rle(m: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def _sa1b_folder(tmp_path):
    h, w = 60, 80
    img = np.zeros((h, w, 3), np.uint8)
    obj = np.zeros((h, w), np.uint8)
    obj[10:30, 20:50] = 1  # 600 px = 12.5 %
    tiny = np.zeros((h, w), np.uint8)
    tiny[40:43, 40:43] = 1  # 9 px
    edge = np.zeros((h, w), np.uint8)
    edge[0:20, 60:80] = 1  # touches the border
    lowq = np.zeros((h, w), np.uint8)
    lowq[35:55, 5:25] = 1
    anns = []
    for i, (m, piou, stab) in enumerate([(obj, 0.95, 0.97), (tiny, 0.99, 0.99), (edge, 0.95, 0.97),
                                         (lowq, 0.70, 0.97)]):
        ys, xs = np.nonzero(m)
        anns.append({"id": 100 + i, "segmentation": _rle(m), "area": int(m.sum()),
                     "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                              float(ys.max() - ys.min() + 1)],
                     "predicted_iou": piou, "stability_score": stab, "point_coords": [[float(xs[0]), float(ys[0])]],
                     "crop_box": [0.0, 0.0, float(w), float(h)]})
    anns.append({"id": 999, "area": 5})  # no segmentation: a broken annotation
    d = tmp_path / "sa_000000"
    d.mkdir(parents=True)
    (d / "sa_7.jpg").write_bytes(encode_jpeg(img))
    (d / "sa_7.json").write_text(json.dumps({"image": {"image_id": 7, "width": w, "height": h, "file_name": "sa_7.jpg"},
                                             "annotations": anns}))
    (d / "sa_8.json").write_text("{not json")
    return tmp_path, obj


def test_sa1b_reader_decodes_rle_and_keeps_every_region_with_its_reason(tmp_path):
    from instructdiffusion_data.readers.sa1b import SOURCE

    root, obj = _sa1b_folder(tmp_path)
    src = SOURCE({"root": str(root), "select": {"min_predicted_iou": 0.88, "min_area_frac": 0.01}})
    items = list(src.items())  # one item per image, listed by name: [json, jpg] (sa_8 has no jpg)
    assert [[p.rsplit("/", 1)[-1] for p in i] for i in items] == [["sa_7.json", "sa_7.jpg"], ["sa_8.json"]]
    rows = rows_of(src)
    by_id = {r["meta"]["record_id"]: r for r in rows}
    assert set(by_id) == {"7:100", "7:101", "7:102", "7:103", "7:999", "sa_8"}
    good = by_id["7:100"]
    assert good["keep"] and good["task"] == "edit_replace" and good["dataset"] == "sa1b"
    assert good["meta"]["width"] == 80 and good["meta"]["file"].endswith("sa_7.jpg")
    np.testing.assert_array_equal(region_mask(good["meta"]["region"], 60, 80), obj)
    assert good["meta"]["region"]["bbox"] == [20, 10, 30, 20]
    assert good["meta"]["region"]["area_frac"] == pytest.approx(600 / 4800)
    assert by_id["7:101"]["drop_class"] == "region area_frac<0.01"
    assert by_id["7:102"]["drop_class"] == "region touches image border"
    assert by_id["7:103"]["drop_class"] == "region predicted_iou<0.88"
    for rid in ("7:101", "7:102", "7:103"):  # dropped before pixels: ids, file, reason, no RLE
        assert "mask" not in by_id[rid]["meta"]["region"] and by_id[rid]["meta"]["file"].endswith("sa_7.jpg")
    assert by_id["7:999"]["drop_class"] == "bad field" and "field=segmentation" in by_id["7:999"]["drop_reason"]
    assert by_id["sa_8"]["drop_class"] == "annotation file is not valid JSON" and not by_id["sa_8"]["keep"]
    assert by_id["sa_8"]["meta"]["file"].endswith("sa_8.json")


def test_sa1b_per_image_cap_keeps_the_largest(tmp_path):
    from instructdiffusion_data.readers.sa1b import SOURCE

    root, _ = _sa1b_folder(tmp_path)
    rows = rows_of(SOURCE({"root": str(root), "select": {"min_area_frac": 0.0, "border": "allow",
                                                          "max_per_image": 2}}))
    kept = sorted(r["meta"]["record_id"] for r in rows if r["keep"])
    # areas: 100 -> 600, 102 -> 400, 103 -> 400 (tie: first wins), 101 -> 9
    assert kept == ["7:100", "7:102"]
    assert {r["meta"]["record_id"]: r["drop_class"] for r in rows}["7:103"] == "region over per-image cap (2)"


def _openimages_root(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    image_id = "0a1b2c3d4e5f6789"
    h, w = 40, 64
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / f"{image_id}.jpg").write_bytes(encode_jpeg(np.zeros((h, w, 3), np.uint8)))
    # masks are published at another resolution: 20 x 32 here, half the image
    small = np.zeros((20, 32), np.uint8)
    small[5:15, 8:20] = 255
    _ok, png = cv2.imencode(".png", small)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{image_id}_m0bt9lr_aaaa1111.png", png.tobytes())
    (tmp_path / "validation-masks-0.zip").write_bytes(buf.getvalue())
    for hexd in "123456789abcdef":
        with zipfile.ZipFile(tmp_path / f"validation-masks-{hexd}.zip", "w"):
            pass
    with open(tmp_path / "validation-annotations-object-segmentation.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax",
                     "PredictedIoU", "Clicks"])
        wr.writerow([f"{image_id}_m0bt9lr_aaaa1111.png", image_id, "/m/0bt9lr", "aaaa1111", "0.25", "0.625",
                     "0.25", "0.75", "0.9", "0.3 0.4 1"])
        wr.writerow([f"{image_id}_m01yrx_bbbb2222.png", image_id, "/m/01yrx", "bbbb2222", "0.1", "0.2",
                     "0.1", "0.2", "", ""])  # its PNG is not in the zip
    (tmp_path / "class-descriptions-boxable.csv").write_text("/m/0bt9lr,Dog\n/m/01yrx,Cat\n")
    return tmp_path, image_id


def test_openimages_reader_reads_masks_from_the_zip(tmp_path):
    from instructdiffusion_data.readers.openimages import SOURCE

    root, image_id = _openimages_root(tmp_path)
    src = SOURCE({"root": str(root), "select": {"min_area_frac": 0.01}})
    items = list(src.items())  # one item per mask archive (16), each with the csv and the class names
    assert [i[0].rsplit("/", 1)[-1] for i in items] == [f"validation-masks-{h}.zip" for h in "0123456789abcdef"]
    assert all(i[1].endswith("validation-annotations-object-segmentation.csv") for i in items)
    rows = [r for r in rows_of(src) if r["drop_class"] != "input produced no records"]  # archives 1-f hold no rows
    assert [r["meta"]["record_id"] for r in rows] == [f"{image_id}:aaaa1111", f"{image_id}:bbbb2222"]  # csv order
    dog, cat = rows
    assert dog["keep"] and dog["meta"]["region"]["label"] == "Dog" and dog["meta"]["region"]["label_id"] == "/m/0bt9lr"
    m = region_mask(dog["meta"]["region"], 40, 64)
    assert m.shape == (40, 64) and m[10:30, 16:40].all() and m.sum() == 20 * 24  # resized x2, nearest
    assert dog["meta"]["region"]["bbox"] == [16, 10, 24, 20]
    assert dog["meta"]["region"]["predicted_iou"] == pytest.approx(0.9)
    assert dog["meta"]["region"]["mask"]["zip"].endswith("validation-masks-0.zip")
    assert not cat["keep"] and cat["drop_class"] == "mask PNG not in archive"
    assert "field=MaskPath" in cat["drop_reason"] and "validation-masks-0.zip" in cat["drop_reason"]
    assert not (root / "validation" / f"{image_id}_m0bt9lr_aaaa1111.png").exists()  # nothing extracted


def test_openimages_v7_class_file_with_header_and_missing_paths(tmp_path):
    from instructdiffusion_data.readers.openimages import SOURCE, load_class_names

    root, _ = _openimages_root(tmp_path)
    (root / "v7.csv").write_text("LabelName,DisplayName\n/m/0bt9lr,Dog\n")
    assert load_class_names(root / "v7.csv") == {"/m/0bt9lr": "Dog"}
    with pytest.raises(ConfigError, match="source.segmentation_csv"):
        SOURCE({"root": str(root), "split": "train"})


def test_region_select_rules_in_order():
    from instructdiffusion_data.replace.regions import region_reasons

    regs = [{"area_frac": 0.2, "bbox": [10, 10, 20, 20], "predicted_iou": 0.9, "stability_score": 0.5},
            {"area_frac": 0.9, "bbox": [10, 10, 20, 20]},
            {"area_frac": 0.1, "bbox": [10, 10, 20, 20], "predicted_iou": None}]
    r = region_reasons(regs, 100, 100, RegionSelect(min_stability=0.9, max_per_image=0))
    assert r == ["region stability_score<0.9", "region area_frac>0.6", None]


def test_sa1b_image_whose_regions_all_fail_keeps_ids_not_rle(tmp_path):
    from instructdiffusion_data.readers.sa1b import SOURCE

    root, _ = _sa1b_folder(tmp_path)
    rows = rows_of(SOURCE({"root": str(root), "select": {"min_area_frac": 0.9}}))
    regions = [r for r in rows if r["meta"].get("image_id") == "7"]
    assert len(regions) == 5 and not any(r["keep"] for r in regions)
    for r in regions:
        assert r["drop_class"] and "record=" in r["drop_reason"] and r["meta"]["record_id"].startswith("7:")
        assert r["meta"]["file"].endswith(("sa_7.jpg", "sa_7.json"))
        assert "rle" not in json.dumps(r["meta"])  # dropped before pixels: no mask payload in the sidecar


def test_region_readers_exclude_image_ids(tmp_path):
    from instructdiffusion_data.readers.openimages import SOURCE as OI
    from instructdiffusion_data.readers.sa1b import SOURCE as SA

    root, _ = _sa1b_folder(tmp_path / "sa")
    (tmp_path / "ex.txt").write_text("7\n0a1b2c3d4e5f6789\n")
    rows = rows_of(SA({"root": str(root), "exclude_image_ids": str(tmp_path / "ex.txt")}))
    assert {r["drop_class"] for r in rows if r["meta"].get("image_id") == "7"} == {
        "image excluded (source.exclude_image_ids)"}
    oi_root, image_id = _openimages_root(tmp_path / "oi")
    rows = [r for r in rows_of(OI({"root": str(oi_root), "exclude_image_ids": str(tmp_path / "ex.txt")}))
            if r["meta"].get("image_id") == image_id]
    assert len(rows) == 2 and {r["drop_class"] for r in rows} == {"image excluded (source.exclude_image_ids)"}
