"""`idd gallery build` at scale: the work runs per shard (parts + a marker each), the driver keeps
counts only and assembles the gallery in bounded memory; the result is the one a single process
gives (same patches, keys, order, embeddings, neighbours); an interrupted build resumes to the same
bytes; the no-region error names its rules."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from instructdiffusion_data.config import apply_overrides, build, load_yaml
from instructdiffusion_data.replace import gallery as gmod
from instructdiffusion_data.replace import gallery_assemble as amod
from instructdiffusion_data.replace import gallery_patches as pmod
from instructdiffusion_data.replace import gallery_shards as smod
from instructdiffusion_data.replace.gallery import GalleryConfig, build_gallery
from instructdiffusion_data.replace.gallery_read import Gallery

pytestmark = pytest.mark.ml
REPO = Path(__file__).resolve().parents[1]
GALLERY_YAML = REPO / "configs/pipelines/ieiw_replacement_gallery.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from instructdiffusion_data.demo import generate_all

    out = tmp_path_factory.mktemp("demo")
    generate_all(out, n=12, seed=0, only=["sa1b", "openimages"])
    return out


def demo_overrides(demo: Path) -> list[str]:
    # several shards per source (OpenImages: 16 archives, 3 per shard; SA-1B: 12 images, 5 per shard)
    # and several tars per shard
    return [f"sources.0.root={demo / 'openimages'}", f"sources.1.root={demo / 'sa1b'}", "sources.0.records_per_shard=3",
            "records_per_shard=5", "patches_per_shard=4", "embedder.batch_size=3"]


def demo_config(demo: Path, extra: list[str] = ()) -> GalleryConfig:
    return build(GalleryConfig, apply_overrides(load_yaml(GALLERY_YAML), [*demo_overrides(demo), *extra]))


def reference(cfg: GalleryConfig) -> dict:
    """What the single-process build gave (the code before the sharded build, in brief): every record
    in source order, a patch per kept region, embedded in one pass, one matrix, one index."""
    from instructdiffusion_data.errors import RecordError
    from instructdiffusion_data.imageio import decode, read_bytes
    from instructdiffusion_data.models.faiss_index import build_index

    emb = pmod.make_embedder(cfg.embedder)
    keys, pngs, patches, rejected, rows = [], [], [], [], []
    for rec in gmod.iter_regions(cfg):
        meta = rec["meta"]
        base = {"key": rec["key"], "dataset": rec["dataset"], "record_id": str(meta.get("record_id"))}
        if not rec["keep"]:
            rejected.append({**base, "drop_class": rec.get("drop_class") or rec["drop_reason"],
                             "drop_reason": rec["drop_reason"]})
            continue
        try:
            img = decode(read_bytes(meta["file"]), file=meta["file"])
            patch, crop = pmod.region_patch(meta, cfg.patch, img)
        except RecordError as e:
            rejected.append({**base, "drop_class": f"gallery: {e.reason}", "drop_reason": f"gallery: {e}"})
            continue
        reg = meta["region"]
        keys.append(rec["key"])
        pngs.append(pmod.encode_rgba(patch))
        patches.append(patch)
        rows.append({"gallery_id": len(rows), **base, "image_id": str(meta.get("image_id")),
                     "region_id": str(reg["id"]), "label": reg.get("label"), "label_id": reg.get("label_id"),
                     "file": meta["file"], "bbox": [int(v) for v in reg["bbox"]], "area_frac": float(reg["area_frac"]),
                     "crop": crop, "size": len(pngs[-1]), "patch_w": int(patch.shape[1]),
                     "patch_h": int(patch.shape[0])})
    vectors = emb.embed_patches(patches)
    index, _ = build_index(vectors, cfg.index)
    return {"keys": keys, "pngs": pngs, "vectors": vectors, "index": index, "rejected": rejected, "rows": rows}


def test_sharded_build_equals_the_single_process_gallery(demo, tmp_path):
    from instructdiffusion_data.models.faiss_index import search

    cfg = demo_config(demo)
    m = build_gallery(cfg, tmp_path / "g", progress=False)
    ref = reference(cfg)
    g = Gallery(tmp_path / "g")
    assert m["shards"] >= 6 and len(list((tmp_path / "g" / "patches").glob("*-001.tar"))) >= 1
    assert m["patches"] == len(g) == len(ref["keys"]) > 20
    assert g.table.cols["key"] == ref["keys"]
    assert g.table.cols["gallery_id"] == list(range(len(g)))
    cols = [c for c in ref["rows"][0] if c not in ("tar", "offset")]
    assert [{c: r[c] for c in cols} for r in g.table] == [{c: r[c] for c in cols} for r in ref["rows"]]
    assert [g.patch_bytes(i) for i in range(len(g))] == ref["pngs"]
    np.testing.assert_array_equal(np.asarray(g.embeddings), ref["vectors"])
    assert pq.read_table(tmp_path / "g" / "rejected.parquet").to_pylist() == ref["rejected"]
    assert m["rejected"] == len(ref["rejected"]) and sum(m["rejected_reasons"].values()) == m["rejected"]
    s1, i1 = search(g.index, ref["vectors"], 10)
    s2, i2 = search(ref["index"], ref["vectors"], 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2)
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == sorted(
        ["gallery.json", "gallery.parquet", "rejected.parquet", "embeddings.npy", "index.faiss", "patches"])
    # the work-shard size does not change the gallery (only which tar holds a patch)
    build_gallery(demo_config(demo, ["records_per_shard=1000", "sources.0.records_per_shard=1000"]),
                  tmp_path / "one", progress=False)
    one = Gallery(tmp_path / "one")
    assert one.table.cols["key"] == ref["keys"]
    assert (tmp_path / "one" / "embeddings.npy").read_bytes() == (tmp_path / "g" / "embeddings.npy").read_bytes()
    assert (tmp_path / "one" / "index.faiss").read_bytes() == (tmp_path / "g" / "index.faiss").read_bytes()


@pytest.mark.parametrize("kind", ["flat", "ivfpq", "ivfpq_refine"])
def test_streamed_index_equals_the_one_matrix_index(kind):
    from instructdiffusion_data.models.faiss_index import (
        IndexConfig,
        build_index,
        build_index_streamed,
        search,
        training_ids,
    )

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2500, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cfg = IndexConfig(type="flat") if kind == "flat" else IndexConfig(
        type="ivfpq", pq_m=4, pq_bits=6, nprobe=4, train_sample=1200, refine=2 if kind == "ivfpq_refine" else 0)
    a, info_a = build_index(x, cfg)
    ids = training_ids(len(x), cfg)
    assert (ids is None) == (kind == "flat" or len(x) <= cfg.train_sample)
    calls = []

    def sample():
        calls.append(1)
        return x if ids is None else x[ids]

    sizes = [1, 999, 0, 700, 800]  # uneven batches, one empty
    cuts = np.cumsum([0, *sizes])
    b, info_b = build_index_streamed((x[s:e] for s, e in zip(cuts[:-1], cuts[1:])), len(x), 16, cfg, sample)
    assert info_a["factory"] == info_b["factory"] and b.ntotal == len(x)
    assert calls == ([] if kind == "flat" else [1])  # the sample is only gathered to train
    d1, i1 = search(a, x[:200], 10)
    d2, i2 = search(b, x[:200], 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(d1, d2, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="announced"):
        build_index_streamed([x[:10]], 11, 16, IndexConfig(type="flat"))


def test_no_region_error_counts_each_rule(demo, tmp_path):
    from instructdiffusion_data.errors import ConfigError

    cfg = demo_config(demo, ["sources.0.select.min_area_frac=0.95", "sources.1.select.min_area_frac=0.95"])
    with pytest.raises(ConfigError) as e:
        build_gallery(cfg, tmp_path / "g", progress=False)
    msg = str(e.value)
    assert msg.startswith("gallery: no region passed selection; nothing to index (")
    ref_counts: dict[str, int] = {}
    for rec in gmod.iter_regions(cfg):
        ref_counts[rec["drop_class"]] = ref_counts.get(rec["drop_class"], 0) + 1
    assert f"{sum(ref_counts.values())} regions rejected" in msg
    for cls, n in ref_counts.items():
        assert f"{cls}: {n}" in msg
    assert "region area_frac<0.95" in ref_counts


def test_failed_shard_is_reported_and_the_rerun_builds_only_what_is_missing(demo, tmp_path, monkeypatch):
    from instructdiffusion_data.errors import UserError

    cfg = demo_config(demo)
    clean = tmp_path / "clean"
    build_gallery(cfg, clean, progress=False)
    real = smod.build_shard
    built: list[int] = []

    def flaky(cfg_, source, job, root, embedder=None):
        built.append(job.shard)
        if job.shard == 2:
            raise RuntimeError("disk on fire")
        return real(cfg_, source, job, root, embedder)

    monkeypatch.setattr(smod, "build_shard", flaky)
    out = tmp_path / "g"
    with pytest.raises(UserError, match=r"1 of \d+ shards failed \(shard 000002: RuntimeError: disk on fire\)"):
        build_gallery(cfg, out, progress=False)
    n_shards = len(built)
    assert not (out / "gallery.json").exists() and len(list((out / "parts").glob("*.done.json"))) == n_shards - 1

    def record(*a, **k):
        built.append(a[2].shard)
        return real(*a, **k)

    built.clear()
    monkeypatch.setattr(smod, "build_shard", record)
    build_gallery(cfg, out, progress=False)
    assert built == [2]
    assert _digest(out) == _digest(clean)

    # a partial build whose inputs changed since: the changed shard is redone with the missing one
    out2 = tmp_path / "g2"
    monkeypatch.setattr(smod, "build_shard", flaky)
    with pytest.raises(UserError):
        build_gallery(cfg, out2, progress=False)
    jobs = gmod.plan_shards(cfg, gmod._make_sources(cfg), tmp_path, False)
    first_sa1b = next(j for j in jobs if j.source == 1)
    f = Path(first_sa1b.spec.items[0][0])
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # same bytes, another mtime
    built.clear()
    monkeypatch.setattr(smod, "build_shard", record)
    build_gallery(cfg, out2, progress=False)
    assert sorted(built) == [2, first_sa1b.shard]
    assert _digest(out2) == _digest(clean)

    # a partial build of another config starts over
    out3 = tmp_path / "g3"
    monkeypatch.setattr(smod, "build_shard", flaky)
    with pytest.raises(UserError):
        build_gallery(cfg, out3, progress=False)
    built.clear()
    monkeypatch.setattr(smod, "build_shard", record)
    build_gallery(demo_config(demo, ["patch.context=0.2"]), out3, progress=False)
    assert sorted(built) == list(range(n_shards))
    # the index (not a part's input) changes the assembly only
    built.clear()
    (out3 / "gallery.json").unlink()
    m = build_gallery(demo_config(demo, ["patch.context=0.2", "index.type=ivfpq", "index.pq_m=4",
                                         "index.pq_bits=4"]), out3, progress=False)
    assert m["index"]["type"] == "ivfpq"


def _digest(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "gallery.json":
                m = json.loads(data)
                for k in ("seconds", "assemble_seconds", "code_version"):
                    m.pop(k, None)
                m.get("index", {}).pop("build_s", None)
                m.get("build", {}).pop("plan", None)  # the inputs' sizes and mtimes
                m.get("config", {}).pop("ray", None)  # where it ran
                data = json.dumps(m, sort_keys=True).encode()
            out[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


# -- bounded memory --------------------------------------------------------------------------------

def make_sa1b(root: Path, images: int, regions: int = 50) -> Path:
    """SA-1B-like folder (after bench/bench_scale.py): ``sa_N.jpg`` + ``sa_N.json`` with ``regions``
    RLE regions each, drawn from a pool of square masks, a few of them large enough to be selected."""
    from pycocotools import mask as mask_util

    from instructdiffusion_data.imageio import encode_jpeg

    d = root / "sa1b"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    w, h = 320, 240
    jpgs = [encode_jpeg(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), 90) for _ in range(4)]
    pool = []
    for k in range(16):
        m = np.zeros((h, w), np.uint8, order="F")
        s = 4 + (k * 9 if k % 5 == 0 else k)
        m[20 + k: 20 + k + s, 30 + k: 30 + k + s] = 1
        r = mask_util.encode(m)
        pool.append(({"size": [h, w], "counts": r["counts"].decode()}, int(m.sum()), [30 + k, 20 + k, s, s]))
    for i in range(1, images + 1):
        anns = []
        for j in range(regions):
            rle, area, bbox = pool[int(rng.integers(0, len(pool)))]
            anns.append({"id": j, "segmentation": rle, "area": area, "bbox": bbox, "predicted_iou": 0.9,
                         "stability_score": 0.95, "point_coords": [[bbox[0] + 1, bbox[1] + 1]],
                         "crop_box": [0, 0, w, h]})
        (d / f"sa_{i}.json").write_text(json.dumps({"image": {"image_id": i, "width": w, "height": h,
                                                              "file_name": f"sa_{i}.jpg"}, "annotations": anns}))
        (d / f"sa_{i}.jpg").write_bytes(jpgs[i % len(jpgs)])
    return d


def _sa1b_config(folder: Path) -> GalleryConfig:
    return build(GalleryConfig, {"sources": [{"type": "sa1b", "root": str(folder)}], "records_per_shard": 10,
                                 "patches_per_shard": 64})


def test_driver_memory_does_not_grow_with_the_regions(tmp_path, monkeypatch):
    """N and 10N regions: the peak of Python-traced memory (numpy included) of the whole build, in
    this process, stays about the same; a single-process build holding every row, vector and the
    whole matrix grows with the regions."""
    monkeypatch.setattr(amod, "CHUNK", 64)  # assembly batches: what bounds the driver when N grows
    small, big = make_sa1b(tmp_path / "n", 20), make_sa1b(tmp_path / "10n", 200)
    build_gallery(_sa1b_config(make_sa1b(tmp_path / "warm", 3)), tmp_path / "gw", progress=False)  # imports
    peaks, patches = [], []
    for folder, out in ((small, tmp_path / "g1"), (big, tmp_path / "g10")):
        tracemalloc.start()
        m = build_gallery(_sa1b_config(folder), out, progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        patches.append(m["patches"])
        assert m["records"] == 50 * (20 if folder is small else 200)
    assert patches[1] == 10 * patches[0] > 0
    assert peaks[1] < 2 * peaks[0], f"driver peak grew from {peaks[0] / 1e6:.2f} MB to {peaks[1] / 1e6:.2f} MB"
    g = Gallery(tmp_path / "g10")
    assert len(g) == patches[1] and g.index.ntotal == patches[1]


# -- resume after a kill -------------------------------------------------------------------------

def idd(args: list[str], env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    for k in ("IDD_FAULT_AT", "IDD_FAULT_LOG", "IDD_FAULT_ONCE"):
        env.pop(k, None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "instructdiffusion_data.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def gallery_args(demo: Path, out: Path, *extra: str) -> list[str]:
    sets = [a for o in demo_overrides(demo) for a in ("--set", o)]
    return ["gallery", "build", str(GALLERY_YAML), "--out", str(out), *sets, *extra]


@pytest.fixture(scope="module")
def clean_cli(demo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gcli")
    log = tmp / "points.log"
    res = idd(gallery_args(demo, tmp / "clean", "--no-ray"), {"IDD_FAULT_LOG": str(log)})
    assert res.returncode == 0, res.stderr[-2000:]
    return tmp, log.read_text().split(), _digest(tmp / "clean")


def test_kill_at_each_commit_point_then_resume(demo, clean_cli):
    tmp, points, clean = clean_cli
    names = list(dict.fromkeys(points))
    assert names == ["gallery.tar", "gallery.part", "gallery.shard", "gallery.tables", "gallery.embeddings",
                     "gallery.index", "gallery.manifest", "gallery.swap"]
    n_shards = points.count("gallery.shard")
    # the first of each kind, and the marker of the third shard (later shards resume)
    for spec in [f"{n}:1" for n in names] + ["gallery.shard:3", f"gallery.tar:{points.count('gallery.tar') - 1}"]:
        out = tmp / spec.replace(":", "-")
        killed = idd(gallery_args(demo, out, "--no-ray"), {"IDD_FAULT_AT": spec})
        assert killed.returncode == -9, (spec, killed.stderr[-1500:])
        assert not (out / "gallery.json").exists() or spec == "gallery.swap:1"
        log = tmp / f"{spec}.log"
        rerun = idd(gallery_args(demo, out, "--no-ray"), {"IDD_FAULT_LOG": str(log)})
        assert rerun.returncode == 0, (spec, rerun.stderr[-2000:])
        assert _digest(out) == clean, spec
        assert not out.with_name(out.name + ".tmp").exists()
        redone = log.read_text().split().count("gallery.shard")
        done_before = {"gallery.shard:1": 1, "gallery.shard:3": 3}.get(spec, None)
        if done_before is not None:
            assert redone == n_shards - done_before, (spec, redone)  # finished shards were not built again
        if spec in ("gallery.tables:1", "gallery.embeddings:1", "gallery.index:1", "gallery.manifest:1",
                    "gallery.swap:1"):
            assert redone == 0, spec


@pytest.mark.slow
def test_ray_build_equals_the_in_process_build_even_when_a_worker_dies(demo, clean_cli):
    """On Ray (tasks, the classical embedder): a worker killed in the middle of a shard is retried; the
    gallery equals the in-process one."""
    tmp, _, clean = clean_cli
    out = tmp / "ray"
    fired = tmp / "fired"
    res = idd(gallery_args(demo, out, "--set", "ray.num_cpus=2", "--set", "ray.object_store_memory=200000000"),
              {"IDD_FAULT_AT": "gallery.part:2", "IDD_FAULT_ONCE": str(fired)})
    assert fired.exists(), "the fault must fire in a worker"
    if res.returncode != 0:  # a shard whose retries ran out is reported; the rerun builds it
        assert "shards failed" in res.stderr, res.stderr[-2000:]
        res = idd(gallery_args(demo, out, "--set", "ray.num_cpus=2", "--set", "ray.object_store_memory=200000000"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert _digest(out) == clean


@pytest.mark.slow
def test_clip_gallery_on_a_ray_actor_pool_equals_the_in_process_one(demo, tmp_path, ray_local):
    """embedder.type=clip: shards go to an actor pool (one model per actor, here 2 CPU actors)."""
    from .helpers_ieiw_replace import build_tiny_open_clip

    name, conf, ckpt = build_tiny_open_clip(tmp_path)
    extra = ["embedder.type=clip", f"embedder.model_name={name}", f"embedder.pretrained={ckpt}",
             f"embedder.model_config={conf}", "embedder.device=cpu", "workers.concurrency=2", "workers.num_gpus=0"]
    cfg = demo_config(demo, extra)
    local = build_gallery(cfg, tmp_path / "local", progress=False)
    on_ray = build_gallery(cfg, tmp_path / "ray", progress=False, use_ray=True)
    assert on_ray["embedder"]["type"] == "clip" and on_ray["patches"] == local["patches"]
    a = np.load(tmp_path / "local" / "embeddings.npy")
    b = np.load(tmp_path / "ray" / "embeddings.npy")
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert Gallery(tmp_path / "ray").table.cols["key"] == Gallery(tmp_path / "local").table.cols["key"]


from instructdiffusion_data.readers._base import RecordSource  # noqa: E402
from instructdiffusion_data.readers.sa1b import Sa1bConfig, Sa1bSource  # noqa: E402


class Sa1bRecords(RecordSource):
    """The SA-1B regions as one record stream: a record source (split first, then read by slice)."""

    name = "sa1b_records"
    Config = Sa1bConfig

    def input_files(self) -> list[str]:
        return sorted(str(p) for p in Path(self.config.root).rglob("sa_*.json"))

    def records(self):
        yield from Sa1bSource(self.config).iter_records()


def test_record_source_is_split_then_built_per_shard(demo, tmp_path):
    """A record source is split into record files (as idd run does) and its shards built like any
    other: the gallery equals the one of the same regions read as a file-group source."""
    sa1b = {"root": str(demo / "sa1b"), "select": {"min_predicted_iou": 0.88, "min_stability": 0.92}}
    files = build(GalleryConfig, {"sources": [{"type": "sa1b", **sa1b}], "records_per_shard": 4})
    records = build(GalleryConfig, {"sources": [{"type": "tests.test_gallery_scale:Sa1bRecords", **sa1b,
                                                 "records_per_shard": 10}]})
    a = build_gallery(files, tmp_path / "files", progress=False)
    b = build_gallery(records, tmp_path / "records", progress=False)
    assert b["shards"] == -(-b["records"] // 10) > 2 and b["records"] == a["records"]
    assert (a["patches"], a["rejected"], a["rejected_reasons"]) == (b["patches"], b["rejected"], b["rejected_reasons"])
    assert Gallery(tmp_path / "files").table.cols["key"] == Gallery(tmp_path / "records").table.cols["key"]
    assert (tmp_path / "files" / "embeddings.npy").read_bytes() == (tmp_path / "records" / "embeddings.npy").read_bytes()
    assert not (tmp_path / "records" / ".plan").exists()
