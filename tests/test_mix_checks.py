"""``idd mix`` checks each manifest against the files it names and reports OS errors as one line naming the path
(issue 14 item 9): a malformed field, a deleted shard tar, a wrong-sized tar, an unwritable ``--out``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from instructdiffusion_data.cli import main as idd
from tests.test_quality_refilter import _build


@pytest.fixture
def out(tmp_path):
    root = _build(tmp_path, n=8)
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"name: t\nroot: {tmp_path / 'shards'}\ndatasets:\n  - {{name: qpairs, output: qpairs/v1}}\n")
    return root, mix


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("idd mix: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _edit(root: Path, fn) -> Path:
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))
    return root / "manifest.json"


@pytest.mark.parametrize("field, edit", [
    ("splits.train.rows", lambda m: m["splits"]["train"].__setitem__("rows", "many")),
    ("splits.train.rows", lambda m: m["splits"]["train"].__setitem__("rows", 1000)),  # not what the shards hold
    ("splits.train.shards[1].rows", lambda m: m["splits"]["train"]["shards"][1].__setitem__("rows", -2)),
    ("splits.train.shards[0].tar", lambda m: m["splits"]["train"]["shards"][0].__setitem__("tar", "../../etc/passwd")),
    ("splits.train.shards", lambda m: m["splits"]["train"].__setitem__("shards", {"a": 1})),
    ("splits.train.tasks", lambda m: m["splits"]["train"].__setitem__("tasks", ["edit"])),
    ("splits.train", lambda m: m["splits"].__setitem__("train", 7)),
    ("mixture_weight", lambda m: m.__setitem__("mixture_weight", "heavy")),
])
def test_malformed_manifest_field_is_one_line(out, tmp_path, capsys, field, edit):
    root, mix = out
    man = _edit(root, edit)
    capsys.readouterr()
    assert idd(["mix", str(mix), "--out", str(tmp_path / "m.json")]) == 2
    line = _err(capsys)
    assert str(man) in line and f"field {field}:" in line, line
    assert not (tmp_path / "m.json").exists()


def test_unreadable_manifest_is_one_line(out, tmp_path, capsys):
    root, mix = out
    (root / "manifest.json").write_text("{not json")
    capsys.readouterr()
    assert idd(["mix", str(mix), "--out", str(tmp_path / "m.json")]) == 2
    assert str(root / "manifest.json") in _err(capsys)


def test_deleted_or_wrong_sized_shard_is_one_line(out, tmp_path, capsys):
    root, mix = out
    tar = root / "train" / "000001.tar"
    data = tar.read_bytes()
    tar.unlink()
    capsys.readouterr()
    assert idd(["mix", str(mix), "--out", str(tmp_path / "m.json")]) == 2
    line = _err(capsys)
    assert str(tar) in line and "missing" in line and "splits.train.shards[1].tar" in line
    tar.write_bytes(data[:-512])
    assert idd(["mix", str(mix), "--out", str(tmp_path / "m.json")]) == 2
    line = _err(capsys)
    assert str(tar) in line and f"{len(data) - 512} bytes" in line and str(len(data)) in line
    tar.write_bytes(data)
    assert idd(["mix", str(mix), "--out", str(tmp_path / "m.json")]) == 0


def test_manifest_without_sizes_is_tolerated_with_a_warning(out, tmp_path, caplog):
    root, mix = out

    def strip(m):
        for e in m["splits"]["train"]["shards"]:
            e.pop("tar_bytes", None)
            e.pop("tar_sha256", None)

    _edit(root, strip)
    assert idd(["mix", str(mix), "--out", str(tmp_path / "m.json")]) == 0
    assert "without tar_bytes" in caplog.text
    d = json.loads((tmp_path / "m.json").read_text())["datasets"][0]
    assert all(f["bytes"] is None for f in d["shard_files"])


def test_unwritable_out_is_one_line(out, tmp_path, capsys):
    root, mix = out
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    capsys.readouterr()
    assert idd(["mix", str(mix), "--out", str(blocker / "m.json")]) == 2  # its folder is a file
    line = _err(capsys)
    assert str(blocker) in line and "cannot write the mixture" in line
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        target = ro / "m.json"
    else:  # root writes through file modes; sysfs refuses new files even to root
        if not Path("/sys/kernel").is_dir():
            pytest.skip("no read-only folder available to root")
        target = Path("/sys/idd-mixture-test.json")
    assert idd(["mix", str(mix), "--out", str(target)]) == 2
    line = _err(capsys)
    assert str(target.parent) in line and "cannot write the mixture" in line
