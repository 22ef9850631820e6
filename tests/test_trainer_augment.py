"""Task-aware augmentation (issue 17, item 1): after crop/pad, resize and flip, every drawn circle, every
segmentation / referring mask and the edited region of an edit is whole, checked on the decoded pixels
of samples made by the real render stages and written by the shard writer; positional phrases without
the boxes they are relative to pad to a square; the blind crop of before does cut them (the checks can
fail)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("webdataset")
pytest.importorskip("torch")

import cv2

from instructdiffusion_data import imageio
from instructdiffusion_data.schema import make_key, new_row, rows_to_table, table_to_rows
from instructdiffusion_data.stages.render_keypoints import RenderKeypoints
from instructdiffusion_data.stages.render_refseg import RenderRefseg
from instructdiffusion_data.stages.render_semseg import RenderSemseg
from instructdiffusion_data.writer import sample_members
from trainer.augment import AugmentConfig, Region, plan, protected_region
from trainer.data import augment_sample, decode_sample

pytestmark = pytest.mark.ml

H, W = 180, 480  # a wide image: a square crop keeps at most 37% of its width
RES = 256
SEEDS = range(40)
AUG = AugmentConfig(scale=[1.0, 1.5], flip_p=0.5)
BLIND = AugmentConfig(scale=[1.0, 1.5], flip_p=0.5, task_aware=False)


def textured(h=H, w=W, seed=0):
    """Smooth mid-grey texture: every palette colour stands out of it."""
    rng = np.random.default_rng(seed)
    small = rng.integers(70, 180, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def raw(row: dict) -> dict:
    """The sample webdataset yields for a row the shard writer writes."""
    return {"__key__": row["key"], "__url__": "mem.tar", **sample_members(row)}


def _render(stage, record):
    rows = table_to_rows(stage(rows_to_table([record])))
    kept = [r for r in rows if r["keep"]]
    assert kept, [r["drop_reason"] for r in rows]
    return kept


@pytest.fixture(scope="module")
def img_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "a.png"
    p.write_bytes(imageio.encode_png(textured()))
    return p


def keypoint_rows(path, people):
    joints = [{"name": "left wrist", "x": 30.0, "y": 40.0, "v": 2}, {"name": "nose", "x": 240.0, "y": 90.0, "v": 2},
              {"name": "right knee", "x": 446.0, "y": 140.0, "v": 2}]
    bbox = [10.0, 10.0, 460.0, 160.0]
    rec = new_row(key=make_key("kp", "r1", "rec"), task="keypoint", dataset="kp",
                  meta={"file": str(path), "record_id": "r1", "joints": joints, "bbox": bbox, "people": people})
    st = RenderKeypoints({"tgt_format": "png", "variants_per_record": 2, "min_joints": 3, "max_joints": 3,
                          "radius_frac": 0.04})
    return _render(st, rec)


def seg_rows(path, polygons, name="dog"):
    rec = new_row(key=make_key("ss", "img1", "rec"), task="semantic_seg", dataset="ss",
                  meta={"file": str(path), "record_id": "img1", "width": W, "height": H,
                        "segments": [{"category_id": 18, "name": name, "polygons": polygons}]})
    rows = _render(RenderSemseg({"tgt_format": "png", "variants_per_record": 6, "absent_ratio": 0.0}), rec)
    return [r for r in rows if not r["meta"]["absent"]][:2]


def refseg_rows(path, sentence, polygons):
    rec = new_row(key=make_key("rs", "ref1", "rec"), task="referring_seg", dataset="rs",
                  meta={"file": str(path), "record_id": "ref1", "sentences": [sentence],
                        "targets": [{"polygons": polygons}], "no_target": False})
    return _render(RenderRefseg({"tgt_format": "png", "variants_per_record": 2}), rec)


def edit_rows():
    """An object removal pair as IEIW writes it (mask of the removed object), the same pair without a
    mask (an ingested edit: the region is where the images differ), and a global edit."""
    src = textured(seed=3)
    bg = textured(seed=4)
    obj = np.zeros((H, W), np.uint8)
    cv2.ellipse(obj, (430, 60), (35, 25), 0, 0, 360, 255, -1)
    with_obj = src.copy()
    with_obj[obj > 0] = (30, 60, 220)
    removed = with_obj.copy()
    removed[obj > 0] = bg[obj > 0]
    mask = cv2.dilate(obj, np.ones((5, 5), np.uint8))
    common = dict(src=imageio.encode_png(with_obj), tgt=imageio.encode_png(removed), instruction="Remove the blue ball.")
    return [
        new_row(key=make_key("ieiw", "o1", "remove"), task="edit_remove", dataset="ieiw", mask=imageio.encode_png(mask),
                meta={"record_id": "o1"}, **common),
        new_row(key=make_key("ip", "o1", "v0"), task="edit", dataset="ip", meta={"record_id": "o1"}, **common),
        new_row(key=make_key("ip", "g1", "v0"), task="edit", dataset="ip", src=imageio.encode_png(src),
                tgt=imageio.encode_png(255 - src), instruction="make it a negative", meta={"record_id": "g1"}),
    ], obj > 0


# --- pixel checks on the augmented arrays ---------------------------------------------------------

def changed(a: np.ndarray, b: np.ndarray, thr: int = 8) -> np.ndarray:
    return cv2.absdiff(a, b).max(-1) > thr


def near(img: np.ndarray, rgb, tol: int) -> np.ndarray:
    return cv2.absdiff(img, np.full_like(img, 0) + np.asarray(rgb, np.uint8)).max(-1) <= tol


def region_whole(src_out, tgt_out, area_full: int, side: int, tol: float = 0.12) -> bool:
    """The marked region (target differs from source) keeps its whole area, up to the resize factor."""
    f = RES / side
    got = int(changed(src_out, tgt_out).sum())
    want = area_full * f * f
    return abs(got - want) <= tol * want


def circles_whole(src_out, tgt_out, drawn, radius_full: int, side: int, full_tgt: np.ndarray) -> bool:
    """Each drawn circle is one blob of its colour, of the area it had before (times the resize
    factor squared), not touching the border."""
    f = RES / side
    moved = changed(src_out, tgt_out)
    for d in drawn:
        full_area = _full_area(full_tgt, tuple(d["rgb"]))
        blob = near(tgt_out, d["rgb"], 12) & moved
        n, labels, stats, _ = cv2.connectedComponentsWithStats(blob.astype(np.uint8))
        if n < 2:
            return False
        big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x, y, w, h, area = stats[big]
        if x == 0 or y == 0 or x + w >= RES or y + h >= RES:
            return False
        if abs(area - full_area * f * f) > 0.25 * full_area * f * f:
            return False
    return True


_AREAS: dict = {}
_DECODED: dict = {}


def _full_area(full_tgt: np.ndarray, rgb: tuple) -> int:
    k = (hash(full_tgt.tobytes()), rgb)
    if k not in _AREAS:
        _AREAS[k] = int(near(full_tgt, rgb, 2).sum())
    return _AREAS[k]


def check(sample: dict, aug: AugmentConfig, seed: int, *, area: int | None = None, circles=None):
    k = hash(tuple(sorted((n, v) for n, v in sample.items() if isinstance(v, (bytes, str)))))
    if k not in _DECODED:  # decoded once per sample; augmentation never writes into it
        _DECODED[k] = decode_sample(sample, with_mask=True)
    d = _DECODED[k]
    a = augment_sample(d, RES, np.random.default_rng(seed), aug)
    assert a.src.shape == a.tgt.shape == (RES, RES, 3)
    if circles is not None:
        drawn, radius = circles
        return circles_whole(a.src, a.tgt, drawn, radius, a.geometry.side, d.tgt), a
    return region_whole(a.src, a.tgt, area, a.geometry.side), a


def _cut_share(sample, **kw) -> float:
    return float(np.mean([not check(sample, BLIND, s, **kw)[0] for s in SEEDS]))


# --- tests ----------------------------------------------------------------------------------------

def test_keypoint_circles_whole_after_augmentation(img_file):
    rows = keypoint_rows(img_file, people=[[10.0, 10.0, 460.0, 160.0]])  # alone: "the person"
    for r in rows:
        s, meta = raw(r), r["meta"]
        assert meta["person"] == "the person" and len(meta["drawn"]) == 3
        circles = (meta["drawn"], meta["radius"])
        kinds = set()
        for seed in SEEDS:
            ok, a = check(s, AUG, seed, circles=circles)
            assert ok, (r["key"], seed, a.geometry, a.region)
            assert a.region.box is not None and "drawn" in a.region.why
            kinds.add(a.geometry.kind)
        # circles 30 px from both ends of a 480 px wide image: no square crop holds them, so padded
        assert kinds == {"pad"}
        assert _cut_share(s, circles=circles) > 0.9  # the blind crop cut a circle almost always


def test_keypoint_circles_close_together_are_cropped_not_padded(tmp_path):
    img = textured()
    p = tmp_path / "k.png"
    p.write_bytes(imageio.encode_png(img))
    joints = [{"name": "nose", "x": 400.0, "y": 50.0, "v": 2}, {"name": "left eye", "x": 440.0, "y": 120.0, "v": 2}]
    rec = new_row(key=make_key("kp", "r2", "rec"), task="keypoint", dataset="kp",
                  meta={"file": str(p), "record_id": "r2", "joints": joints, "bbox": [380.0, 20.0, 90.0, 140.0],
                        "people": [[380.0, 20.0, 90.0, 140.0]]})
    rows = _render(RenderKeypoints({"tgt_format": "png", "min_joints": 2, "max_joints": 2, "radius_frac": 0.04}), rec)
    s, meta = raw(rows[0]), rows[0]["meta"]
    circles = (meta["drawn"], meta["radius"])
    sides = set()
    for seed in SEEDS:
        ok, a = check(s, AUG, seed, circles=circles)
        assert ok and a.geometry.kind == "crop", (seed, a.geometry)
        sides.add(a.geometry.side)
    assert len(sides) > 5  # the zoom still varies
    assert _cut_share(s, circles=circles) > 0.5


def test_keypoint_positional_person_pads_to_square(img_file):
    # two people: the instruction says "the leftmost person"; the row carries both boxes
    # (meta.people) and together they span the whole width, so no square crop holds them: pad
    rows = keypoint_rows(img_file, people=[[10.0, 10.0, 460.0, 160.0], [470.0, 5.0, 9.0, 20.0]])
    s, meta = raw(rows[0]), rows[0]["meta"]
    assert meta["person"] == "the leftmost person" and "leftmost person" in rows[0]["instruction"]
    for seed in SEEDS[:10]:
        ok, a = check(s, AUG, seed, circles=(meta["drawn"], meta["radius"]))
        assert ok and "people" in a.region.why and a.geometry.kind == "pad"
        side = a.geometry.side
        content_h = round(H * RES / side)
        oy = round(a.geometry.y * RES / side)
        # padding rows are the pad colour in source and target alike; the image between them
        for img in (a.src, a.tgt):
            assert (img[:oy] == 0).all() and (img[oy + content_h:] == 0).all()
            assert img[oy + 2:oy + content_h - 2].std() > 5
    # with the people boxes in the row, the crop must hold every person instead of padding
    boxes = dict(meta, people=[[10.0, 10.0, 100.0, 160.0], [200.0, 5.0, 60.0, 150.0]], bbox=[10.0, 10.0, 100.0, 160.0])
    r = protected_region(task="keypoint", text=rows[0]["instruction"], meta=boxes, hw=(H, W), aug=AUG)
    assert not r.whole and r.box[0] <= 8 and r.box[2] >= 262 and "people" in r.why


def test_semantic_masks_whole_after_augmentation(img_file):
    near_edge = [[400, 20, 470, 20, 470, 110, 400, 110]]  # a dog at the right edge
    both_ends = [[2, 30, 60, 30, 60, 150, 2, 150], [420, 30, 478, 30, 478, 150, 420, 150]]  # too wide for a crop
    for polys, kind in ((near_edge, "crop"), (both_ends, "pad")):
        for r in seg_rows(img_file, polys):
            s = raw(r)
            area = int((imageio.decode_gray(r["mask"]) > 0).sum())
            assert area == r["meta"]["mask_area"] > 0
            for seed in SEEDS:
                ok, a = check(s, AUG, seed, area=area)
                assert ok, (seed, a.geometry, a.region)
                assert a.geometry.kind == kind and a.region.why == "mask"
            assert _cut_share(s, area=area) > 0.5


def test_referring_masks_whole_and_positional_phrases_pad(img_file):
    poly = [[20, 40, 90, 40, 90, 120, 20, 120]]
    plain = refseg_rows(img_file, "the striped cat", poly)[0]
    where = refseg_rows(img_file, "the man on left", poly)[0]
    area = int((imageio.decode_gray(plain["mask"]) > 0).sum())
    for seed in SEEDS:
        ok, a = check(raw(plain), AUG, seed, area=area)
        assert ok and a.geometry.kind == "crop", (seed, a.geometry)
        ok, a = check(raw(where), AUG, seed, area=area)
        assert ok and a.region.whole and a.geometry.kind == "pad", (seed, a.geometry)
    assert _cut_share(raw(plain), area=area) > 0.5


def test_edit_regions_whole_with_and_without_mask():
    (remove, no_mask, global_edit), obj = edit_rows()
    area = int(obj.sum())
    for row, why in ((remove, "mask"), (no_mask, "changed pixels")):
        s = raw(row)
        flips = 0
        for seed in SEEDS:
            ok, a = check(s, AUG, seed, area=area)
            assert ok, (row["key"], seed, a.geometry, a.region)
            assert a.region.why == why and a.geometry.kind == "crop"
            flips += a.geometry.flip
        assert 5 < flips < 35  # "Remove the blue ball." may flip
        assert _cut_share(s, area=area) > 0.5
    # a global edit protects nothing: any crop keeps it
    d = decode_sample(raw(global_edit), with_mask=True)
    a = augment_sample(d, RES, np.random.default_rng(0), AUG)
    assert a.region.box is None and not a.region.whole and "global" in a.region.why


def test_enhancement_and_free_samples_keep_the_random_crop():
    img = textured()
    src = cv2.GaussianBlur(img, (9, 9), 3)
    row = new_row(key=make_key("gopro", "b1", "v0"), task="deblur", dataset="gopro", src=imageio.encode_png(src),
                  tgt=imageio.encode_png(img), instruction="make the image much sharper", meta={"record_id": "b1"})
    d = decode_sample(raw(row), with_mask=True)
    places = set()
    for seed in SEEDS:
        a = augment_sample(d, RES, np.random.default_rng(seed), AUG)
        assert a.region.box is None and a.geometry.kind == "crop"
        places.add((a.geometry.x, a.geometry.side))
    assert len(places) > 30


def test_plan_contains_the_box_or_pads():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        h, w = (int(v) for v in rng.integers(8, 300, 2))
        x0, x1 = sorted(int(v) for v in rng.integers(0, w + 1, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, h + 1, 2))
        if x1 == x0 or y1 == y0:
            continue
        g = plan(h, w, Region(box=(x0, y0, x1, y1)), rng, AUG)
        fits = max(x1 - x0, y1 - y0) <= min(h, w)
        assert (g.kind == "crop") == fits
        if fits:
            assert g.x <= x0 and g.y <= y0 and g.x + g.side >= x1 and g.y + g.side >= y1
            assert g.x >= 0 and g.y >= 0 and g.x + g.side <= w and g.y + g.side <= h
        else:
            assert g.side == max(h, w) and 0 <= g.x <= g.side - w and 0 <= g.y <= g.side - h
    # validation (no rng): the square nearest the centre that holds the box
    g = plan(100, 300, Region(box=(250, 10, 290, 60)), None, AUG)
    assert (g.kind, g.x, g.y, g.side, g.flip) == ("crop", 190, 0, 100, False)  # x in [290 - 100, 250]


def test_positional_phrases():
    from trainer.augment import positional_phrase

    words = AUG.positional_words
    assert positional_phrase("referring_seg", "Place a red mask on the man.", {"sentence": "man on left"}, words)
    assert not positional_phrase("referring_seg", "Place a red mask on the man on the right.",
                                 {"sentence": "the striped cat"}, words)  # the template is not the phrase
    assert not positional_phrase("keypoint", "Circle the left shoulder of the person.", {"person": "the person"}, words)
    assert positional_phrase("keypoint", "Circle the nose of the person in the middle.",
                             {"person": "the person in the middle"}, words)
    assert positional_phrase("edit_remove", "Remove the blue bird on top of the tree.", {}, words)
    assert not positional_phrase("edit_remove", "Remove the bottle.", {}, words)  # "bottle" is not "bottom"


def test_training_stream_applies_the_task_aware_placement(img_file, tmp_path):
    """MixtureDataset decodes the mask member and places each sample as augment_sample does: the
    segmentation masks of the shard it reads stay whole."""
    from instructdiffusion_data.writer import ShardWriter
    from trainer.data import DataConfig, MixtureDataset, _seed
    from trainer.datasets import specs_from_outputs
    from trainer.model import make_tiny_tokenizer

    rows = seg_rows(img_file, [[400, 20, 470, 20, 470, 110, 400, 110]])
    out = tmp_path / "ss" / "v1"
    w = ShardWriter(out)
    w.write_shard(0, rows)
    w.write_manifest(config={}, extra={"name": "ss", "version": "v1"})
    by_key = {r["key"]: r for r in rows}
    cfg = DataConfig(resolution=RES, num_workers=0, shuffle_buffer=0, augment=AUG)
    ds = MixtureDataset(specs_from_outputs([str(out)], {}), cfg, make_tiny_tokenizer(tmp_path / "tok"), seed=4)
    for _, s in zip(range(12), ds):
        r = by_key[s["key"]]
        d = decode_sample(raw(r), with_mask=True)
        a = augment_sample(d, RES, np.random.default_rng(_seed(4, 0, 0, 0, s["pos"], 99)), AUG)
        src, tgt = s["src"].transpose(1, 2, 0), s["tgt"].transpose(1, 2, 0)
        assert np.array_equal(src, a.src) and np.array_equal(tgt, a.tgt)
        assert region_whole(src, tgt, int(r["meta"]["mask_area"]), a.geometry.side)
