"""``idd align candidates``: per benchmark sample, edits at several guidance pairs written as an output the
auditor groups by sample; picks through the auditor API; ``idd export-alignment`` on them; resume."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pytest

from instructdiffusion_data.cli import main as idd
from instructdiffusion_data.errors import ConfigError, UserError
from tests.helpers_eval import halves, make_benchmark, make_ip2p_model

pytest.importorskip("torch")
pytest.importorskip("diffusers")

pytestmark = pytest.mark.ml

TOKEN = "token-for-candidate-tests"
SCALES = "7.5:1.5,7.5:1.2,5:1.5"


def test_parse_scales():
    from instructdiffusion_data.evaluation.candidates import parse_scales

    assert parse_scales(" 7.5:1.5, 5:1.2 ,") == [(7.5, 1.5), (5.0, 1.2)]
    for bad, msg in (("7.5", "not TEXT:IMAGE"), ("a:1", "not TEXT:IMAGE"), ("-1:1", "not TEXT:IMAGE"),
                     ("nan:1", "not TEXT:IMAGE"), ("5:1,5.0:1.0", "given twice"), ("", "at least one")):
        with pytest.raises(ConfigError, match=msg):
            parse_scales(bad)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from instructdiffusion_data.evaluation.candidates import CandidatesConfig, make_candidates, parse_scales
    from instructdiffusion_data.evaluation.editor import Editor, EditorConfig

    root = tmp_path_factory.mktemp("cands")
    model = make_ip2p_model(root / "model")
    bench = make_benchmark(root, n=12)
    ecfg = EditorConfig(model=str(model), steps=2, resolution=64, batch_size=4, device="cpu", local_files_only=True)
    editor = Editor(ecfg)
    out = root / "shards" / "align_candidates" / "v1"
    cfg = CandidatesConfig(model=str(model), benchmark=str(bench), out=str(out), scales=parse_scales(SCALES),
                           samples_per_shard=2, editor=ecfg)
    manifest = make_candidates(cfg, editor=editor)
    return {"root": root, "model": model, "bench": bench, "out": out, "cfg": cfg, "editor": editor,
            "manifest": manifest, "ecfg": ecfg}


def _sidecars(out):
    import pyarrow.parquet as pq

    rows = []
    for f in sorted((out / "train").glob("*.parquet")):
        rows += pq.read_table(f).to_pylist()
    return rows


def test_candidates_output_grouped_by_sample(env):
    from instructdiffusion_data.imageio import decode

    align = halves(env["bench"])["align"]
    n = sum(align.values())
    m = env["manifest"]
    assert m["splits"]["train"]["rows"] == n * 3 and m["splits"]["rejected"]["rows"] == 0
    assert m["splits"]["train"]["tasks"] == {f"edit_{c}": k * 3 for c, k in align.items()}
    assert len(m["splits"]["train"]["shards"]) == (n + 1) // 2 and m["candidates"]["group_key"] == "meta.group_id"
    rows = _sidecars(env["out"])
    groups: dict[str, list[dict]] = {}
    for r in rows:
        meta = json.loads(r["meta"])
        groups.setdefault(meta["group_id"], []).append(meta)
        assert meta["benchmark_sample"]["split"] == "align" and meta["benchmark_sample"]["key"] == meta["group_id"]
        assert r["output"] == "align_candidates" and r["version"] == "v1"
    assert len(groups) == n
    for metas in groups.values():
        pairs = sorted((g["guidance_scale"], g["image_guidance_scale"]) for g in metas)
        assert pairs == [(5, 1.5), (7.5, 1.2), (7.5, 1.5)]
        assert len({g["seed"] for g in metas}) == 1  # the same noise at every guidance pair
    with tarfile.open(env["out"] / "train" / "000000.tar") as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
    srcs = [v for k, v in members.items() if ".src." in k]
    tgts = [v for k, v in members.items() if ".tgt." in k]
    assert srcs and len(srcs) == len(tgts)
    for s, t in zip(srcs, tgts):
        assert decode(s).shape == decode(t).shape == (64, 64, 3)
    # candidates of one sample differ (guidance changes the edit), their sources are the same bytes
    by_group: dict[str, set] = {}
    for r in rows:
        by_group.setdefault(json.loads(r["meta"])["group_id"], set()).add(r["key"])
    assert all(len(v) == 3 for v in by_group.values())


def test_auditor_groups_picks_and_export(env, tmp_path):
    from fastapi.testclient import TestClient

    from instructdiffusion_data.audit.app import create_app
    from instructdiffusion_data.audit.labels import labels_path
    from instructdiffusion_data.imageio import decode

    c = TestClient(create_app(env["root"] / "shards", token=TOKEN, cache_dir=tmp_path / "cache", refresh_s=0))
    h = {"X-Audit-Token": TOKEN}
    output = "align_candidates/v1"
    groups = c.get("/api/align/groups", params={"output": output, "page_size": 100}).json()
    n = sum(halves(env["bench"])["align"].values())
    assert groups["total"] == n and all(g["candidates"] == 3 for g in groups["rows"])
    g = [row["group_id"] for row in groups["rows"]]
    cands = c.get("/api/align/group", params={"output": output, "group": g[0]}).json()["candidates"]
    assert [x["guidance_scale"] for x in cands] == [5.0, 7.5, 7.5]
    assert [x["image_guidance_scale"] for x in cands] == [1.5, 1.2, 1.5]  # shown and ordered by both scales
    pick = lambda grp, keys: c.post("/api/align/pick", headers=h, json={"output": output, "group": grp, "keys": keys,
                                                                         "auditor": "ann"})
    assert pick(g[0], [cands[0]["key"], cands[2]["key"]]).status_code == 200  # the best two
    assert pick(g[1], []).status_code == 200  # none is good
    g2 = [x["key"] for x in c.get("/api/align/group", params={"output": output, "group": g[2]}).json()["candidates"]]
    assert pick(g[2], g2[1:2]).status_code == 200
    assert pick(g[2], g2[:3]).status_code == 400  # at most two
    labels = labels_path(env["out"])
    assert labels.is_file()
    dest = tmp_path / "alignment" / "v1"
    assert idd(["export-alignment", str(labels), "--out", str(dest)]) == 0
    man = json.loads((dest / "manifest.json").read_text())
    assert man["splits"]["train"]["rows"] == 3 and man["splits"]["rejected"]["rows"] == 0
    src_rows = {r["key"]: r for r in _sidecars(env["out"])}
    with tarfile.open(dest / "train" / "000000.tar") as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
    keys = sorted({name.split(".")[0] for name in members})
    assert set(keys) == {cands[0]["key"], cands[2]["key"], g2[1]}
    for k in keys:
        doc = json.loads(members[f"{k}.json"])
        assert doc["meta"]["alignment"]["group_id"] in (g[0], g[2]) and doc["meta"]["alignment"]["auditor"] == "ann"
        assert doc["meta"]["guidance_scale"] == json.loads(src_rows[k]["meta"])["guidance_scale"]
        assert doc["task"].startswith("edit_") and members[f"{k}.txt"].decode() == src_rows[k]["instruction"]
        assert decode(members[f"{k}.src.jpg"]).shape == decode(members[f"{k}.tgt.jpg"]).shape


def test_resume_refuse_and_overwrite(env, tmp_path):
    from instructdiffusion_data.evaluation.candidates import CandidatesConfig, make_candidates, parse_scales

    cfg, editor, out = env["cfg"], env["editor"], env["out"]
    before = editor.images_done
    sha = hashlib.sha256((out / "train" / "000001.tar").read_bytes()).hexdigest()
    make_candidates(cfg, editor=editor)  # everything done: nothing edited again
    assert editor.images_done == before
    # a killed run: shard 1 never committed -> only its samples are edited again, to the same bytes
    for split in ("train", "rejected"):
        (out / split / "000001.stats.json").unlink()
    make_candidates(cfg, editor=editor)
    assert editor.images_done == before + env["manifest"]["splits"]["train"]["shards"][1]["rows"]
    assert hashlib.sha256((out / "train" / "000001.tar").read_bytes()).hexdigest() == sha
    # other settings: refused with the changed field named, then replaced with --overwrite
    other = CandidatesConfig(**{**cfg.__dict__, "scales": parse_scales("7.5:1.5,3:1")})
    with pytest.raises(UserError, match=r"other settings \(scales changed\)"):
        make_candidates(other, editor=editor)
    with pytest.raises(UserError, match="not an earlier `idd align candidates` output"):
        make_candidates(CandidatesConfig(**{**cfg.__dict__, "out": str(env["bench"])}), editor=editor)
    dest = tmp_path / "c" / "v1"
    m = make_candidates(CandidatesConfig(**{**other.__dict__, "out": str(dest), "limit": 1}), editor=editor)
    assert m["splits"]["train"]["rows"] == len(halves(env["bench"])["align"]) * 2


def test_cli_candidates(env, tmp_path, capsys):
    out = tmp_path / "root" / "cands" / "v1"
    args = ["align", "candidates", str(env["model"]), str(env["bench"]), "--out", str(out), "--steps", "1",
            "--resolution", "64", "--device", "cpu", "--local-files-only", "--limit", "1"]
    assert idd([*args, "--scales", "6:1.5,4:1.5"]) == 0
    text = capsys.readouterr().out
    k = len(halves(env["bench"])["align"])
    assert f"{k} samples x 2 guidance pairs x 1 = {2 * k} candidates" in text and "idd audit" in text
    assert idd([*args, "--scales", "6:1.5", "--overwrite"]) == 2  # one candidate per sample is nothing to pick from
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least 2 candidates" in err[0]
