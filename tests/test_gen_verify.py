"""The consumer side of per-file sizes and hashes (issue 14 item 12): ``idd inspect --verify`` checks every file
of the current generation against the manifest, the trainer refuses (or skips, when asked) a shard whose size
does not match, older manifests without the fields are tolerated with a warning, and ``idd filter`` records the
fields for the generation it writes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from instructdiffusion_data.cli import main as idd
from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.generations import current
from tests.test_gen_damaged import _strip_sizes
from tests.test_gen_filter import check_output, sha
from tests.test_quality_refilter import _build


def _verify(capsys, root) -> tuple[int, list[str], str]:
    capsys.readouterr()
    rc = idd(["inspect", str(root), "--verify"])
    cap = capsys.readouterr()
    return rc, [ln for ln in cap.out.splitlines() if ln.strip()], cap.err


def test_verify_reports_each_damaged_file(tmp_path, capsys):
    root = _build(tmp_path, n=8)
    rc, lines, err = _verify(capsys, root)
    assert rc == 0 and lines == [] and "12 files checked (12 by sha256), 0 damaged" in err
    flipped = root / "train" / "000000.tar"
    data = bytearray(flipped.read_bytes())
    data[700] ^= 0xFF  # same size, other bytes
    flipped.write_bytes(bytes(data))
    grown = root / "rejected" / "000000.parquet"
    grown.write_bytes(grown.read_bytes() + b"\0")
    gone = root / "train" / "000002.tar"
    gone.unlink()
    rc, lines, _ = _verify(capsys, root)
    assert rc == 1 and len(lines) == 3, lines
    by = {ln.split(":")[0]: ln for ln in lines}
    assert "sha256" in by[str(flipped)]
    assert f"{grown.stat().st_size} bytes, the manifest says {grown.stat().st_size - 1}" in by[str(grown)]
    assert "missing" in by[str(gone)] and "splits.train.shards[2].tar" in by[str(gone)]
    # a folder of outputs: every output is checked
    rc, lines, _ = _verify(capsys, tmp_path / "shards")
    assert rc == 1 and len(lines) == 3


def test_verify_tolerates_older_manifests_with_a_warning(tmp_path, capsys, caplog):
    root = _build(tmp_path, n=6)
    _strip_sizes(root)
    rc, lines, _ = _verify(capsys, root)
    assert rc == 0 and lines == [] and "no size or sha256" in caplog.text
    # still checked: presence and the parquet's row count
    m = json.loads((root / "manifest.json").read_text())
    m["splits"]["train"]["shards"][0]["rows"] += 1
    m["splits"]["train"]["rows"] += 1
    (root / "manifest.json").write_text(json.dumps(m))
    rc, lines, _ = _verify(capsys, root)
    assert rc == 1 and len(lines) == 1 and "train/000000.parquet" in lines[0] and "rows" in lines[0]


def test_filter_writes_the_fields_and_verify_reads_the_current_generation(tmp_path, capsys):
    root = _build(tmp_path, n=8)
    assert idd(["filter", str(root), "--set", "aesthetic_tgt_min=6.0"]) == 0
    gen = current(root)
    assert gen.number == 1
    for split in ("train", "rejected"):
        for e in gen.manifest["splits"][split]["shards"]:
            for kind in ("tar", "parquet"):
                f = Path(gen.path) / e[kind]
                assert e[f"{kind}_bytes"] == f.stat().st_size and e[f"{kind}_sha256"] == sha(f)
            stats = json.loads((Path(gen.path) / e["tar"].replace(".tar", ".stats.json")).read_text())
            assert stats["files"]["tar"] == {"bytes": e["tar_bytes"], "sha256": e["tar_sha256"]}
    check_output(root)
    rc, lines, _ = _verify(capsys, root)
    assert rc == 0 and lines == []
    (root / "train" / "000000.tar").write_bytes(b"generation 0 is not read any more")
    assert _verify(capsys, root)[0] == 0
    damaged = Path(gen.path) / "train" / "000001.tar"
    damaged.write_bytes(damaged.read_bytes()[:-1024])
    rc, lines, _ = _verify(capsys, root)
    assert rc == 1 and lines[0].startswith(str(damaged))


def test_trainer_refuses_or_skips_a_wrong_sized_shard(tmp_path, caplog):
    from trainer.data import DataConfig
    from trainer.datasets import load_mixture, resolve_datasets, specs_from_outputs

    root = _build(tmp_path, n=8)
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"name: t\nroot: {tmp_path / 'shards'}\ndatasets:\n  - {{name: qpairs, output: qpairs/v1}}\n")
    assert idd(["mix", str(mix), "--out", str(tmp_path / "m.json")]) == 0
    assert len(specs_from_outputs([str(root)], {})[0].shards) == 3
    tar = root / "train" / "000001.tar"
    tar.write_bytes(tar.read_bytes()[:-512])
    with pytest.raises(ConfigError, match=r"shard is \d+ bytes, its manifest says \d+: .*000001.tar"):
        specs_from_outputs([str(root)], {})
    with pytest.raises(ConfigError, match="its manifest says") as e:
        load_mixture(tmp_path / "m.json")
    assert "000001.tar" in str(e.value) and "data.bad_shards" in str(e.value)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        specs = resolve_datasets(DataConfig(mixture=str(tmp_path / "m.json"), bad_shards="skip"))
    assert len(specs[0].shards) == 2 and all("000001" not in s for s in specs[0].shards)
    assert "1 damaged or missing shard(s) skipped" in caplog.text
    specs = resolve_datasets(DataConfig(outputs=[str(root)], bad_shards="skip"))
    assert len(specs[0].shards) == 2
    # every shard damaged: nothing to train on
    for p in (root / "train").glob("*.tar"):
        p.write_bytes(b"")
    with pytest.raises(ConfigError, match="every shard is damaged or missing"):
        resolve_datasets(DataConfig(outputs=[str(root)], bad_shards="skip"))


def test_trainer_config_key_and_older_mixtures(tmp_path, caplog):
    from trainer.config import make_config
    from trainer.datasets import load_mixture

    cfg = make_config(output_dir=str(tmp_path / "o"), max_train_steps=1, data={"bad_shards": "skip"})
    assert cfg.data.bad_shards == "skip"
    with pytest.raises(ConfigError):
        make_config(output_dir="o", max_train_steps=1, data={"bad_shards": "sometimes"})
    root = _build(tmp_path, n=6)
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"name: t\nroot: {tmp_path / 'shards'}\ndatasets:\n  - {{name: qpairs, output: qpairs/v1}}\n")
    assert idd(["mix", str(mix), "--out", str(tmp_path / "m.json")]) == 0
    doc = json.loads((tmp_path / "m.json").read_text())
    for d in doc["datasets"]:
        d.pop("shard_files")  # a mixture written before sizes were recorded
    (tmp_path / "old.json").write_text(json.dumps(doc))
    assert load_mixture(tmp_path / "old.json")[0].samples == doc["datasets"][0]["samples"]
    assert "without a recorded size" in caplog.text
    assert root.is_dir()
