"""The fast forms of the render helpers against the straightforward computations they replace.

Each ``ref_*`` function below is the earlier, direct implementation, kept here as the reference: the
production code must give exactly its values (same floats, same masks, same colour choices, same
random draws) on many random inputs, edge cases included.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from instructdiffusion_data import imageio
from instructdiffusion_data.contracts import Segment
from instructdiffusion_data.errors import RecordError
from instructdiffusion_data.readers._coco import clean_name, cocostuff_labels
from instructdiffusion_data.render import keypoints as K
from instructdiffusion_data.render import masks as M
from instructdiffusion_data.render.palette import PALETTE
from instructdiffusion_data.schema import make_key, new_row, rows_to_table, table_to_rows
from instructdiffusion_data.stages import render_semseg as S
from instructdiffusion_data.stages.render_keypoints import RenderKeypoints

# -- reference implementations -------------------------------------------------------------------


def ref_polygons_to_mask(polygons, h, w, *, record=None):
    polys = []
    for poly in polygons:
        arr = np.asarray(poly, dtype=np.float64).reshape(-1)
        if arr.size < 6 or arr.size % 2 or not np.all(np.isfinite(arr)):
            raise RecordError("polygon has fewer than 3 points or bad coordinates", record=record, field="segmentation")
        xs, ys = arr[0::2], arr[1::2]
        if xs.max() < 0 or ys.max() < 0 or xs.min() > w or ys.min() > h:
            raise RecordError("polygon lies outside the image", record=record, field="segmentation")
        polys.append(arr.tolist())
    if not polys:
        raise RecordError("segment has no polygon", record=record, field="segmentation")
    rles = mask_utils.frPyObjects(polys, h, w)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def ref_rle_to_mask(rle, h, w, *, record=None):
    size = rle.get("size")
    if not size or list(size) != [h, w]:
        raise RecordError("RLE size differs from image size", record=record, field="segmentation.size",
                          rle_size=size, image_size=[h, w])
    counts = rle.get("counts")
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


def ref_segment_to_mask(seg, h, w, *, record=None, labelmaps=None):
    if "rle" in seg:
        return ref_rle_to_mask(seg["rle"], h, w, record=record)
    if "polygons" in seg:
        return ref_polygons_to_mask(seg["polygons"], h, w, record=record)
    if "labelmap" in seg:
        lm = labelmaps.get(seg["labelmap"]) if labelmaps is not None else None
        if lm is None:
            lm = M.read_labelmap(seg["labelmap"], record=record)
            if labelmaps is not None:
                labelmaps[seg["labelmap"]] = lm
        if lm.shape != (h, w):
            raise RecordError("label map size differs from image size", file=seg["labelmap"], record=record,
                              labelmap_size=f"{lm.shape[1]}x{lm.shape[0]}", image_size=f"{w}x{h}")
        return lm == seg["value"]
    raise RecordError("segment has no rle, polygons or labelmap", record=record, field="segmentation")


def ref_category_masks(meta, h0, w0, rid):
    masks = {}
    labels = cocostuff_labels()
    if meta.get("labelmap"):
        lm = M.read_labelmap(meta["labelmap"], record=rid)
        if lm.shape != (h0, w0):
            raise RecordError("label map size differs from image size", file=meta["labelmap"], record=rid,
                              labelmap_size=f"{lm.shape[1]}x{lm.shape[0]}", image_size=f"{w0}x{h0}")
        off = int(meta.get("label_offset", 1))
        for val in np.unique(lm):
            if val == S.VOID:
                continue
            cid = int(val) + off
            if cid not in labels or cid == 183:
                raise RecordError("unknown category id in label map", file=meta["labelmap"], record=rid,
                                  field="pixel", category_id=cid, pixel=int(val))
            masks[clean_name(labels[cid])] = lm == val
        return masks
    for i, raw in enumerate(meta.get("segments", [])):
        seg = Segment.from_meta(raw, rid, f"segments[{i}]")
        if not isinstance(seg.name, str):
            raise RecordError("segment has no category name", record=rid, field=f"segments[{i}].name")
        m = ref_segment_to_mask(seg.to_meta(), h0, w0, record=rid)
        masks[seg.name] = masks[seg.name] | m if seg.name in masks else m
    return masks


def ref_overlay(rgb, mask, color, alpha=0.5):
    out = rgb.copy()
    m8 = mask.view(np.uint8)
    x, y, w, h = cv2.boundingRect(m8)
    if w and h:
        roi = rgb[y:y + h, x:x + w]
        solid = np.empty_like(roi)
        solid[:] = np.asarray(color, np.float32).round().astype(np.uint8)
        blend = cv2.addWeighted(roi, 1.0 - alpha, solid, alpha, 0.0)
        dst = out[y:y + h, x:x + w]
        cv2.copyTo(blend, m8[y:y + h, x:x + w], dst)
        out[y:y + h, x:x + w] = dst
    return out


def ref_recover_mask(src, tgt, color, alpha=0.5, min_contrast=48.0, gt=None):
    h, w = src.shape[:2]
    diff = cv2.absdiff(tgt, src)
    moved = np.maximum(np.maximum(diff[..., 0], diff[..., 1]), diff[..., 2]) >= int(alpha / 2 * min_contrast / np.sqrt(3))
    todo = moved | gt if gt is not None else moved
    idx = np.flatnonzero(todo)
    s = src.reshape(-1, 3)[idx].astype(np.float32)
    d = color[None, :] - s
    norm2 = np.einsum("ij,ij->i", d, d)
    ok = norm2 >= min_contrast * min_contrast
    a = np.einsum("ij,ij->i", tgt.reshape(-1, 3)[idx].astype(np.float32) - s, d) / np.maximum(norm2, 1.0)
    rec = np.zeros(h * w, bool)
    rec[idx] = (a > alpha / 2.0) & ok
    valid = np.ones(h * w, bool)
    valid[idx] = ok
    return rec.reshape(h, w), valid.reshape(h, w)


def ref_changed_pixels(src, drawn, mask, color, min_contrast=48.0):
    diff = cv2.absdiff(drawn, src)
    changed = (diff[..., 0] | diff[..., 1] | diff[..., 2]) > 0
    valid = np.ones(mask.shape, bool)
    idx = np.flatnonzero(mask)
    if idx.size:
        d = color[None, :] - src.reshape(-1, 3)[idx].astype(np.float32)
        valid.reshape(-1)[idx] = np.einsum("ij,ij->i", d, d) >= min_contrast * min_contrast
    return changed, valid


def ref_drawn_scores(src, drawn, mask, color, min_contrast=48.0):
    """What the pixel verification computed: changed pixels, IoU, determinable share."""
    rec, valid = ref_changed_pixels(src, drawn, mask, color, min_contrast)
    return M.mask_iou(rec, mask, valid), (float(valid[mask].mean()) if mask.any() else 1.0)


def ref_color_contrast(rgb, mask, color, min_contrast=48.0):
    if not mask.any():
        return 1.0
    step = max(1, int(np.sqrt(mask.size / 16384)))
    px = rgb[::step, ::step][mask[::step, ::step]]
    if not len(px):
        px = rgb[mask]
    d = color[None, :] - px.astype(np.float32)
    return float(np.mean(np.einsum("ij,ij->i", d, d) >= min_contrast * min_contrast))


def ref_resize_bool(mask, shape):
    h, w = shape
    if mask.shape == (h, w):
        return mask
    # the image's rule: bilinear down to half size, area averaging below
    interp = cv2.INTER_LINEAR if 2 * h >= mask.shape[0] and 2 * w >= mask.shape[1] else cv2.INTER_AREA
    return cv2.resize(mask.astype(np.uint8) * 255, (w, h), interpolation=interp) >= 128


def ref_pick_color(rgb, x, y, r, palette, exclude, rng):
    h, w = rgb.shape[:2]
    ys, xs = K.patch_bounds(x, y, r, h, w)
    patch = rgb[ys, xs].reshape(-1, 3).astype(np.float32)
    names = [n for n in rng.permutation(list(palette)) if n not in exclude]
    for n in names:
        c = np.array(palette[n], np.float32)
        if np.mean(np.abs(patch - c).max(-1) < K.COLOR_TOL * 1.5) < 0.02:
            return str(n)
    return str(names[0])


def ref_recover_centres(src, tgt, points, colors, radius):
    h, w = tgt.shape[:2]
    errors = []
    for (x, y), c in zip(points, colors):
        ys, xs = K.patch_bounds(x, y, radius, h, w)
        t = tgt[ys, xs].astype(np.float32)
        s = src[ys, xs].astype(np.float32)
        close = np.abs(t - np.array(c, np.float32)).max(-1) < K.COLOR_TOL
        changed = np.abs(t - s).max(-1) > 12
        sel = close & changed
        if sel.sum() < max(3, 0.3 * np.pi * radius * radius):
            errors.append(float("inf"))
            continue
        yy, xx = np.nonzero(sel)
        cx, cy = xx.mean() + xs.start, yy.mean() + ys.start
        errors.append(float(np.hypot(cx - x, cy - y)))
    return errors


def ref_rle_runs(s: bytes) -> list[int] | None:
    """pycocotools' rleFrString in Python; None where the C code would read past the string."""
    runs: list[int] = []
    p = 0
    while p < len(s):
        x = k = 0
        more = True
        while more:
            if p >= len(s):
                return None
            ch = s[p] - 48
            if not 0 <= ch <= 63:
                return None
            x |= (ch & 0x1F) << 5 * k
            more = bool(ch & 0x20)
            p += 1
            k += 1
            if not more and ch & 0x10:
                x |= -1 << 5 * k
        if k > 7:
            return None
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


