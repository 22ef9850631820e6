"""The quality_filter stage on real pixels: scores in meta, named rules, edit checks, no resurrection."""

import base64
import json

import cv2
import numpy as np
import pytest

from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.imageio import encode_jpeg, encode_png
from instructdiffusion_data.models import classical_quality as cq
from instructdiffusion_data.shard_tasks import run_stages_local
from instructdiffusion_data.schema import new_row
from instructdiffusion_data.stages.quality_filter import QualityFilter
from tests.helpers_quality import removal_pair, scene


def _classes(row):
    """The drop classes of a row, in order (drop_detail), e.g. ["aesthetic_tgt below minimum"]."""
    return [json.loads(d)["class"] for d in row.get("drop_detail") or []]


def _detail(row, cls):
    return next(json.loads(d) for d in row["drop_detail"] if json.loads(d)["class"] == cls)


def _row(key, src, tgt, mask, task="edit_remove", **kw):
    return new_row(key=key, task=task, dataset="t", src=encode_jpeg(src), tgt=encode_jpeg(tgt), mask=encode_png(mask),
                   instruction="x", **kw)


def test_removal_rows_scored_and_named(tmp_path):
    good = removal_pair(1)
    blurred = removal_pair(1, blur=4.0)
    moved_bg = removal_pair(1, touch_background=True)
    src, _, mask = good
    rows = [
        _row("good", *good),
        _row("blurred", *blurred),
        _row("bg", *moved_bg),
        _row("nochange", src, src, mask),
        _row("earlier", src, src, mask, keep=False, drop_reason="inpaint: error"),
        new_row(key="other", task="keypoint", dataset="t", src=encode_jpeg(src), tgt=encode_jpeg(src)),
    ]
    st = QualityFilter({"tasks": ["edit_remove"], "aesthetic_tgt_min": 7.0, "aesthetic_diff_max": 1.0,
                        "edit_change_min": 4.0, "background_change_max": 3.0})
    out = {r["key"]: r for r in run_stages_local([st], rows)}
    sc = {k: r["meta"].get("scores", {}) for k, r in out.items()}
    assert out["good"]["keep"] and out["good"]["drop_reason"] is None
    assert sc["good"]["edit_change"] > 20 and sc["good"]["background_change"] < 1.5
    assert sc["good"]["aesthetic_tgt"] > sc["blurred"]["aesthetic_tgt"]
    assert out["blurred"]["keep"] is False
    # the class names the rule, the same text for every row; score and threshold are details
    assert out["blurred"]["drop_class"] == "aesthetic_tgt below minimum"
    assert {"aesthetic_tgt below minimum", "aesthetic_diff above maximum"} <= set(_classes(out["blurred"]))
    d = _detail(out["blurred"], "aesthetic_tgt below minimum")
    assert d["threshold"] == 7.0 and d["value"] == pytest.approx(sc["blurred"]["aesthetic_tgt"], abs=1e-5)
    assert _classes(out["bg"]) == ["background_change above maximum"]
    assert out["bg"]["drop_reason"].startswith("background_change above maximum (value=")
    assert sc["bg"]["background_change"] > 3.0
    assert _classes(out["nochange"]) == ["edit_change below minimum"]
    assert _detail(out["nochange"], "edit_change below minimum")["threshold"] == 4.0
    # a row dropped earlier is scored for auditors, keeps its reason, is never resurrected
    assert out["earlier"]["keep"] is False and out["earlier"]["drop_reason"] == "inpaint: error"
    flt = out["earlier"]["meta"]["filter"]
    assert flt["prior_drop"] == "inpaint: error" and "edit_change below minimum" in flt["failed"]
    # out of scope: untouched
    assert "scores" not in out["other"]["meta"] and out["other"]["keep"]
    # thresholds recorded, meta survives the trip through JSON
    good_flt = json.loads(json.dumps(out["good"]["meta"]))["filter"]
    assert good_flt["thresholds"]["aesthetic_tgt_min"] == 7.0 and good_flt["profile"] == "weightfree"
    assert good_flt["failed"] == [] and good_flt["prior_drop"] is None
    assert good_flt["thresholds"]["giqa_tgt_min"] is None  # no reference: GIQA rules off


