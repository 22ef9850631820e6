"""inpaint_remove stage: pairs, keys, masks, pixels, removal check, instructions."""

import json
from pathlib import Path

import numpy as np
import pytest

from instructdiffusion_data.demo import phrasecut as demo
from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.imageio import decode, decode_gray
from instructdiffusion_data.instructions import load_templates
from instructdiffusion_data.readers.phrasecut import PhraseCutSource, dilate_mask, polygons_to_mask
from instructdiffusion_data.shard_tasks import run_stages_local
from instructdiffusion_data.schema import make_key
from instructdiffusion_data.stages.inpaint_remove import (
    InpaintRemoveStage,
    indefinite_article,
    removal_phrase,
    with_article,
)

from .helpers_ieiw_removal import FillGrey, Identity, save_script


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("pcdemo")
    demo.generate(out, 8, 1)
    rows = list(PhraseCutSource({"root": str(out / "phrasecut"), "splits": ["train", "val", "test"]}).records())
    return rows


def _kept(rows):
    return [r for r in rows if r["keep"]]


def test_two_rows_per_region_with_shared_pair_and_swapped_images(records):
    stage = InpaintRemoveStage({"backend": "opencv", "image_format": "png", "dilate_px": 4}, seed=7)
    out = run_stages_local([stage], records)
    kept_recs = _kept(records)
    rows = [r for r in out if r["task"] in ("edit_remove", "edit_add") and r["key"].split("_")[-2] in ("remove", "add")]
    assert len(rows) == 2 * len(kept_recs)
    assert len({r["key"] for r in out}) == len(out)  # keys distinct
    # records dropped by the reader pass through with their reason
    assert sum(1 for r in out if not r["keep"] and r["key"].endswith(tuple(
        k["key"][-8:] for k in records if not k["keep"]))) == sum(1 for k in records if not k["keep"])

    remove_t = load_templates("edit_remove")
    for rec in kept_recs[:6]:
        rid = rec["meta"]["record_id"]
        rm = next(r for r in out if r["key"] == make_key("phrasecut", rid, "remove"))
        add = next(r for r in out if r["key"] == make_key("phrasecut", rid, "add"))
        assert rm["keep"] and add["keep"], (rm["drop_reason"], add["drop_reason"])
        assert rm["task"] == "edit_remove" and add["task"] == "edit_add"
        assert rm["meta"]["pair_id"] == add["meta"]["pair_id"] == make_key("phrasecut", rid, "pair")
        assert rm["meta"]["variant"] == "remove" and add["meta"]["variant"] == "add"
        assert rm["src"] == add["tgt"] and rm["tgt"] == add["src"] and rm["mask"] == add["mask"]
        for r in (rm, add):
            assert r["meta"]["phrase"] == rec["meta"]["phrase"]
            assert r["meta"]["phrase_structure"] == rec["meta"]["phrase_structure"]
            assert r["meta"]["inpaint"]["backend"] == "opencv"
            assert r["meta"]["inpaint"]["model_id"].startswith("opencv-")
        phrase = removal_phrase(rec["meta"]["phrase"])
        assert phrase in rm["instruction"]
        assert rm["instruction"] in {t.format(phrase=phrase)[:1].upper() + t.format(phrase=phrase)[1:] for t in remove_t}
        assert with_article(rec["meta"]["phrase"], rec["meta"]["phrase_structure"]["name"]) in add["instruction"]

        # pixels: the source is the original image; mask = dilated polygons; outside identical, inside changed
        orig = decode(Path(rec["meta"]["file"]).read_bytes())
        src, tgt = decode(rm["src"]), decode(rm["tgt"])
        assert np.array_equal(src, orig)  # PNG output, no resize at this size: the original pixels
        mask = decode_gray(rm["mask"])
        expected = dilate_mask(polygons_to_mask(rec["meta"]["polygons"], *orig.shape[:2]), 4)
        assert np.array_equal(mask, expected)
        inside = mask > 0
        assert np.array_equal(tgt[~inside], src[~inside])
        assert np.abs(tgt[inside].astype(int) - src[inside]).mean() >= 2.0


def test_jpeg_pairs_identical_outside_the_mask_blocks(records):
    stage = InpaintRemoveStage({"backend": "opencv", "image_format": "jpg"})
    rec = _kept(records)[0]
    rm = next(r for r in run_stages_local([stage], [rec]) if r["meta"].get("variant") == "remove")
    src, tgt, mask = decode(rm["src"]), decode(rm["tgt"]), decode_gray(rm["mask"])
    h, w = mask.shape
    touched = np.zeros((h, w), bool)  # 8x8 JPEG blocks that contain a mask pixel
    for by in range(0, h, 8):
        for bx in range(0, w, 8):
            touched[by:by + 8, bx:bx + 8] = mask[by:by + 8, bx:bx + 8].any()
    assert (~touched).any()
    assert np.array_equal(src[~touched], tgt[~touched])


