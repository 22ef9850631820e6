"""The decodes that used to call OpenCV directly go through ``imageio`` and its pixel limit.

``ingest_edit``'s mask, ``render.masks.read_labelmap`` (COCO-Stuff label maps), ``replace.regions``' mask PNGs
(OpenImages archives) and the reference patch of ``contracts.ReferencePatch`` (what ``caption`` and the quality
filter's ``replace_gain`` read) decoded with ``cv2.imdecode`` / ``cv2.imread`` and so skipped the header check:
a 30000 x 30000 header cost seconds and gigabytes there. Now each is refused from the header (class
``image too large``, the stage's prefix in front), and ordinary images give the same pixels as before.
"""

from __future__ import annotations

import base64
import json
import time

import cv2
import numpy as np
import pytest

from instructdiffusion_data import imageio
from instructdiffusion_data.contracts import ReferencePatch
from instructdiffusion_data.errors import RecordError
from instructdiffusion_data.render.masks import read_labelmap
from instructdiffusion_data.replace.regions import decode_png_mask
from instructdiffusion_data.shard_tasks import run_stages_local
from instructdiffusion_data.schema import new_row
from instructdiffusion_data.stages.ingest_edit import IngestEditStage
from tests.test_hardening_image_limits import huge_jpeg, huge_png, small_rgb


@pytest.fixture(autouse=True)
def _no_env_limit(monkeypatch):
    monkeypatch.delenv("IDD_MAX_PIXELS", raising=False)


def _too_large(e: RecordError) -> None:
    assert isinstance(e, imageio.ImageTooLarge) and e.reason == "image too large"
    assert (e.width, e.height) == (30000, 30000)


def _pair_row(mask: bytes | None, tgt: np.ndarray | None = None) -> dict:
    rgb = small_rgb(24, 32)
    return new_row(key="k1", task="edit", dataset="t", src=imageio.encode_png(rgb),
                   tgt=imageio.encode_png(rgb[::-1].copy() if tgt is None else tgt), mask=mask, instruction="add a moon",
                   meta={"record_id": "1", "file": "/data/pairs/1.png"})


def test_ingest_edit_mask_with_a_huge_header_is_dropped_as_too_large():
    t0 = time.perf_counter()
    out = run_stages_local([IngestEditStage({})], [_pair_row(huge_png())])[0]
    assert time.perf_counter() - t0 < 2
    assert out["keep"] is False and out["drop_class"] == "ingest_edit: image too large"
    detail = json.loads(out["drop_detail"][0])
    assert (detail["width"], detail["height"], detail["max_pixels"]) == (30000, 30000, imageio.MAX_PIXELS)
    assert detail["record"] == "1"
    # an ordinary mask: binarised as before (bright pixels), and a corrupt one keeps its class
    m = np.zeros((24, 32), np.uint8)
    m[4:10, 5:20] = 200
    ok = run_stages_local([IngestEditStage({})], [_pair_row(imageio.encode_png(m))])[0]
    assert ok["keep"] and np.array_equal(imageio.decode_gray(ok["mask"]), np.where(m > 127, 255, 0))
    bad = run_stages_local([IngestEditStage({})], [_pair_row(b"\x89PNG not really")])[0]
    assert bad["drop_class"] == "ingest_edit: mask image is corrupt"


def test_ingest_edit_size_mismatch_is_one_class_with_the_sizes_as_details():
    out = run_stages_local([IngestEditStage({})], [_pair_row(None, tgt=small_rgb(20, 20))])[0]
    assert out["drop_class"] == "ingest_edit: size mismatch between source and target"
    detail = json.loads(out["drop_detail"][0])
    assert (detail["source"], detail["target"], detail["record"]) == ("32x24", "20x20", "1")


def test_label_map_is_read_through_imageio(tmp_path):
    lm = (np.arange(40 * 30).reshape(30, 40) % 7).astype(np.uint8)
    p = tmp_path / "lm.png"
    p.write_bytes(imageio.encode_png(lm))
    assert np.array_equal(read_labelmap(str(p)), cv2.imread(str(p), cv2.IMREAD_UNCHANGED))
    colour = tmp_path / "lm3.png"
    cv2.imwrite(str(colour), np.dstack([lm, lm + 1, lm + 2]))
    assert np.array_equal(read_labelmap(str(colour)), lm)  # the first channel, as before
    big = tmp_path / "big.png"
    big.write_bytes(huge_png())
    with pytest.raises(RecordError) as err:
        read_labelmap(str(big), record="9")
    _too_large(err.value)
    assert err.value.file == str(big) and err.value.record == "9"
    (tmp_path / "bad.png").write_bytes(b"not a png")
    for name in ("bad.png", "missing.png"):
        with pytest.raises(RecordError, match="label map missing or corrupt"):
            read_labelmap(str(tmp_path / name))


def test_archive_mask_png_is_read_through_imageio():
    m = np.zeros((12, 16), np.uint8)
    m[2:6, 3:9] = 255
    assert np.array_equal(decode_png_mask(imageio.encode_png(m)), (m > 0).astype(np.uint8))
    with pytest.raises(RecordError) as err:
        decode_png_mask(huge_png(), file="masks.zip", member="a_b.png")
    _too_large(err.value)
    assert (err.value.file, err.value.field) == ("masks.zip", "a_b.png")
    with pytest.raises(RecordError, match="mask PNG is corrupt"):
        decode_png_mask(b"\x89PNG broken", file="masks.zip", member="a_b.png")


def test_reference_patch_is_read_through_imageio(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 1] = 200
    rgba[2:8, 3:9, 3] = 255
    b64 = base64.b64encode(cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))[1].tobytes()).decode()
    assert np.array_equal(ReferencePatch(patch_png_b64=b64).rgba(), rgba)
    huge = ReferencePatch(patch_png_b64=base64.b64encode(huge_png()).decode())
    with pytest.raises(RecordError) as err:
        huge.rgba(record="r1")
    _too_large(err.value)
    assert err.value.field == "reference.patch_png_b64"
    (tmp_path / "big.jpg").write_bytes(huge_jpeg())
    with pytest.raises(RecordError) as err:
        ReferencePatch(file=str(tmp_path / "big.jpg"), bbox=[0, 0, 4, 4]).rgba()
    _too_large(err.value)
    with pytest.raises(RecordError, match="reference patch image is corrupt"):
        ReferencePatch(patch_png_b64=base64.b64encode(b"nope").decode()).rgba()