@pytest.mark.ml  # faiss
def test_giqa_rules_with_reference_percentile(tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    for i in range(24):
        (ref / f"{i}.jpg").write_bytes(encode_jpeg(scene(200 + i)))
    src, tgt, mask = removal_pair(3)
    noise = np.random.default_rng(0).integers(0, 256, tgt.shape, dtype=np.uint8)
    rows = [_row("ok", src, tgt, mask), _row("noise", src, noise, mask)]
    st = QualityFilter({"giqa_reference": str(ref), "giqa_tgt_min": "ref:p5", "aesthetic_tgt_min": None,
                        "aesthetic_diff_max": None, "background_change_max": None, "edit_change_min": None})
    out = {r["key"]: r for r in run_stages_local([st], rows)}
    p5 = out["ok"]["meta"]["filter"]["giqa_reference"]["percentiles"]["p5"]
    assert out["ok"]["meta"]["filter"]["thresholds"]["giqa_tgt_min"] == pytest.approx(p5, abs=1e-4)
    assert out["ok"]["meta"]["scores"]["giqa_tgt"] > out["noise"]["meta"]["scores"]["giqa_tgt"]
    assert out["noise"]["keep"] is False and out["noise"]["drop_class"] == "giqa_tgt below minimum"
    assert _detail(out["noise"], "giqa_tgt below minimum")["threshold"] == pytest.approx(p5, abs=1e-4)
    assert out["ok"]["keep"]


def test_replacement_reference_check(tmp_path):
    src = scene(5)
    mask = np.zeros(src.shape[:2], np.uint8)
    mask[40:120, 60:160] = 255
    patch = np.zeros((80, 100, 3), np.uint8)
    patch[:] = (20, 200, 40)
    cv2.circle(patch, (50, 40), 25, (250, 250, 20), -1)
    tgt = src.copy()
    tgt[40:120, 60:160] = patch  # the region became the reference
    ref_file = tmp_path / "ref.png"
    ref_file.write_bytes(encode_png(np.pad(patch, ((10, 10), (5, 5), (0, 0)))))
    good_meta = {"reference": {"file": str(ref_file), "bbox": [5, 10, 100, 80]}}
    b64_meta = {"reference": {"patch_png_b64": base64.b64encode(encode_png(patch)).decode()}}
    rows = [
        _row("good", src, tgt, mask, task="edit_replace", meta=good_meta),
        _row("good64", src, tgt, mask, task="edit_replace", meta=b64_meta),
        _row("unchanged", src, src, mask, task="edit_replace", meta=good_meta),
        _row("noref", src, tgt, mask, task="edit_replace", meta={}),
    ]
    st = QualityFilter({"aesthetic_tgt_min": None, "aesthetic_diff_max": None, "edit_change_min": None,
                        "replace_gain_min": 0.05})
    out = {r["key"]: r for r in run_stages_local([st], rows)}
    assert out["good"]["meta"]["scores"]["replace_gain"] > 0.05 and out["good"]["keep"]
    assert out["good64"]["meta"]["scores"]["replace_gain"] == pytest.approx(
        out["good"]["meta"]["scores"]["replace_gain"], abs=1e-3)
    assert _classes(out["unchanged"]) == ["replace_gain below minimum"]
    assert "replace_gain" not in out["noref"]["meta"]["scores"] and out["noref"]["keep"]
    assert any("no reference" in s for s in out["noref"]["meta"]["filter"]["skipped"])


def test_config_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="aesthetic_weights: required"):
        QualityFilter({"profile": "clip"})
    with pytest.raises(ConfigError, match="giqa_reference: path not found"):
        QualityFilter({"giqa_reference": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="giqa_tgt_min"):
        QualityFilter({"giqa_tgt_min": "lots"})


@pytest.mark.ml
def test_clip_profile_end_to_end(tmp_path):
    """profile clip: tiny open_clip from a config + a LAION-layout head, both loaded from files."""
    torch = pytest.importorskip("torch")
    open_clip = pytest.importorskip("open_clip")
    from tests.test_quality_models import MLP_LAYOUT, TINY_CLIP, _checkpoint

    cfg = tmp_path / "idd-test-tiny-clip2.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(1)
    torch.save(open_clip.create_model("idd-test-tiny-clip2").state_dict(), tmp_path / "clip.pt")
    head, _ = _checkpoint(tmp_path, MLP_LAYOUT, "head.pth")
    refdir = tmp_path / "ref"
    refdir.mkdir()
    for i in range(8):
        (refdir / f"{i}.jpg").write_bytes(encode_jpeg(scene(300 + i)))
    st = QualityFilter({"profile": "clip", "clip_model": "idd-test-tiny-clip2", "clip_pretrained": str(tmp_path / "clip.pt"),
                        "clip_model_config": str(cfg), "aesthetic_weights": str(head), "giqa_reference": str(refdir),
                        "giqa_tgt_min": None, "aesthetic_tgt_min": None, "aesthetic_diff_max": None,
                        "store_embeddings": True})
    out = run_stages_local([st], [_row("a", *removal_pair(2)), _row("b", *removal_pair(4, blur=2))])
    for r in out:
        sc = r["meta"]["scores"]
        assert {"aesthetic_src", "aesthetic_tgt", "giqa_src", "giqa_tgt"} <= set(sc)
        assert r["meta"]["filter"]["scorers"]["aesthetic"] == "laion-aesthetic-mlp:head.pth"
        assert set(r["meta"]["clip"]["idd-test-tiny-clip2:clip.pt"]) == {"src", "tgt"}
    assert out[0]["meta"]["scores"]["aesthetic_tgt"] != out[1]["meta"]["scores"]["aesthetic_tgt"]


def test_classical_score_ranks_sharp_above_blurred():
    for seed in range(3):
        sharp = scene(seed, 240, 320)
        blurred = cv2.GaussianBlur(sharp, (0, 0), 3)
        noisy = np.clip(sharp + np.random.default_rng(seed).normal(0, 25, sharp.shape), 0, 255).astype(np.uint8)
        s, b, n = cq.quality_score(sharp), cq.quality_score(blurred), cq.quality_score(noisy)
        assert 0 <= b < s <= 10
        assert n < s
    m = cq.measure(np.full((64, 64, 3), 128, np.uint8))
    assert m.colourfulness == pytest.approx(0.0) and m.laplacian_var == pytest.approx(0.0)
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    assert cq.measure(noise).subscores()["noise"] == 0.0


def test_reference_patch_alpha_is_its_mask(tmp_path):
    """The reference contract: meta["reference"] decoded in one place (an RGBA patch's alpha is its mask)."""
    from instructdiffusion_data.contracts import NEUTRAL, ReferencePatch
    from instructdiffusion_data.errors import RecordError

    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = (255, 0, 0)
    rgba[5:15, 10:20] = (0, 200, 0, 255)  # the object; outside it alpha = 0
    _, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    meta = {"reference": {"patch_png_b64": base64.b64encode(buf.tobytes()).decode(), "label": "cup", "rank": 1}}
    ref = ReferencePatch.from_meta(meta)
    img = ref.rgb(NEUTRAL)
    assert img.shape == (20, 30, 3)
    assert tuple(img[10, 15]) == (0, 200, 0) and tuple(img[0, 0]) == NEUTRAL
    assert ref.to_meta() == meta["reference"]  # what is read is what was written
    # a file with a bbox crop
    (tmp_path / "r.png").write_bytes(encode_png(np.full((40, 50, 3), 90, np.uint8)))
    crop = ReferencePatch.from_meta({"reference": {"file": str(tmp_path / "r.png"), "bbox": [45, 30, 20, 20]}}).rgb()
    assert crop.shape == (10, 5, 3)
    assert ReferencePatch.from_meta({}) is None
    with pytest.raises(RecordError, match="image file missing"):
        ReferencePatch.from_meta({"reference": {"file": str(tmp_path / "missing.png")}}).rgb()
    with pytest.raises(RecordError) as e:
        ReferencePatch.from_meta({"reference": {"patch_png_b64": "not base64!"}}).rgb()
    assert e.value.field == "reference.patch_png_b64"
    with pytest.raises(RecordError) as e:
        ReferencePatch.from_meta({"reference": {"file": "x.png", "bbox": [1, 2]}})
    assert e.value.field == "reference.bbox"


def test_a_bad_image_drops_only_its_row():
    src, tgt, mask = removal_pair(6)
    bad = _row("corrupt", src, tgt, mask)
    bad["tgt"] = b"\xff\xd8 truncated"
    tiny = _row("tiny", src, tgt, mask)
    tiny["tgt"] = encode_png(np.zeros((2, 2, 3), np.uint8))
    out = {r["key"]: r for r in run_stages_local([QualityFilter({})], [_row("fine", src, tgt, mask), bad, tiny])}
    assert out["fine"]["keep"] and "aesthetic_tgt" in out["fine"]["meta"]["scores"]
    assert out["corrupt"]["keep"] is False and out["corrupt"]["drop_reason"].startswith("quality_filter: image is corrupt")
    assert out["tiny"]["drop_reason"].startswith("quality_filter: image too small to score")


@pytest.mark.ml  # faiss
def test_giqa_reference_source_uses_each_rows_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        (folder / f"{i}.jpg").write_bytes(encode_jpeg(scene(400 + i)))
    src, tgt, mask = removal_pair(8)
    (folder / "own.jpg").write_bytes(encode_jpeg(src))
    rows = [_row("a", src, tgt, mask, meta={"file": str(folder / "own.jpg")}),
            _row("nofile", src, tgt, mask)]
    st = QualityFilter({"giqa_reference": "source", "giqa_own_radius": 0.05, "giqa_tgt_min": "ref:p5"})
    out = {r["key"]: r for r in run_stages_local([st], rows)}
    flt = out["a"]["meta"]["filter"]
    assert flt["giqa_reference"]["reference"] == str(folder) and flt["giqa_reference"]["count"] == 13
    assert flt["thresholds"]["giqa_tgt_min"] == pytest.approx(flt["giqa_reference"]["percentiles"]["p5"], abs=1e-4)
    sc = out["a"]["meta"]["scores"]
    # the identical photo in the folder is skipped: a finite score on the reference's own scale
    assert sc["giqa_src"] < 10 * flt["giqa_reference"]["percentiles"]["p99"]
    assert "giqa_src" not in out["nofile"]["meta"]["scores"]
    assert any("giqa: no reference" in s for s in out["nofile"]["meta"]["filter"]["skipped"])


def test_giqa_reference_of_fewer_than_two_images_stops_before_work(tmp_path):
    """A reference that cannot give leave-one-out percentiles is a config error named on one line,
    raised on the driver (validate), never an error on every row."""
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.jpg").write_bytes(encode_jpeg(scene(1)))
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, n in ((one, 1), (empty, 0)):
        with pytest.raises(ConfigError) as e:
            QualityFilter({"giqa_reference": str(folder)})
        msg = str(e.value)
        assert "\n" not in msg and "giqa_reference" in msg and str(folder) in msg and f"holds {n} image" in msg
    two = tmp_path / "two"
    two.mkdir()
    for i in range(2):
        (two / f"{i}.jpg").write_bytes(encode_jpeg(scene(10 + i)))
    QualityFilter({"giqa_reference": str(two)})  # enough


@pytest.mark.ml  # faiss
def test_giqa_source_folder_of_one_image_is_skipped_not_an_error(tmp_path):
    folder = tmp_path / "lonely"
    folder.mkdir()
    src, tgt, mask = removal_pair(9)
    (folder / "own.jpg").write_bytes(encode_jpeg(src))
    st = QualityFilter({"giqa_reference": "source", "giqa_tgt_min": "ref:p5"})
    out = run_stages_local([st], [_row("a", src, tgt, mask, meta={"file": str(folder / "own.jpg")})])[0]
    assert "giqa_tgt" not in out["meta"]["scores"] and "aesthetic_tgt" in out["meta"]["scores"]
    assert any("fewer than 2 images" in s for s in out["meta"]["filter"]["skipped"])
    assert out["meta"]["filter"]["thresholds"]["giqa_tgt_min"] is None


def test_validate_never_changes_the_config(tmp_path):
    import dataclasses

    from instructdiffusion_data.stages.quality_filter import QualityFilterConfig

    head = tmp_path / "head.pth"
    head.write_bytes(b"x")
    cfg = QualityFilterConfig(profile="clip", aesthetic_weights=str(head))
    before = dataclasses.asdict(cfg)
    st = QualityFilter(cfg)
    assert dataclasses.asdict(cfg) == before and cfg.concurrency is None
    assert st.resources.concurrency == 1  # the clip profile still runs as an actor pool
    assert QualityFilter({}).resources.concurrency is None
