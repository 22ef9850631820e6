"""Gallery, FAISS index, retrieval, Poisson replacement and the replacement pipeline end to end on
the demo data (SA-1B and OpenImages formats)."""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from instructdiffusion_data.config import build, load_pipeline_config
from instructdiffusion_data.replace.gallery import GalleryConfig, build_gallery
from instructdiffusion_data.replace.gallery_read import Gallery

pytestmark = pytest.mark.ml
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from instructdiffusion_data.demo import generate_all

    out = tmp_path_factory.mktemp("demo")
    generate_all(out, n=16, seed=0, only=["sa1b", "openimages"])
    return out


@pytest.fixture(scope="module")
def gallery(demo, tmp_path_factory):
    from instructdiffusion_data.config import apply_overrides, load_yaml

    raw = apply_overrides(load_yaml(REPO / "configs/pipelines/ieiw_replacement_gallery.yaml"),
                          [f"sources.0.root={demo / 'openimages'}", f"sources.1.root={demo / 'sa1b'}",
                           "patches_per_shard=20"])
    out = tmp_path_factory.mktemp("gallery")
    build_gallery(build(GalleryConfig, raw), out, progress=False)
    return out


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_demo_generators_are_deterministic_and_in_layout(tmp_path, demo):
    from instructdiffusion_data.demo import generate_all

    generate_all(tmp_path, n=16, seed=0, only=["sa1b", "openimages"])
    for name in ("sa1b", "openimages"):
        assert _tree_digest(tmp_path / name) == _tree_digest(demo / name)
    assert len(list((demo / "sa1b" / "sa_000000").glob("sa_*.jpg"))) == 16
    assert len(list((demo / "openimages").glob("validation-masks-*.zip"))) == 16


def test_gallery_layout_offsets_and_rejected(gallery):
    g = Gallery(gallery)
    m = g.manifest
    assert m["patches"] == len(g) == g.embeddings.shape[0] == g.index.ntotal
    assert set(m["datasets"]) == {"openimages", "sa1b"}
    # one tar per work shard, at most patches_per_shard (20) patches each; every tar on disk is used
    tars = {r["tar"] for r in g.table}
    assert {f"patches/{p.name}" for p in (gallery / "patches").glob("*.tar")} == tars
    assert max(sum(1 for r in g.table if r["tar"] == t) for t in tars) <= 20
    assert not (gallery / "parts").exists() and not (gallery / "build.json").exists()
    rej = pq.read_table(gallery / "rejected.parquet").to_pylist()
    assert rej and all(r["drop_reason"] for r in rej)
    # every patch's (tar, offset, size) points at its PNG member
    for t in sorted({r["tar"] for r in g.table}):
        with tarfile.open(gallery / t) as tf:
            members = {mm.name: mm for mm in tf.getmembers()}
        for r in (r for r in g.table if r["tar"] == t):
            mm = members[f"{r['key']}.png"]
            assert (mm.offset_data, mm.size) == (r["offset"], r["size"])
    p = g.patch(0)
    assert p.shape[2] == 4 and set(np.unique(p[..., 3])) <= {0, 255} and (p[..., 3] == 255).any()
    np.testing.assert_allclose(np.linalg.norm(np.asarray(g.embeddings), axis=1), 1.0, atol=1e-5)


def test_index_save_load_gives_the_same_neighbours(tmp_path):
    from instructdiffusion_data.models.faiss_index import (
        IndexConfig,
        build_index,
        load_index,
        save_index,
        search,
    )

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for cfg in (IndexConfig(type="flat"), IndexConfig(type="ivfpq", pq_m=8, pq_bits=6, nprobe=4, train_sample=2000)):
        index, info = build_index(x, cfg)
        save_index(index, tmp_path / "i.faiss")
        again = load_index(tmp_path / "i.faiss", nprobe=cfg.nprobe)
        d1, i1 = search(index, x[:50], 10)
        d2, i2 = search(again, x[:50], 10)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(d1, d2)
        if info["type"] == "flat":
            assert (i1[:, 0] == np.arange(50)).all()
        else:
            assert info["factory"] == "IVF51,PQ8x6"  # nlist capped at 2000 training vectors / 39


def _region_rows(demo, n=None):
    from instructdiffusion_data.readers.openimages import SOURCE

    from .helpers_readers import rows_of

    rows = [r for r in rows_of(SOURCE({"root": str(demo / "openimages")})) if r["keep"]]
    return rows[:n] if n else rows