# -- random inputs -------------------------------------------------------------------------------


def textured(rng, h, w):
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if rng.random() < 0.5:  # smooth areas and flat colours too, not only noise
        img = cv2.GaussianBlur(img, (0, 0), 3)
        img[: h // 3, : w // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img


def random_mask(rng, h, w):
    kind = rng.integers(6)
    m = np.zeros((h, w), bool)
    if kind == 0:
        return m  # empty
    if kind == 1:
        m[rng.integers(h), rng.integers(w)] = True  # one pixel
    elif kind == 2:  # a box touching two borders
        y0, x0 = rng.integers(0, max(1, h // 2)), rng.integers(0, max(1, w // 2))
        if rng.random() < 0.5:
            m[y0:, x0:] = True
        else:
            m[:y0 + 1, :x0 + 1] = True
    elif kind == 3:
        m[:] = True
    else:  # blobs
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.integers(h), rng.integers(w), rng.integers(2, max(3, min(h, w) // 2))
            yy, xx = np.ogrid[:h, :w]
            m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if kind == 5:
            m &= rng.random((h, w)) < 0.8  # ragged
    return m


COLOURS = [np.array(PALETTE[n], np.float32) for n in PALETTE] + [
    np.array([100.3, 20.0, 250.7], np.float32),  # not whole numbers: the float32 path
    np.array([17, 200, 3], np.float64),  # float64 colour: float64 arithmetic
    np.array([128, 128, 128], np.float32),
    np.array([300, -20, 128], np.float32),  # whole numbers outside 0..255: the float32 path
]


# -- masks: decoding and encoding ----------------------------------------------------------------


def test_mask_png_decodes_to_the_mask():
    rng = np.random.default_rng(0)
    for i in range(40):
        h, w = rng.integers(1, 200, 2)
        mask = random_mask(rng, h, w)
        data = M.mask_png(mask)
        px = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert px.dtype == np.uint8 and px.ndim == 2  # 8-bit grayscale
        assert set(np.unique(px)) <= {0, 255}
        assert np.array_equal(px == 255, mask)
        assert np.array_equal(imageio.decode_gray(data) > 0, mask)
    assert M.empty_mask_png(37, 51) == M.mask_png(np.zeros((37, 51), bool))


def test_rle_string_total_parses_as_pycocotools():
    rng = np.random.default_rng(1)
    for i in range(1500):
        h, w = rng.integers(1, 70, 2)
        m = np.asfortranarray((random_mask(rng, h, w) if i % 2 else rng.random((h, w)) < rng.random()).astype(np.uint8))
        s = mask_utils.encode(m)["counts"]
        assert M.rle_string_total(s) == h * w == sum(ref_rle_runs(s))
        b = bytearray(s)  # damaged strings: the same total, or None where runs are negative or unreadable
        for _ in range(rng.integers(1, 4)):
            op = rng.integers(3)
            if op == 0 and b:
                b[rng.integers(len(b))] = rng.integers(40, 120)
            elif op == 1 and b:
                del b[rng.integers(len(b))]
            else:
                b.insert(rng.integers(len(b) + 1), rng.integers(48, 112))
        runs = ref_rle_runs(bytes(b))
        assert M.rle_string_total(bytes(b)) == (None if runs is None or (runs and min(runs) < 0) else sum(runs))
    assert M.rle_string_total(b"") == 0
    # a value of 7 characters is read, one of 8 is not; a cut-off value or a stray character is not
    for s in (b"PPPPPP0", b"PPPPPPP0", b"PPP", b"0P", b"0 1", b"0p"):
        runs = ref_rle_runs(s)
        assert M.rle_string_total(s) == (None if runs is None or min(runs) < 0 else sum(runs))
    assert M.rle_string_total(b"PPPPPP0") is not None and M.rle_string_total(b"PPPPPPP0") is None


def random_polygons(rng, h, w):
    out = []
    for _ in range(rng.integers(1, 4)):
        n = rng.integers(3, 12)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(1, max(h, w) / 2, n)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
        out.append([float(v) for v in pts.reshape(-1)] if rng.random() < 0.7 else pts.round().astype(int).tolist())
    return out


def test_segment_masks_and_rles_equal_the_direct_decode():
    rng = np.random.default_rng(2)
    for i in range(150):
        h, w = rng.integers(5, 120, 2)
        form = rng.integers(3)
        if form == 0:
            seg = {"polygons": random_polygons(rng, h, w)}
        else:
            m = np.asfortranarray(random_mask(rng, h, w).astype(np.uint8))
            if form == 1:
                counts = mask_utils.encode(m)["counts"].decode()
            else:  # uncompressed counts (iscrowd)
                flat = m.reshape(-1, order="F")
                edges = np.flatnonzero(np.diff(flat)) + 1
                bounds = np.concatenate([[0], edges, [flat.size]])
                counts = np.diff(bounds).tolist()
                if flat[0]:
                    counts = [0] + counts
            seg = {"rle": {"size": [int(h), int(w)], "counts": counts}}
        try:
            expect = ref_segment_to_mask(seg, h, w, record="r")
        except RecordError as e:  # polygons entirely outside the image
            with pytest.raises(RecordError) as got:
                M.segment_to_rle(seg, h, w, record="r")
            assert str(got.value) == str(e)
            continue
        got = M.segment_to_mask(seg, h, w, record="r")
        assert got.dtype == bool and got.flags["C_CONTIGUOUS"] and np.array_equal(got, expect)
        rle = M.segment_to_rle(seg, h, w, record="r")
        assert int(mask_utils.area(rle)) == np.count_nonzero(expect)


@pytest.mark.parametrize("seg", [
    {"polygons": [[1, 1, 5, 1]]}, {"polygons": [[1, 1, 5, 1, 5, float("nan")]]}, {"polygons": [[1, 1, 5, 1, 5]]},
    {"polygons": [[100, 100, 120, 100, 120, 130]]}, {"polygons": [[-9, -9, -5, -9, -5, -5]]}, {"polygons": []},
    {"rle": {"size": [10, 12], "counts": "PP"}}, {"rle": {"size": None, "counts": "PP"}},
    {"something": 1},
])
def test_segment_errors_are_the_direct_decode_errors(seg):
    with pytest.raises(RecordError) as expect:
        ref_segment_to_mask(seg, 20, 30, record="r")
    with pytest.raises(RecordError) as got:
        M.segment_to_mask(seg, 20, 30, record="r")
    assert str(got.value) == str(expect.value)


@pytest.mark.parametrize("counts", ["", "0", "PP", "1k0", [5, 5], [10, 5, 20], [-1, 31]])
def test_an_rle_that_does_not_cover_the_image_is_a_record_error(counts):
    # pycocotools would fail on some of these, leave pixels unset on others, or not return from a merge
    with pytest.raises((RecordError, OverflowError)):
        M.segment_to_rle({"rle": {"size": [5, 6], "counts": counts}}, 5, 6, record="r")


def test_rle_decode_is_row_major_and_equal():
    rng = np.random.default_rng(3)
    for _ in range(20):
        h, w = rng.integers(1, 90, 2)
        m = random_mask(rng, h, w)
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        got = M.rle_decode(rle)
        assert got.flags["C_CONTIGUOUS"] and got.dtype == bool and np.array_equal(got, m)


# -- semantic segmentation: categories -----------------------------------------------------------


def check_categories(meta, h, w):
    try:
        expect = ref_category_masks(meta, h, w, "r")
    except Exception as e:  # noqa: BLE001 - the same error, whatever it is
        with pytest.raises(type(e)) as got:
            S.RenderSemseg({})._categories(meta, h, w, "r")
        assert str(got.value) == str(e)
        return
    cats = S.RenderSemseg({})._categories(meta, h, w, "r")
    assert list(cats.areas) == list(expect)
    for name, m in expect.items():
        assert cats.areas[name] == np.count_nonzero(m)
        got = cats.mask(name)
        assert got.dtype == bool and np.array_equal(got, m)
    for frac in (0.0, 0.001, 0.05, 0.3):  # what each variant may draw
        assert (sorted(n for n, a in cats.areas.items() if a >= frac * (h * w))
                == sorted(n for n, m in expect.items() if np.count_nonzero(m) >= frac * m.size))
    assert [n for n in S.vocabulary() if n not in cats.areas] == sorted(
        {clean_name(n) for i, n in cocostuff_labels().items() if i != 183} - set(expect))


def test_categories_from_segments_equal_the_merged_masks(tmp_path):
    rng = np.random.default_rng(4)
    names = ["dog", "sky", "grass", "person"]
    for i in range(60):
        h, w = rng.integers(8, 90, 2)
        lm8 = rng.integers(0, 6, (h, w)).astype(np.uint8)
        lm16 = (rng.integers(0, 4, (h, w)) * 700).astype(np.uint16)
        p8, p16 = tmp_path / f"a{i}.png", tmp_path / f"b{i}.png"
        cv2.imwrite(str(p8), lm8)
        cv2.imwrite(str(p16), lm16)
        segs = []
        for _ in range(rng.integers(0, 8)):
            form = rng.integers(5)
            seg: dict = {"name": str(rng.choice(names)), "category_id": 1}
            if form == 0:
                seg["polygons"] = random_polygons(rng, h, w)
            elif form == 1:
                m = np.asfortranarray(random_mask(rng, h, w).astype(np.uint8))
                seg["rle"] = {"size": [int(h), int(w)], "counts": mask_utils.encode(m)["counts"].decode()}
            elif form == 2:  # values past the map's range match nothing
                seg.update(labelmap=str(p8), value=int(rng.choice([0, 1, 2, 3, 5, 6, 255, 300, -1])))
            elif form == 3:
                seg.update(labelmap=str(p16), value=int(rng.choice([0, 700, 1400, 5, 2101, 70000, -3])))
            else:  # values that are not plain ints are compared as they are
                seg.update(labelmap=str(p8), value=[float(rng.integers(0, 6)) + 0.0, 2.5, True][rng.integers(3)])
            segs.append(seg)
        check_categories({"segments": segs}, h, w)


@pytest.mark.parametrize("bad", [
    {"name": "dog"}, {"name": 3, "polygons": [[1, 1, 5, 1, 5, 5]]}, {"name": "dog", "rle": "x"},
    {"name": "dog", "labelmap": "/nonexistent.png", "value": 1}, {"name": "dog", "labelmap": "LM"},
    {"name": "dog", "rle": {"size": [3, 3], "counts": "PP"}},
])
def test_category_errors_are_the_same(tmp_path, bad):
    lm = tmp_path / "lm.png"
    cv2.imwrite(str(lm), np.ones((12, 10), np.uint8))
    bad = {k: (str(lm) if v == "LM" else v) for k, v in bad.items()}
    check_categories({"segments": [{"name": "sky", "polygons": [[1, 1, 8, 1, 8, 8]]}, bad]}, 12, 10)


def test_categories_from_a_label_map_equal_the_per_value_masks(tmp_path):
    rng = np.random.default_rng(5)
    for i in range(12):
        h, w = rng.integers(5, 60, 2)
        vals = rng.choice([0, 1, 5, 40, 91, 92, 100, 181, 255], size=rng.integers(1, 5), replace=False)
        lm = rng.choice(vals, (h, w)).astype(np.uint8)
        p = tmp_path / f"lm{i}.png"
        cv2.imwrite(str(p), lm)
        check_categories({"labelmap": str(p), "label_offset": int(rng.choice([0, 1]))}, h, w)
    p = tmp_path / "wide.png"
    cv2.imwrite(str(p), np.full((6, 7), 300, np.uint16))  # unknown category id
    check_categories({"labelmap": str(p)}, 6, 7)
    check_categories({"labelmap": str(p)}, 6, 8)  # size mismatch


# -- drawing and pixel verification --------------------------------------------------------------


def test_overlay_equals_the_direct_blend():
    rng = np.random.default_rng(6)
    for _ in range(60):
        h, w = rng.integers(1, 80, 2)
        img, mask = textured(rng, h, w), random_mask(rng, h, w)
        c, alpha = COLOURS[rng.integers(len(COLOURS))], float(rng.choice([0.5, 0.05, 0.77, 1.0]))
        assert np.array_equal(M.overlay(img, mask, c, alpha), ref_overlay(img, mask, c, alpha))


def test_dist2_and_far_from_equal_the_float32_arithmetic():
    rng = np.random.default_rng(14)
    for c in COLOURS:
        # every pixel at an exact whole distance from the colour too, so that ties with the threshold occur
        base = np.clip(np.round(c), 0, 255).astype(np.int64)
        offs = np.array([[0, 0, 0], [48, 0, 0], [0, -48, 0], [30, 30, 30], [28, 40, 0], [1, 0, 0], [255, 255, 255]])
        near = np.clip(base + offs, 0, 255).astype(np.uint8)
        img = np.concatenate([textured(rng, 20, 30).reshape(-1, 3), near]).reshape(1, -1, 3)
        d = c[None, :] - img.reshape(-1, 3).astype(np.float32)
        expect = np.einsum("ij,ij->i", d, d).reshape(img.shape[:2])
        got = M.dist2(img, c)
        assert got.dtype == expect.dtype and np.array_equal(got, expect)
        for mc in (48.0, 0.0, 47.99999, 48.00001, float(np.sqrt(2700.0)), 442.0, 30):
            assert np.array_equal(M.far_from(img, c, mc), expect >= mc * mc)


def test_drawn_scores_equal_the_full_image_computation():
    rng = np.random.default_rng(7)
    for i in range(400):
        h, w = rng.integers(1, 70, 2)
        img, mask = textured(rng, h, w), random_mask(rng, h, w)
        c = COLOURS[rng.integers(len(COLOURS))]
        mc = float(rng.choice([48.0, 0.0, 100.5, 47.99999, 442.0]))
        drawn = M.overlay(img, mask, c, float(rng.choice([0.5, 0.2, 1.0])))
        kind = rng.integers(4)
        if kind == 1:  # changed pixels outside the mask (and its box)
            noise = rng.random((h, w)) < 0.05
            drawn[noise] = rng.integers(0, 256, (int(noise.sum()), 3), dtype=np.uint8)
        elif kind == 2:  # nothing drawn
            drawn = img.copy()
        elif kind == 3:  # a drawing shifted off the mask
            drawn = M.overlay(img, np.roll(mask, int(rng.integers(1, 5)), axis=1), c)
        assert M.drawn_scores(img, drawn, mask, c, mc) == ref_drawn_scores(img, drawn, mask, c, mc)


def test_recover_mask_equals_the_direct_computation():
    rng = np.random.default_rng(8)
    for i in range(150):
        h, w = rng.integers(1, 70, 2)
        img, mask = textured(rng, h, w), random_mask(rng, h, w)
        c = COLOURS[rng.integers(len(COLOURS))]
        alpha, mc = float(rng.choice([0.5, 0.3, 1.0])), float(rng.choice([48.0, 0.0, 60.5]))
        tgt = M.overlay(img, mask, c, alpha)
        if rng.random() < 0.5 and h >= 8 and w >= 8:  # what a reader gets back: JPEG noise everywhere
            tgt = imageio.decode(imageio.encode_jpeg(tgt, int(rng.choice([95, 60]))))
        gt = mask if rng.random() < 0.7 else None
        rec, valid = M.recover_mask(img, tgt, c, alpha, mc, gt=gt)
        erec, evalid = ref_recover_mask(img, tgt, c, alpha, mc, gt=gt)
        assert np.array_equal(rec, erec) and np.array_equal(valid, evalid)


def test_color_contrast_equals_the_direct_computation():
    rng = np.random.default_rng(9)
    for i in range(150):
        h, w = [(30, 40), (260, 300), (384, 512), (129, 640)][i % 4]
        img, mask = textured(rng, h, w), random_mask(rng, h, w)
        c = COLOURS[rng.integers(len(COLOURS))]
        mc = float(rng.choice([48.0, 0.0, 100.5]))
        assert M.color_contrast(img, mask, c, mc) == ref_color_contrast(img, mask, c, mc)


def test_resize_bool_equals_the_direct_resize():
    rng = np.random.default_rng(10)
    for _ in range(30):
        h, w = rng.integers(2, 200, 2)
        m = random_mask(rng, h, w)
        m = np.asfortranarray(m) if rng.random() < 0.5 else m  # decoded masks used to be column-major
        shape = (int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))) if rng.random() < 0.8 else (h, w)
        got = M.resize_bool(m, shape)
        assert got.flags["C_CONTIGUOUS"] and np.array_equal(got, ref_resize_bool(m, shape))


def test_resize_bool_lands_where_the_resized_image_puts_the_object():
    """A white object on black, resized as sources are (imageio.resize at the fit scale), then
    thresholded: the same pixels as the object's mask resized by resize_bool, down to half size and
    below it."""
    rng = np.random.default_rng(12)
    for max_side in (512, 300, 150):
        for h0, w0 in ((480, 640), (427, 640), (640, 512), (375, 500)):
            m = random_mask(rng, h0, w0)
            scale = imageio.fit_scale(h0, w0, max_side)
            img = imageio.resize(np.repeat(m[..., None].astype(np.uint8) * 255, 3, axis=2), scale)
            got = M.resize_bool(m, img.shape[:2])
            assert np.array_equal(got, img[..., 0] >= 128), (max_side, h0, w0)


# -- keypoints -----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's mean over no pixel
def test_pick_color_chooses_and_draws_as_the_per_colour_loop():
    rng = np.random.default_rng(11)
    palettes = [dict(PALETTE), {n: PALETTE[n] for n in ["red", "green", "blue", "white", "black"]},
                {"a": (10, 10, 10), "b": (12, 9, 200), "c": (100, 101, 102)}]
    for i in range(300):
        h, w = rng.integers(20, 90, 2)
        img = textured(rng, h, w)
        if i % 5 == 0:  # a patch of one palette colour: that colour (and near ones) must be avoided
            img[:] = PALETTE[str(rng.choice(list(PALETTE)))]
        palette = palettes[i % len(palettes)]
        r = int(rng.integers(1, 8))
        x, y = float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1))
        if i % 11 == 0:
            x = -40.0  # no pixel around the joint
        exclude = set(rng.choice(list(palette), size=rng.integers(0, len(palette)), replace=False))
        if i % 7 == 0:
            img = img.astype(np.float32)  # not uint8: the direct test
        seed = int(rng.integers(1 << 30))
        g1, g2 = np.random.default_rng(seed), np.random.default_rng(seed)
        assert K.pick_color(img, x, y, r, palette, exclude, g1) == ref_pick_color(img, x, y, r, palette, exclude, g2)
        assert g1.random() == g2.random()  # the same random numbers were drawn


def test_recover_centres_equal_the_float_computation():
    rng = np.random.default_rng(12)
    for i in range(200):
        h, w = rng.integers(20, 100, 2)
        img = textured(rng, h, w)
        radius = int(rng.integers(1, 7))
        pts = [(float(rng.uniform(-3, w + 2)), float(rng.uniform(-3, h + 2))) for _ in range(rng.integers(1, 5))]
        names = rng.choice(list(PALETTE), size=len(pts))
        cols = [PALETTE[str(n)] for n in names]
        drawn = K.draw(img, pts, cols, radius)
        if i % 3 == 0 and h >= 8 and w >= 8:
            drawn = imageio.decode(imageio.encode_jpeg(drawn, 90))
        if i % 4 == 0:  # verified against other colours than drawn, some not whole numbers
            cols = [(c[0] * 0.5 + 0.3, c[1], c[2]) if k % 2 else tuple(reversed(c)) for k, c in enumerate(cols)]
        if i % 5 == 0:
            pts = [(x + float(rng.normal(0, 2)), y) for x, y in pts]  # a circle off its joint
        if i % 9 == 0:
            pts, cols = pts + [(-60.0, 5.0)], cols + [PALETTE["red"]]  # nothing of the image around it
        got = K.recover_centres(img, drawn, pts, cols, radius)
        assert got == ref_recover_centres(img, drawn, pts, cols, radius)


# -- one source per image ------------------------------------------------------------------------


def test_records_of_one_image_render_as_if_alone(tmp_path):
    img = textured(np.random.default_rng(13), 300, 700)  # resized: the source is re-encoded once
    p = tmp_path / "a.jpg"
    p.write_bytes(imageio.encode_jpeg(img, 95))
    joints = [{"name": f"j{k}", "x": 30.0 + 60 * k, "y": 40.0 + 20 * k, "v": 2} for k in range(10)]
    recs = [new_row(key=make_key("t", f"r{k}", "rec"), task="keypoint", dataset="t",
                    meta={"file": str(p), "record_id": f"r{k}", "joints": joints[k:], "bbox": None, "people": []})
            for k in range(3)]
    st = RenderKeypoints({"variants_per_record": 2})
    together = table_to_rows(st(rows_to_table(recs)))
    alone = [r for rec in recs for r in table_to_rows(st(rows_to_table([rec])))]
    assert len(together) == 6
    assert sorted(together, key=lambda r: r["key"]) == sorted(alone, key=lambda r: r["key"])
