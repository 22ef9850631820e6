"""``idd filter``: new thresholds from the parquet alone move exactly the rows they select; auditor
labels win; shards stay valid WebDataset tars with the same image bytes; reports are written."""

import json
import tarfile

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from instructdiffusion_data import config as cfgmod
from instructdiffusion_data import runner
from instructdiffusion_data.audit.labels import LabelStore
from instructdiffusion_data.cli import main as idd
from instructdiffusion_data.generations import current
from instructdiffusion_data.imageio import decode
from tests.helpers_quality import removal_pair


def _build(tmp_path, n=8, t1=0.0, use_ray=False, out="shards"):
    cfg = cfgmod.build(cfgmod.PipelineConfig, {
        "name": "qpairs", "version": "v1", "seed": 0,
        "source": {"type": "tests.helpers_quality:PairSource", "n": n},
        "stages": [
            {"type": "tests.helpers_quality:RemoveStage", "blur_step": 0.6, "drop_record": 1, "batch_size": 4},
            {"type": "quality_filter", "aesthetic_tgt_min": t1, "aesthetic_diff_max": None,
             "background_change_max": None, "edit_change_min": 4.0, "batch_size": 4},
        ],
        "writer": {"out": str(tmp_path / out), "records_per_shard": 3},
    })
    summary = runner.run(cfg, use_ray=use_ray)
    return summary.root


def _cur(root):
    """The folder of the output's current generation (idd filter in place writes a new one)."""
    return current(root, load_manifest=False).path


def _rows(root):
    root = _cur(root)
    out = {}
    for split in ("train", "rejected"):
        for p in sorted((root / split).glob("*.parquet")):
            for r in pq.read_table(p).to_pylist():
                r["meta"] = json.loads(r["meta"])
                r["split"] = split
                r["path"] = root / split / r["tar"]
                out[r["key"]] = r
    return out


def _member(r, col):
    with open(r["path"], "rb") as fh:
        fh.seek(r[f"{col}_offset"])
        return fh.read(r[f"{col}_size"])


def test_refilter_moves_exactly_the_selected_rows(tmp_path, capsys):
    root = _build(tmp_path)
    before = _rows(root)
    assert len(before) == 8
    earlier = [k for k, r in before.items() if r["drop_reason"] == "remove_disc: earlier failure"]
    assert len(earlier) == 1 and before[earlier[0]]["split"] == "rejected"
    scores = {k: r["meta"]["scores"]["aesthetic_tgt"] for k, r in before.items()}
    assert all(before[k]["split"] == "train" for k in before if k not in earlier)
    t = float(np.median(sorted(scores.values())))
    src_bytes = {k: _member(r, "src") for k, r in before.items()}
    tars = {p.relative_to(root): p.read_bytes() for p in sorted(root.glob("*/*.tar"))}

    assert idd(["filter", str(root), "--set", f"aesthetic_tgt_min={t}"]) == 0
    assert current(root).number == 1 and _cur(root) == root / "generations" / "0001"
    printed = capsys.readouterr().out
    after = _rows(root)
    expect_rejected = {k for k, s in scores.items() if s < t} | set(earlier)
    assert {k for k, r in after.items() if r["split"] == "rejected"} == expect_rejected
    moved = {k for k in after if before[k]["split"] == "train" and after[k]["split"] == "rejected"}
    assert moved == {k for k, s in scores.items() if s < t and k not in earlier} and moved
    assert f"train -> rejected: {len(moved)}" in printed and "aesthetic_tgt_min" in printed
    for k in moved:
        assert after[k]["drop_class"] == "aesthetic_tgt below minimum"  # the rule's class; t is a detail
        assert after[k]["drop_reason"].startswith("aesthetic_tgt below minimum")
        assert after[k]["meta"]["filter"]["thresholds"]["aesthetic_tgt_min"] == t
    assert after[earlier[0]]["drop_reason"] == "remove_disc: earlier failure"  # never resurrected
    # image bytes copied unchanged, tars are valid WebDataset tars whose json agrees with the split
    for k, r in after.items():
        assert _member(r, "src") == src_bytes[k]
        with tarfile.open(r["path"]) as tf:
            doc = json.loads(tf.extractfile(f"{k}.json").read())
            assert doc["keep"] == (r["split"] == "train")
            assert decode(tf.extractfile(f"{k}.tgt.jpg").read()).shape[2] == 3
    manifest = json.loads((_cur(root) / "manifest.json").read_text())
    assert manifest["splits"]["rejected"]["rows"] == len(expect_rejected)
    assert manifest["refilter"]["moved_to_rejected"] == {"aesthetic_tgt_min": len(moved)}
    # report: numbers and a histogram per score
    rep = json.loads((_cur(root) / "filter_report.json").read_text())
    assert rep["drops_per_rule"] == {"aesthetic_tgt_min": len(moved)}
    assert rep["thresholds"]["aesthetic_tgt_min"] == t
    assert sum(rep["scores"]["aesthetic_tgt"]["histogram"]["rejected"]) == len(expect_rejected)
    png = cv2.imread(str(_cur(root) / rep["scores"]["aesthetic_tgt"]["png"]))
    assert png is not None and png.shape[2] == 3

    # relax again into a new folder: the rows come back, the in-place output is left alone
    out2 = tmp_path / "relaxed"
    assert idd(["filter", str(root), "--set", "aesthetic_tgt_min=none", "--out", str(out2)]) == 0
    relaxed = _rows(out2)
    assert {k for k, r in relaxed.items() if r["split"] == "rejected"} == set(earlier)
    assert f"rejected -> train: {len(moved)}" in capsys.readouterr().out
    assert _rows(root).keys() == after.keys() and {k for k, r in _rows(root).items() if r["split"] == "rejected"} \
        == expect_rejected

    # back to the thresholds of the run: byte-identical shards (nothing else changed on the way)
    assert idd(["filter", str(root), "--set", "aesthetic_tgt_min=0.0"]) == 0
    assert current(root).number == 2
    assert {p.relative_to(_cur(root)): p.read_bytes() for p in sorted(_cur(root).glob("*/*.tar"))} == tars


