"""``idd mix`` on small outputs written by the runner, and the part-2 pipeline configs end to end."""

import json
import tarfile
from pathlib import Path

import pytest

from instructdiffusion_data import cli, runner
from instructdiffusion_data.commands.mix import FORMAT, build_mixture, load_mixture
from instructdiffusion_data.config import load_pipeline_config
from instructdiffusion_data.demo import generate_all
from instructdiffusion_data.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
MINE = ["keypoints_mpii", "keypoints_crowdpose", "keypoints_aic", "deblur_gopro", "deblur_reds", "denoise_sidd",
        "dewatermark_clwd", "edit_instructpix2pix", "edit_magicbrush", "edit_gier", "edit_gqa_inpaint"]
DEMOS = ["mpii", "crowdpose", "aic", "gopro", "reds", "sidd", "clwd", "instructpix2pix", "magicbrush", "gier", "gqa_inpaint"]


@pytest.fixture
def small_outputs(tmp_path, monkeypatch):
    """Demo data for GIER and SIDD, run through their real pipeline configs without Ray."""
    generate_all(tmp_path / "demo_data", 16, 0, ["gier", "sidd"])
    monkeypatch.chdir(tmp_path)  # config paths (demo_data/..., shards) are relative to the working directory
    out = {}
    for name, sets in (("edit_gier", ["writer.records_per_shard=3"]), ("denoise_sidd", ["writer.records_per_shard=2"])):
        cfg = load_pipeline_config(REPO / "configs" / "pipelines" / f"{name}.yaml", sets)
        out[name] = runner.run(cfg, out=str(tmp_path / "shards"), use_ray=False).manifest
    return tmp_path, out


def _mixture(path, entries, root="shards"):
    lines = ["name: test", "seed: 7", f"root: {root}", "datasets:"]
    lines += [f"  - {json.dumps(e)}" for e in entries]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mix_manifest_and_table(small_outputs, capsys, caplog):
    tmp, manifests = small_outputs
    mix = _mixture(tmp / "mix.yaml", [{"name": "edit_gier", "output": "edit_gier/v2", "weight": 10.0},
                                     {"name": "denoise_sidd", "output": "denoise_sidd/v2"},
                                     {"name": "ieiw_replacement", "output": "ieiw_replacement/v1", "weight": 1.0}])
    rc = cli.main(["mix", str(mix), "--out", "mixes/mixture.json"])
    assert rc == 0
    doc = json.loads((tmp / "mixes" / "mixture.json").read_text())
    assert set(doc) == {"format", "seed", "datasets", "tasks"} and doc["format"] == FORMAT and doc["seed"] == 7
    assert [d["name"] for d in doc["datasets"]] == ["edit_gier", "denoise_sidd"]  # the missing output is skipped
    assert "ieiw_replacement: no output" in caplog.text
    gier, sidd = doc["datasets"]
    assert set(gier) == {"name", "output", "generation", "manifest", "tasks", "samples", "weight", "shards",
                         "shard_files", "effective_per_epoch"}
    assert gier["generation"] == 0 and [f["tar"] for f in gier["shard_files"]] == gier["shards"]
    train = manifests["edit_gier"]["splits"]["train"]
    assert gier["samples"] == train["rows"] > 0 and gier["tasks"] == {"edit": train["rows"]}
    assert gier["weight"] == 10.0 and gier["effective_per_epoch"] == 10.0 * train["rows"]
    # weight omitted: the output's writer.mixture_weight (denoise_sidd.yaml says 20)
    assert sidd["weight"] == manifests["denoise_sidd"]["mixture_weight"] == 20.0
    assert doc["tasks"] == {"denoise": 20.0 * sidd["samples"], "edit": 10.0 * gier["samples"]}
    # shard paths are relative to the mixture file's folder and hold exactly the counted samples
    assert len(gier["shards"]) > 1 and not Path(gier["shards"][0]).is_absolute()
    n = 0
    for s in gier["shards"]:
        with tarfile.open(tmp / "mixes" / s) as t:
            n += sum(1 for m in t.getnames() if m.endswith(".txt"))
    assert n == gier["samples"]
    assert (tmp / "mixes" / gier["output"] / "manifest.json").is_file()
    table = capsys.readouterr().out
    row = next(ln for ln in table.splitlines() if ln.startswith("edit_gier"))
    assert row.split()[:5] == ["edit_gier", "edit", str(gier["samples"]), "10", f"{10.0 * gier['samples']:.1f}"]
    assert "denoise_sidd" in table and "(all)" in table


