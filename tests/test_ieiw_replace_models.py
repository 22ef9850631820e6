"""Model adapters of the replacement pipeline: PaintByExample from the published checkpoint layout,
open_clip gallery embeddings from a local checkpoint, the classical embedder."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.ml

from .helpers_ieiw_replace import (
    REAL_MODEL_INDEX,
    build_tiny_open_clip,
    build_tiny_paint_by_example,
)


@pytest.fixture(scope="module")
def tiny_pbe(tmp_path_factory):
    return build_tiny_paint_by_example(tmp_path_factory.mktemp("pbe"))


def test_real_checkpoint_layout_does_not_load_with_plain_from_pretrained(tiny_pbe):
    # the reason the adapter exists: diffusers 0.42 cannot resolve "paint_by_example"
    from diffusers.pipelines.deprecated.paint_by_example import PaintByExamplePipeline

    assert json.loads((tiny_pbe / "model_index.json").read_text())["image_encoder"] == REAL_MODEL_INDEX["image_encoder"]
    with pytest.raises(ValueError, match="paint_by_example"):
        PaintByExamplePipeline.from_pretrained(str(tiny_pbe), local_files_only=True)


def test_paint_by_example_loads_real_layout_and_edits_deterministically(tiny_pbe):
    from diffusers.pipelines.deprecated.paint_by_example import (
        PaintByExampleImageEncoder,
    )

    from instructdiffusion_data.models.paint_by_example import PaintByExampleEditor

    ed = PaintByExampleEditor(str(tiny_pbe), device="cpu", steps=2, guidance_scale=2.0, resolution=32)
    assert isinstance(ed.pipe.image_encoder, PaintByExampleImageEncoder)
    assert ed.pipe.safety_checker is None  # not loaded unless asked
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    from instructdiffusion_data.models.paint_by_example import load_pipeline

    with_checker = load_pipeline(str(tiny_pbe), device="cpu", load_safety_checker=True, local_files_only=True)
    assert isinstance(with_checker.safety_checker, StableDiffusionSafetyChecker)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 12:36] = 1
    ref = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
    a = ed.edit([img, img], [mask, mask], [ref, ref], seeds=[1, 2])
    b = ed.edit([img], [mask], [ref], seeds=[1])
    assert a[0].shape == img.shape and a[0].dtype == np.uint8
    np.testing.assert_allclose(a[0].astype(int), b[0].astype(int), atol=2)  # same seed, other batch
    assert np.abs(a[0].astype(int) - a[1].astype(int)).mean() > 1  # other seed, other image


def test_open_clip_embedder_from_local_checkpoint(tmp_path):
    from instructdiffusion_data.replace.gallery_patches import EmbedderConfig, make_embedder

    name, cfg, ckpt = build_tiny_open_clip(tmp_path)
    emb = make_embedder(EmbedderConfig(type="clip", model_name=name, pretrained=ckpt, model_config=cfg, device="cpu"))
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8) for i in range(3)]
    v = emb.embed_patches([np.dstack([im, np.full(im.shape[:2], 255, np.uint8)]) for im in imgs])
    assert v.shape == (3, 32) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # the same weights loaded again give the same vectors: the checkpoint was really read
    again = make_embedder(EmbedderConfig(type="clip", model_name=name, pretrained=ckpt, model_config=cfg, device="cpu"))
    np.testing.assert_allclose(again.embed_patches([np.dstack([imgs[0], np.full(imgs[0].shape[:2], 255, np.uint8)])]),
                               v[:1], atol=1e-5)


def test_classical_embedder_groups_similar_images():
    from instructdiffusion_data.models.embed_classical import ClassicalEmbedder

    e = ClassicalEmbedder()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:50, :50]
    red = np.full((50, 50, 3), 240, np.uint8)
    red[(yy - 25) ** 2 + (xx - 25) ** 2 < 15 ** 2] = (200, 20, 20)
    red2 = np.roll(red, 2, axis=1).astype(int) + rng.integers(-4, 5, red.shape)  # shifted, noisy copy
    red2 = np.clip(red2, 0, 255).astype(np.uint8)
    stripes = np.zeros((50, 50, 3), np.uint8)
    stripes[::4] = (30, 60, 220)
    v = e.embed_images([red, red2, stripes])
    assert v.shape == (3, e.dim)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > 0.9 > v[0] @ v[2]
    # the mask restricts the histogram to the region: red object on a striped background
    mixed = stripes.copy()
    mixed[10:40, 10:40] = red[10:40, 10:40]
    m = np.zeros((50, 50), np.uint8)
    m[10:40, 10:40] = 1
    vm = e.embed_images([mixed], [m])[0]
    assert vm @ v[0] > e.embed_images([mixed])[0] @ v[0]


def test_paint_replace_stage_with_paint_by_example_backend(tiny_pbe, tmp_path):
    from instructdiffusion_data.imageio import decode, decode_gray, encode_png
    from instructdiffusion_data.replace.gallery_patches import encode_rgba
    from instructdiffusion_data.replace.gallery_shards import _TarShards
    from instructdiffusion_data.replace.regions import encode_rle
    from instructdiffusion_data.schema import make_key, new_row
    from instructdiffusion_data.stages.paint_replace import STAGE

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    (tmp_path / "src.png").write_bytes(encode_png(img))
    region = np.zeros((40, 48), np.uint8)
    region[12:28, 14:34] = 1
    patch = np.dstack([rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), np.full((20, 20), 255, np.uint8)])
    shards = _TarShards(tmp_path, 10)
    tar, offset, size = shards.add("p.png", encode_rgba(patch))
    shards.close()
    meta = {"file": str(tmp_path / "src.png"), "record_id": "img:1", "width": 48, "height": 40, "image_id": "img",
            "region": {"id": "1", "label": "dog", "bbox": [14, 12, 20, 16], "area_frac": 0.17,
                       "mask": {"rle": encode_rle(region)}},
            "reference": {"gallery": str(tmp_path), "label": "cat", "patch": {"tar": tar, "offset": offset, "size": size}}}
    row = new_row(key=make_key("sa1b", "img:1", "rec"), task="edit_replace", dataset="sa1b", meta=meta)
    st = STAGE({"backend": "paint_by_example", "model": str(tiny_pbe), "local_files_only": True, "steps": 2,
                "resolution": 32, "device": "cpu", "mask_dilate": 2, "tgt_format": "png"}, seed=3)
    st.setup()
    rec_key = row["key"]
    (out,) = st.process([row])
    assert out["key"] == make_key("sa1b", "img:1", "replace") and out["src"] == (tmp_path / "src.png").read_bytes()
    tgt, mask = decode(out["tgt"]), decode_gray(out["mask"]) > 0
    assert mask[region > 0].all() and not mask[0, 0]
    np.testing.assert_array_equal(tgt[~mask], img[~mask])  # paste_back: untouched outside the mask
    assert np.abs(tgt[mask].astype(int) - img[mask]).mean() > 5
    e = out["meta"]["edit"]
    assert e["backend"] == "paint_by_example" and e["weight_free"] is False and e["steps"] == 2
    assert e["seed"] == int(st.rng(rec_key, "pbe").integers(0, 2**31 - 1))  # seeded from the record's key
