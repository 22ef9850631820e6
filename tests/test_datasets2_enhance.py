"""GoPro, REDS, SIDD and CLWD readers and the enhance_pair stage (same crop for source and target)."""

import cv2
import numpy as np
import pytest

from instructdiffusion_data import imageio
from instructdiffusion_data.demo import clwd as demo_clwd
from instructdiffusion_data.demo import gopro as demo_gopro
from instructdiffusion_data.demo import reds as demo_reds
from instructdiffusion_data.demo import sidd as demo_sidd
from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.instructions import load_templates
from instructdiffusion_data.readers.clwd import CLWDSource
from instructdiffusion_data.readers.gopro import GoProSource
from instructdiffusion_data.readers.reds import REDSSource
from instructdiffusion_data.readers.sidd import SIDDSource
from instructdiffusion_data.shard_tasks import run_stages_local
from instructdiffusion_data.stages.enhance_pair import EnhancePairStage

from .helpers_readers import rows_of


def coord_image(h, w, offset=0):
    """Every pixel tells where it is: R = x % 256, G = y % 256, B = (x // 256) * 16 + y // 256 + offset."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 256, yy % 256, (xx // 256) * 16 + yy // 256 + offset], -1).astype(np.uint8)


def write(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb)


def test_gopro_layout_pairs_and_missing_half(tmp_path):
    root = tmp_path / "GOPRO_Large"
    a = coord_image(40, 60)
    for seq in ("GOPR0372_07_00", "GOPR0868_11_01"):
        for f in ("000047.png", "000048.png"):
            for kind in ("blur", "blur_gamma", "sharp"):
                write(root / "train" / seq / kind / f, a)
    (root / "train" / "GOPR0868_11_01" / "sharp" / "000048.png").unlink()
    write(root / "test" / "GOPR0384_11_00" / "blur" / "000001.png", a)
    rows = rows_of(GoProSource({"root": str(tmp_path), "blur": "blur_gamma"}))  # parent of GOPRO_Large works
    assert [r["meta"]["record_id"] for r in rows] == ["train/GOPR0372_07_00/000047", "train/GOPR0372_07_00/000048",
                                                     "train/GOPR0868_11_01/000047", "train/GOPR0868_11_01/000048"]
    assert rows[0]["task"] == "deblur" and rows[0]["meta"]["file"].endswith("GOPR0372_07_00/blur_gamma/000047.png")
    assert rows[0]["meta"]["target_file"].endswith("GOPR0372_07_00/sharp/000047.png")
    assert [r["keep"] for r in rows] == [True, True, True, False]
    assert rows[3]["drop_class"] == "missing pair half" and rows[3]["meta"]["missing"] == "sharp frame"
    assert "field=target_file" in rows[3]["drop_reason"] and "blur_gamma/000048.png" in rows[3]["drop_reason"]
    assert len(rows_of(GoProSource({"root": str(root), "splits": ["train", "test"]}))) == 5
    with pytest.raises(ConfigError, match="source.splits"):
        GoProSource({"root": str(root), "splits": ["val"]})


def test_reds_layout_both_nestings(tmp_path):
    a = coord_image(20, 30)
    for kind in ("train_blur", "train_sharp"):
        for f in range(3):
            write(tmp_path / "train" / kind / "000" / f"{f:08d}.png", a)
    write(tmp_path / "train" / "train_sharp" / "001" / "00000000.png", a)  # a sharp frame without blurred frame
    rows = rows_of(REDSSource({"root": str(tmp_path)}))
    assert [r["meta"]["record_id"] for r in rows] == ["train/000/00000000", "train/000/00000001", "train/000/00000002",
                                                     "train/001/00000000"]
    assert not rows[3]["keep"] and rows[3]["drop_class"] == "missing pair half"
    assert rows[3]["meta"]["missing"] == "blurred frame" and rows[3]["meta"]["target_file"].endswith("001/00000000.png")
    assert [r["meta"]["record_id"] for r in rows_of(REDSSource({"root": str(tmp_path), "frame_step": 2}))][:2] == [
        "train/000/00000000", "train/000/00000002"]
    # flat layout (train_blur directly under root)
    (tmp_path / "flat").mkdir()
    (tmp_path / "train" / "train_blur").rename(tmp_path / "flat" / "train_blur")
    (tmp_path / "train" / "train_sharp").rename(tmp_path / "flat" / "train_sharp")
    assert len(rows_of(REDSSource({"root": str(tmp_path / "flat")}))) == 4


def test_sidd_upper_case_names_and_scene_meta(tmp_path):
    scene = tmp_path / "SIDD_Medium_Srgb" / "Data" / "0001_001_S6_00100_00060_3200_L"
    a = coord_image(20, 30)
    for cap in ("010", "011"):
        write(scene / f"0001_NOISY_SRGB_{cap}.PNG", a)
        write(scene / f"0001_GT_SRGB_{cap}.PNG", a)
    (scene / "0001_GT_SRGB_011.PNG").unlink()
    (scene / "0001_METADATA_RAW_010.MAT").write_bytes(b"x")  # ignored
    rows = rows_of(SIDDSource({"root": str(tmp_path / "SIDD_Medium_Srgb")}))
    assert [r["meta"]["record_id"] for r in rows] == ["0001_001_S6_00100_00060_3200_L/0001_SRGB_010",
                                                     "0001_001_S6_00100_00060_3200_L/0001_SRGB_011"]
    assert rows[0]["task"] == "denoise" and rows[0]["meta"]["file"].endswith("0001_NOISY_SRGB_010.PNG")
    assert rows[0]["meta"]["target_file"].endswith("0001_GT_SRGB_010.PNG")
    assert (rows[0]["meta"]["smartphone"], rows[0]["meta"]["iso"], rows[0]["meta"]["brightness"]) == ("S6", 100, "L")
    assert not rows[1]["keep"] and rows[1]["drop_class"] == "missing pair half"
    assert rows[1]["meta"]["missing"] == "ground truth image"


def test_clwd_layout_with_mask(tmp_path):
    a = coord_image(32, 32)
    for i in (1, 2, 10):
        write(tmp_path / "train" / "Watermarked_image" / f"{i}.jpg", a)
        write(tmp_path / "train" / "Mask" / f"{i}.png", np.zeros((32, 32), np.uint8))
        if i != 2:
            write(tmp_path / "train" / "Watermark_free_image" / f"{i}.jpg", a)
    rows = rows_of(CLWDSource({"root": str(tmp_path)}))
    assert [r["meta"]["record_id"] for r in rows] == ["train/1", "train/2", "train/10"]  # numeric order
    assert rows[0]["task"] == "dewatermark" and rows[0]["meta"]["mask_file"].endswith("Mask/1.png")
    assert not rows[1]["keep"] and rows[1]["drop_class"] == "missing pair half"
    assert rows[1]["meta"]["missing"] == "watermark-free image" and "record=train/2" in rows[1]["drop_reason"]
    assert "mask_file" not in rows_of(CLWDSource({"root": str(tmp_path), "use_mask": False}))[0]["meta"]


def _pair_record(tmp_path, name, src, tgt, mask=None, task="dewatermark"):
    from instructdiffusion_data.readers._pairs import pair_row

    s, t = tmp_path / f"{name}_s.png", tmp_path / f"{name}_t.png"
    write(s, src)
    write(t, tgt)
    m = None
    if mask is not None:
        m = tmp_path / f"{name}_m.png"
        write(m, mask)
    return pair_row("clwd", task, name, s, t, m)


def test_same_seeded_crop_for_source_target_and_mask(tmp_path):
    h, w = 300, 420
    tgt = coord_image(h, w)
    src = coord_image(h, w, offset=100)  # degraded: same geometry, different values
    mask = ((np.arange(w)[None, :] // 7 + np.arange(h)[:, None] // 5) % 2 * 255).astype(np.uint8)
    recs = [_pair_record(tmp_path, f"p{i}", src, tgt, mask) for i in range(4)]
    st = EnhancePairStage({"crop_size": 64, "crops_per_pair": 2}, seed=3)
    out = run_stages_local([st], recs)
    assert len(out) == 8 and all(r["keep"] for r in out)
    crops = set()
    for r in out:
        x, y, cw, ch = r["meta"]["crop"]
        assert (cw, ch) == (64, 64)
        s, t = imageio.decode(r["src"]), imageio.decode(r["tgt"])
        m = imageio.decode_gray(r["mask"])
        assert s.shape == t.shape == (64, 64, 3) and m.shape == (64, 64)
        np.testing.assert_array_equal(t, tgt[y:y + 64, x:x + 64])  # lossless and at the recorded place
        np.testing.assert_array_equal(s, src[y:y + 64, x:x + 64])  # the source crop is the same region
        np.testing.assert_array_equal(m, mask[y:y + 64, x:x + 64])
        crops.add((x, y))
    assert len(crops) > 1  # crops are random
    again = run_stages_local([EnhancePairStage({"crop_size": 64, "crops_per_pair": 2}, seed=3)], recs)
    assert [(r["key"], r["meta"]["crop"], r["instruction"]) for r in again] == [
        (r["key"], r["meta"]["crop"], r["instruction"]) for r in out]
    other = run_stages_local([EnhancePairStage({"crop_size": 64, "crops_per_pair": 2}, seed=4)], recs)
    assert [r["meta"]["crop"] for r in other] != [r["meta"]["crop"] for r in out]
    assert len({r["key"] for r in out}) == 8


def test_full_resolution_smaller_images_and_templates(tmp_path):
    img = coord_image(50, 70)
    rec = _pair_record(tmp_path, "a", img, img, task="deblur")
    full, = run_stages_local([EnhancePairStage({"crop_size": None})], [rec])
    assert full["meta"]["crop"] == [0, 0, 70, 50] and imageio.decode(full["tgt"]).shape == (50, 70, 3)
    assert full["instruction"].lower() in {t.lower() for t in load_templates("deblur")}
    small, = run_stages_local([EnhancePairStage({"crop_size": 64})], [rec])
    assert small["keep"] and small["meta"]["crop"][2:] == [64, 50]
    strict, = run_stages_local([EnhancePairStage({"crop_size": 64, "allow_smaller": False})], [rec])
    assert not strict["keep"] and "smaller than crop_size" in strict["drop_reason"]
    for task in ("deblur", "denoise", "dewatermark"):
        assert len(set(load_templates(task))) >= 10
    with pytest.raises(ConfigError, match="crop_size"):
        EnhancePairStage({"crop_size": 2})


def test_bad_pairs_dropped_with_reason_and_batch_continues(tmp_path):
    good = _pair_record(tmp_path, "good", coord_image(40, 40), coord_image(40, 40))
    mism = _pair_record(tmp_path, "mism", coord_image(40, 40), coord_image(30, 40))
    corrupt = _pair_record(tmp_path, "corrupt", coord_image(40, 40), coord_image(40, 40))
    open(corrupt["meta"]["target_file"], "wb").write(b"\x89PNG not really")
    gone = _pair_record(tmp_path, "gone", coord_image(40, 40), coord_image(40, 40))
    import os

    os.unlink(gone["meta"]["file"])
    from instructdiffusion_data.readers._pairs import pair_row

    half = pair_row("clwd", "dewatermark", "half", tmp_path / "good_s.png", None)
    out = {r["meta"]["record_id"]: r for r in run_stages_local([EnhancePairStage({"crop_size": 32})],
                                                                [good, mism, corrupt, gone, half])}
    assert out["good"]["keep"]
    assert "size mismatch" in out["mism"]["drop_reason"] and "40x30" in out["mism"]["drop_reason"]
    assert "image is corrupt" in out["corrupt"]["drop_reason"]
    assert "image file missing" in out["gone"]["drop_reason"]
    assert out["half"]["drop_class"] == "missing pair half"  # dropped by the reader, passed through
    assert len(out) == 5


@pytest.mark.parametrize("demo,make,crop", [
    (demo_gopro, lambda d: GoProSource({"root": str(d / "gopro/GOPRO_Large")}), None),
    (demo_reds, lambda d: REDSSource({"root": str(d / "reds")}), 64),
    (demo_sidd, lambda d: SIDDSource({"root": str(d / "sidd/SIDD_Medium_Srgb")}), 128),
    (demo_clwd, lambda d: CLWDSource({"root": str(d / "clwd")}), 256),  # CLWD images are 256x256
])
def test_demo_degradations_are_real(tmp_path, demo, make, crop):
    demo.generate(tmp_path, 16, 0)
    out = run_stages_local([EnhancePairStage({"crop_size": crop})], rows_of(make(tmp_path)))
    kept = [r for r in out if r["keep"]]
    assert kept and len(out) - len(kept) <= 1
    for r in kept[:3]:
        s, t = imageio.decode(r["src"]).astype(np.float32), imageio.decode(r["tgt"]).astype(np.float32)
        assert np.abs(s - t).max() > 20  # the degraded half differs from the clean one
        if r["task"] == "deblur":  # blur removes high frequencies: less Laplacian energy in the source
            lap = lambda a: cv2.Laplacian(cv2.cvtColor(a.astype(np.uint8), cv2.COLOR_RGB2GRAY), cv2.CV_32F).var()
            assert lap(s) < 0.7 * lap(t)
        if r["task"] == "dewatermark":
            m = imageio.decode_gray(r["mask"]) > 0
            diff = np.abs(s - t).max(-1)
            assert diff[m].mean() > 5 * max(diff[~m].mean(), 0.5)  # the change sits under the mask