def test_lama_backend_through_the_stage(records, tmp_path):
    model = save_script(FillGrey(), tmp_path / "big-lama.pt")
    stage = InpaintRemoveStage({"backend": "lama", "lama_model": str(model), "device": "cpu", "lama_batch": 4,
                                "image_format": "png", "max_side": 200, "batch_size": 5})
    recs = _kept(records)[:5]
    out = run_stages_local([stage], recs)
    assert len(out) == 10 and all(r["keep"] for r in out)
    for r in out:
        if r["meta"]["variant"] != "remove":
            continue
        src, tgt, mask = decode(r["src"]), decode(r["tgt"]), decode_gray(r["mask"])
        assert max(src.shape[:2]) == 200 and mask.shape == src.shape[:2]  # resized to max_side
        assert (tgt[mask > 0] == 127).all() and np.array_equal(tgt[mask == 0], src[mask == 0])
        assert r["meta"]["inpaint"]["backend"] == "lama"
        assert r["meta"]["inpaint"]["model_id"].startswith("lama:big-lama.pt:sha256-")


def test_removal_check_drops_unchanged_regions(records, tmp_path):
    model = save_script(Identity(), tmp_path / "identity.pt")
    stage = InpaintRemoveStage({"backend": "lama", "lama_model": str(model), "device": "cpu"})
    out = run_stages_local([stage], _kept(records)[:3])
    assert len(out) == 6
    for r in out:
        assert not r["keep"]
        assert r["drop_reason"].startswith("inpaint_remove: removal check failed: region unchanged")
        assert r["src"] is not None and r["mask"] is not None  # kept for the auditor


def test_missing_image_is_dropped_not_raised(records, tmp_path):
    rec = dict(_kept(records)[0])
    rec["meta"] = dict(rec["meta"], file=str(tmp_path / "gone.jpg"))
    out = run_stages_local([InpaintRemoveStage({})], [rec])
    assert len(out) == 1 and not out[0]["keep"]
    assert out[0]["drop_reason"].startswith("inpaint_remove: image file missing")


def test_size_mismatch_is_dropped(records):
    rec = dict(_kept(records)[0])
    rec["meta"] = dict(rec["meta"], width=rec["meta"]["width"] + 1)
    out = run_stages_local([InpaintRemoveStage({})], [rec])
    assert out[0]["drop_class"] == "inpaint_remove: image size differs from the annotations"
    detail = json.loads(out[0]["drop_detail"][0])
    w, h = rec["meta"]["width"], rec["meta"]["height"]
    assert detail["annotations"] == f"{w}x{h}" and detail["image"] == f"{w - 1}x{h}"


def test_config_validation(tmp_path, monkeypatch):
    monkeypatch.delenv("LAMA_MODEL", raising=False)
    with pytest.raises(ConfigError, match="LAMA_MODEL"):
        InpaintRemoveStage({"backend": "lama"})
    with pytest.raises(ConfigError, match="dilate"):
        InpaintRemoveStage({"dilate_px": -1})
    with pytest.raises(ConfigError, match="not found"):
        InpaintRemoveStage({"templates_dir": str(tmp_path)})


@pytest.mark.parametrize("phrase,name,expected", [
    ("red car", "car", "a red car"),
    ("old man", "man", "an old man"),
    ("white clouds", "clouds", "white clouds"),
    ("blue bird on top of the tree", "bird", "a blue bird on top of the tree"),
    ("the umbrella", "umbrella", "an umbrella"),
    ("people walking on sidewalk", "people", "people walking on sidewalk"),
    ("green grass", "grass", "green grass"),
    ("two dogs", "dogs", "two dogs"),
    ("unicorn", "unicorn", "a unicorn"),
    ("honest man", None, "an honest man"),
    ("hourglass", None, "an hourglass"),
    ("glass", "glass", "glass"),
    ("bus", "bus", "a bus"),
    ("man wearing glasses", "man", "a man wearing glasses"),
    ("trees behind the fence", None, "trees behind the fence"),
    ("European flag", "flag", "a European flag"),
])
def test_add_phrase_grammar(phrase, name, expected):
    assert with_article(phrase, name) == expected


def test_removal_phrase_and_article():
    assert removal_phrase("The red car") == "red car"
    assert removal_phrase("a") == "a"
    assert indefinite_article("apple") == "an" and indefinite_article("user") == "a"


def test_templates_count():
    assert len(load_templates("edit_remove")) >= 10 and len(load_templates("edit_add")) >= 10
    assert all("{phrase}" in t for t in load_templates("edit_remove"))
    assert all("{a_phrase}" in t for t in load_templates("edit_add"))


def test_removal_check_rules():
    from instructdiffusion_data.stages.inpaint_remove import removal_check

    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:15] = 255
    tgt = src.copy()
    tgt[mask > 0] = 255 - src[mask > 0]
    ok, reason, _, diff = removal_check(src, tgt, mask, 2.0)
    assert ok and reason == "" and diff == pytest.approx(np.abs(tgt[mask > 0].astype(int) - src[mask > 0]).mean())
    bad = tgt.copy()
    bad[0, 0, 1] ^= 1  # one channel of one pixel outside the mask
    ok, reason, detail, _ = removal_check(src, bad, mask, 2.0)
    assert not ok and reason == "removal check failed: pixels changed outside the mask" and detail == {"pixels": 1}
    ok, reason, detail, diff = removal_check(src, src, mask, 2.0)
    assert not ok and diff == 0.0 and reason == "removal check failed: region unchanged"
    assert detail == {"mean_diff": 0.0, "min": 2.0}