def test_mix_absolute_root_override_and_errors(small_outputs, tmp_path, capsys):
    tmp, _ = small_outputs
    mix = _mixture(tmp / "mix.yaml", [{"name": "edit_gier", "output": "edit_gier/v2"}], root="elsewhere")
    doc = build_mixture(load_mixture(mix), tmp / "m.json", root=str(tmp / "shards"), absolute=True)
    assert all(Path(s).is_absolute() and Path(s).is_file() for s in doc["datasets"][0]["shards"])
    assert cli.main(["mix", str(mix), "--out", str(tmp / "m2.json")]) == 2  # nothing under root 'elsewhere'
    assert "none of the 1 outputs exists" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="duplicate"):
        load_mixture(_mixture(tmp / "dup.yaml", [{"name": "a"}, {"name": "a"}]))
    with pytest.raises(ConfigError, match="weight"):
        load_mixture(_mixture(tmp / "neg.yaml", [{"name": "a", "weight": -1}]))
    with pytest.raises(ConfigError, match="unknown key"):
        load_mixture(_mixture(tmp / "bad.yaml", [{"name": "a", "wieght": 1}]))


def test_instructdiffusion_mixture_names_every_output():
    cfg = load_mixture(REPO / "configs" / "mixtures" / "instructdiffusion.yaml")
    names = {e.name for e in cfg.datasets}
    assert set(MINE) | {"keypoints_coco", "semseg_cocostuff", "refseg_refcoco", "refseg_grefcoco", "ieiw_removal",
                        "ieiw_replacement"} <= names
    assert all(e.weight and e.weight > 0 for e in cfg.datasets)


@pytest.mark.slow
def test_part2_pipelines_run_from_configs(tmp_path, monkeypatch):
    generate_all(tmp_path / "demo_data", 8, 0, DEMOS)
    monkeypatch.chdir(tmp_path)
    reasons = {}
    for name in MINE:
        cfg = load_pipeline_config(REPO / "configs" / "pipelines" / f"{name}.yaml")
        summary = runner.run(cfg, use_ray=False)
        train = summary.manifest["splits"]["train"]
        assert train["rows"] > 0, name
        assert (tmp_path / "shards" / name / "v2" / "manifest.json").is_file()
        reasons[name] = summary.manifest["splits"]["rejected"]["drop_reasons"]
    # the demo's bad input on purpose is counted per reason and kept in rejected/
    assert reasons["keypoints_mpii"] == {"image file missing": 1}
    assert reasons["deblur_gopro"] == {"missing pair half": 1}
    assert reasons["deblur_reds"] == {"enhance_pair: size mismatch between source and target": 1}  # sizes: details
    assert reasons["dewatermark_clwd"] == {"missing pair half": 1}
    assert reasons["edit_instructpix2pix"] == {"clip_sim_dir<0.2": 1, "instruction is empty": 2}
    assert reasons["edit_magicbrush"] == {"ingest_edit: image is corrupt or not an image": 1}
    assert reasons["edit_gier"] == {"instruction is NaN": 2}
    with tarfile.open(tmp_path / "shards" / "edit_gier" / "v2" / "rejected" / "000000.tar") as t:
        docs = [json.loads(t.extractfile(m).read()) for m in t.getmembers() if m.name.endswith(".json")]
    assert len(docs) == 2 and all(d["keep"] is False and d["drop_reason"].startswith("instruction is NaN") for d in docs)
    rc = cli.main(["mix", str(REPO / "configs" / "mixtures" / "instructdiffusion.yaml"), "--out", "shards/mixture.json"])
    assert rc == 0
    doc = json.loads((tmp_path / "shards" / "mixture.json").read_text())
    assert {d["name"] for d in doc["datasets"]} == set(MINE)
    assert set(doc["tasks"]) == {"keypoint", "deblur", "denoise", "dewatermark", "edit"}