def test_retrieval_never_returns_the_query_image(demo, gallery):
    from instructdiffusion_data.stages.retrieve_reference import STAGE

    rows = _region_rows(demo)
    st = STAGE({"gallery": str(gallery), "k": 3, "search_k": 16, "dup_threshold": 0.999}, seed=1)
    st.setup()
    out = st.process([dict(r, meta=dict(r["meta"])) for r in rows])
    assert len(out) == len(rows)
    kept = [r for r in out if r["keep"]]
    assert len(kept) >= len(rows) - 2
    g = Gallery(gallery)
    same_seen = 0
    for r in kept:
        ref, ret = r["meta"]["reference"], r["meta"]["retrieval"]
        qid = g.lookup("openimages", r["meta"]["image_id"], r["meta"]["region"]["id"])
        assert ref["similarity"] == pytest.approx(float(g.embeddings[qid] @ g.embeddings[ref["gallery_id"]]), abs=1e-5)
        assert [c[1] for c in ret["candidates"]] == sorted((c[1] for c in ret["candidates"]), reverse=True)
        assert ref["image_id"] != r["meta"]["image_id"] and ref["file"] != r["meta"]["file"]
        assert ret["query"] == "gallery" and ret["candidates"][0][1] >= ref["similarity"] - 1e-6
        assert ref["similarity"] <= 0.999
        same_seen += ret["excluded"]["same_image"]
        png = base64.b64decode(ref["patch_png_b64"])
        assert png[:4] == b"\x89PNG"
    assert same_seen >= len(kept)  # the query's own patch was found and excluded every time
    # seeded: the same rows give the same references
    again = st.process([dict(r, meta=dict(r["meta"])) for r in rows])
    assert [r["meta"].get("reference", {}).get("gallery_id") for r in again] == \
           [r["meta"].get("reference", {}).get("gallery_id") for r in out]


def test_retrieval_embeds_regions_missing_from_the_gallery(demo, gallery):
    from instructdiffusion_data.stages.retrieve_reference import STAGE

    rows = _region_rows(demo, 3)
    for r in rows:
        r["meta"]["region"] = dict(r["meta"]["region"], id="not-in-gallery")
    st = STAGE({"gallery": str(gallery), "label_rule": "different", "require_label": True})
    st.setup()
    out = st.process(rows)
    for r in out:
        assert r["meta"]["retrieval"]["query"] == "embedded"
        ref = r["meta"]["reference"]
        assert ref["label"] and ref["label"] != r["meta"]["region"]["label"]
        assert ref["image_id"] != r["meta"]["image_id"]


def test_poisson_replace_changes_only_the_edited_area():
    from instructdiffusion_data.replace.blend import poisson_replace

    rng = np.random.default_rng(0)
    src = (rng.normal(120, 10, (80, 100, 3))).clip(0, 255).astype(np.uint8)
    region = np.zeros((80, 100), np.uint8)
    region[20:50, 30:60] = 1
    ref = np.zeros((40, 40, 4), np.uint8)
    ref[..., :3] = (20, 200, 20)
    ref[8:32, 8:32, :3] = (230, 30, 30)
    ref[8:32, 8:32, 3] = 255
    out, area, info = poisson_replace(src, region, ref)
    assert out.shape == src.shape
    assert (area[region > 0] == 1).all()
    np.testing.assert_array_equal(out[area == 0], src[area == 0])
    x, y, w, h = info["placement"]
    inner = out[y + 4:y + h - 4, x + 4:x + w - 4].astype(int)
    assert inner[..., 0].mean() - inner[..., 1].mean() > 60  # the red object is there


@pytest.mark.slow
def test_replacement_pipeline_end_to_end(demo, gallery, tmp_path):
    from instructdiffusion_data.runner import run

    cfg = load_pipeline_config(REPO / "configs/pipelines/ieiw_replacement.yaml",
                               [f"source.root={demo / 'openimages'}", f"stages.retrieve_reference.gallery={gallery}",
                                f"writer.out={tmp_path}"])
    summary = run(cfg, use_ray=False)
    man = summary.manifest
    train, rejected = man["splits"]["train"], man["splits"]["rejected"]
    n_regions = sum(1 for _ in _region_rows(demo))
    assert train["rows"] > 0 and train["tasks"] == {"edit_replace": train["rows"]}
    # the demo's broken OpenImages row (its mask PNG is not in the zip) is kept, with its reason
    assert rejected["drop_reasons"].get("mask PNG not in archive") == 1
    root = summary.root
    rows = pq.read_table(root / "train" / "000000.parquet").to_pylist()
    tar = (root / "train" / "000000.tar").read_bytes()
    from instructdiffusion_data.imageio import decode, decode_gray

    for r in rows:
        meta = json.loads(r["meta"])
        src = decode(tar[r["src_offset"]:r["src_offset"] + r["src_size"]])
        tgt = decode(tar[r["tgt_offset"]:r["tgt_offset"] + r["tgt_size"]])
        mask = decode_gray(tar[r["mask_offset"]:r["mask_offset"] + r["mask_size"]])
        assert src.shape == tgt.shape and mask.shape == src.shape[:2]
        # the source is the original file, byte for byte
        from instructdiffusion_data.roots import resolve_path

        original = Path(resolve_path(meta["file"], man["roots"]))  # paths are written relative to input roots
        assert tar[r["src_offset"]:r["src_offset"] + r["src_size"]] == original.read_bytes()
        diff = np.abs(src.astype(int) - tgt.astype(int)).mean(axis=2)
        assert diff[mask > 0].mean() > 3 * max(diff[mask == 0].mean(), 0.5)
        assert meta["edit"]["backend"] == "poisson" and meta["edit"]["weight_free"] is True
        ref = meta["reference"]
        assert ref["image_id"] != meta["image_id"] and ref["label"] != meta["region"]["label"]
        low = r["instruction"].lower()
        assert meta["region"]["label"].lower() in low and ref["label"].lower() in low
        assert meta["instruction_provenance"]["path"] == "template"
        assert meta["captions"]["src_region"].lower() == meta["region"]["label"].lower()
    assert train["rows"] + rejected["rows"] >= n_regions