def test_auditor_labels_override(tmp_path, capsys):
    root = _build(tmp_path, n=6)
    before = _rows(root)
    scores = {k: r["meta"]["scores"]["aesthetic_tgt"] for k, r in before.items()}
    kept = sorted(k for k, r in before.items() if r["split"] == "train")
    ranked = sorted(kept, key=lambda k: scores[k])
    low, high = ranked[0], ranked[-1]
    t = (scores[ranked[0]] + scores[ranked[1]]) / 2  # only `low` fails
    store = LabelStore(root, "qpairs/v1")
    store.add(low, "reject", "ann")
    store.add(low, "accept", "bob")  # newest wins: accept
    store.add(high, "accept", "ann")
    store.add(high, "reject", "bob")  # newest wins: reject
    assert idd(["filter", str(root), "--set", f"aesthetic_tgt_min={t}"]) == 0
    after = _rows(root)
    assert after[low]["split"] == "train" and after[low]["meta"]["filter"]["audit"] == "accept"
    assert after[high]["split"] == "rejected" and after[high]["drop_reason"] == "audit:reject"
    capsys.readouterr()
    assert idd(["filter", str(root), "--set", f"aesthetic_tgt_min={t}", "--no-audit", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "auditor labels applied: 0" in printed
    assert "train -> rejected: 1" in printed and "rejected -> train: 1" in printed  # high back, low out
    assert {k: r["split"] for k, r in _rows(root).items()} == {k: r["split"] for k, r in after.items()}  # dry run


def test_filter_errors(tmp_path, capsys):
    root = _build(tmp_path, n=3)
    assert idd(["filter", str(root), "--set", "sharpness_min=3"]) == 2
    assert "unknown rule" in capsys.readouterr().err
    assert idd(["filter", str(tmp_path / "nothing")]) == 2
    assert "not a shard output" in capsys.readouterr().err
    assert idd(["filter", str(root), "--report-only"]) == 0
    assert (_cur(root) / "filter_report.json").is_file()


@pytest.mark.ml
def test_giqa_build_reference_from_folder_and_output(tmp_path, capsys):
    root = _build(tmp_path, n=4)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    from instructdiffusion_data.imageio import encode_jpeg

    for i in range(5):
        (imgs / f"{i}.jpg").write_bytes(encode_jpeg(removal_pair(20 + i)[0]))
    assert idd(["giqa", "build-reference", str(imgs), "--out", str(tmp_path / "r1")]) == 0
    assert idd(["giqa", "build-reference", str(root), "--out", str(tmp_path / "r2"), "--member", "both"]) == 0
    out = capsys.readouterr().out
    assert "5 images" in out
    doc = json.loads((tmp_path / "r2" / "giqa.json").read_text())
    n_train = json.loads((root / "manifest.json").read_text())["splits"]["train"]["rows"]
    assert doc["count"] == 2 * n_train and doc["feature"] == "classical/1"
    assert (tmp_path / "r2" / "index.faiss").stat().st_size > 0


@pytest.mark.slow
def test_filter_on_ray_matches_local(tmp_path, ray_local):
    local = _build(tmp_path, n=6, t1=8.5)
    ray_root = _build(tmp_path, n=6, t1=8.5, use_ray=True, out="ray_shards")
    tars = sorted(p.relative_to(local) for p in local.glob("*/*.tar"))
    assert tars == sorted(p.relative_to(ray_root) for p in ray_root.glob("*/*.tar"))
    for rel in tars:
        assert (local / rel).read_bytes() == (ray_root / rel).read_bytes()
    rows = _rows(ray_root)
    assert any(r["drop_class"] == "aesthetic_tgt below minimum" and "threshold=8.5" in r["drop_reason"]
               for r in rows.values())
