"""End to end: the shipped config on demo data, without and with Ray; resume and determinism."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from instructdiffusion_data import runner
from instructdiffusion_data.config import load_pipeline_config
from instructdiffusion_data.demo import phrasecut as demo
from instructdiffusion_data.imageio import decode, decode_gray

from .helpers_ieiw_removal import FillGrey, save_script

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "pipelines" / "ieiw_removal.yaml"


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("pcdemo")
    demo.generate(out, 10, 0)
    return out / "phrasecut"


def _cfg(root, extra=()):
    return load_pipeline_config(CONFIG, [f"source.root={root}", "writer.records_per_shard=16", *extra])


def _tar_bytes(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.tar"))}


@pytest.mark.slow
def test_local_run_resume_and_determinism(demo_root, tmp_path):
    cfg = _cfg(demo_root)
    s1 = runner.run(cfg, out=str(tmp_path / "a"), use_ray=False)
    man = s1.manifest
    train = man["splits"]["train"]
    assert train["tasks"]["edit_remove"] == train["tasks"]["edit_add"] > 0
    rej = man["splits"]["rejected"]
    assert rej["rows"] > 0
    assert {"region too small", "too many regions on the image"} & set(rej["drop_reasons"])
    assert s1.shards_written == s1.shards_total >= 2

    root = s1.root
    # every removal in the shards has its addition, with swapped images, in the same tar
    for tar_path in sorted((root / "train").glob("*.tar")):
        with tarfile.open(tar_path) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        metas = {n[:-5]: json.loads(b) for n, b in members.items() if n.endswith(".json")}
        pairs = {}
        for key, meta in metas.items():
            pairs.setdefault(meta["meta"]["pair_id"], {})[meta["meta"]["variant"]] = key
        for pair in pairs.values():
            assert set(pair) == {"remove", "add"}
            rm, add = pair["remove"], pair["add"]
            assert members[f"{rm}.src.jpg"] == members[f"{add}.tgt.jpg"]
            assert members[f"{rm}.txt"].decode().lower().startswith(("remove", "erase", "delete", "get rid", "take",
                                                                      "make", "clear", "wipe", "eliminate",
                                                                      "please", "can you", "edit"))
            mask = decode_gray(members[f"{rm}.mask.png"])
            assert mask.shape == decode(members[f"{rm}.src.jpg"]).shape[:2] and mask.max() == 255
        # parquet offsets point at the image bytes in the tar
        side = pq.read_table(tar_path.with_suffix(".parquet")).to_pylist()
        data = tar_path.read_bytes()
        for r in side[:4]:
            assert data[r["mask_offset"]:r["mask_offset"] + r["mask_size"]] == members[r["mask_member"]]

    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.tar")}
    s2 = runner.run(cfg, out=str(tmp_path / "a"), use_ray=False)
    assert s2.shards_written == 0 and s2.shards_skipped == s1.shards_total
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.tar")} == before

    runner.run(cfg, out=str(tmp_path / "b"), use_ray=False)
    a, b = _tar_bytes(tmp_path / "a"), _tar_bytes(tmp_path / "b")
    assert a and a == b


@pytest.mark.slow
def test_ray_run_matches_local_run(demo_root, tmp_path, ray_local, monkeypatch):
    # The lama backend as a Ray actor pool (the GPU path, here on CPU) with a tiny TorchScript model
    # found through $LAMA_MODEL on the driver; only this stage (later stages have their own tests).
    model = save_script(FillGrey(), tmp_path / "big-lama.pt")
    monkeypatch.setenv("LAMA_MODEL", str(model))
    cfg = _cfg(demo_root, ["stages.inpaint_remove.concurrency=1", "stages.inpaint_remove.backend=lama",
                           "stages.inpaint_remove.device=cpu", "stages.inpaint_remove.image_format=png"])
    cfg.stages = [s for s in cfg.stages if s["type"] == "inpaint_remove"]
    s_ray = runner.run(cfg, out=str(tmp_path / "ray"), use_ray=True)
    runner.run(cfg, out=str(tmp_path / "local"), use_ray=False)
    ray_t, local_t = _tar_bytes(tmp_path / "ray"), _tar_bytes(tmp_path / "local")
    assert ray_t and ray_t == local_t
    assert s_ray.manifest["splits"]["train"]["tasks"]["edit_remove"] > 0
    with tarfile.open(next((s_ray.root / "train").glob("*.tar"))) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
    key = next(n[:-5] for n in members if n.endswith(".json") and "_remove_" in n)
    meta = json.loads(members[f"{key}.json"])["meta"]
    assert meta["inpaint"]["model_id"].startswith("lama:big-lama.pt:sha256-")
    src, tgt = decode(members[f"{key}.src.png"]), decode(members[f"{key}.tgt.png"])
    mask = decode_gray(members[f"{key}.mask.png"]) > 0
    assert (tgt[mask] == 127).all() and np.array_equal(tgt[~mask], src[~mask])
