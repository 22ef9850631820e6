"""Fault suite for ``idd filter`` and ``idd mix`` (issue 14 item 2): each is SIGKILLed at every one of its
commit points in turn (``IDD_FAULT_AT``, counted first on a clean run with ``IDD_FAULT_LOG``). Right after the
kill, readers see a whole generation; after a rerun, every row is once in train or rejected of the current
generation, tars are valid and match their parquets, the manifest equals the files, the labels are intact, and
no leftover of the killed run remains. The mixture file is always the old one or the new one, whole."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instructdiffusion_data import generations
from instructdiffusion_data.audit.labels import LabelStore, labels_path
from instructdiffusion_data.cli import main as idd
from instructdiffusion_data.generations import current
from tests.test_gen_filter import check_output, member_bytes, threshold
from tests.test_quality_refilter import _build

REPO = Path(__file__).resolve().parent.parent
IDD = [str(REPO / ".venv" / "bin" / "idd")] if (REPO / ".venv" / "bin" / "idd").exists() else \
    [sys.executable, "-m", "instructdiffusion_data.cli"]


def run_idd(args: list[str], **env) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("IDD_FAULT")}
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e.update(env)
    return subprocess.run(IDD + args, env=e, cwd=REPO, capture_output=True, text=True, timeout=120)


def label_rows(root: Path) -> list[tuple]:
    con = sqlite3.connect(labels_path(root))
    try:
        return con.execute("SELECT * FROM labels ORDER BY id").fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """An output of 3 shards (idd run without Ray) with two auditor labels beside it."""
    tmp = tmp_path_factory.mktemp("faults")
    root = _build(tmp, n=8)
    keys = sorted(check_output(root))
    store = LabelStore(root, "qpairs/v1")
    store.add(keys[0], "reject", "ann")
    store.add(keys[-1], "accept", "bob")
    return tmp / "shards", root.relative_to(tmp / "shards")


def fresh(pristine, where: Path) -> Path:
    shards, rel = pristine
    if where.exists():
        shutil.rmtree(where)
    shutil.copytree(shards, where)  # the output and its labels (shards/qpairs/.audit/v1)
    return where / rel


def test_filter_killed_at_every_commit_point(pristine, tmp_path):
    t0 = time.monotonic()
    shards, rel = pristine
    args = ["filter", "{root}", "--set", f"aesthetic_tgt_min={threshold(shards / rel)}"]
    # a clean run: the expected result and the commit points
    root = fresh(pristine, tmp_path / "clean")
    labels = label_rows(root)
    gen0 = check_output(root)
    images = member_bytes(root)
    log = tmp_path / "points.log"
    r = run_idd([a.replace("{root}", str(root)) for a in args], IDD_FAULT_LOG=str(log))
    assert r.returncode == 0, r.stderr
    points = log.read_text().split()
    assert len(points) >= 20, points
    assert {"filter.generation", "filter.shard", "filter.report", "filter.manifest", "filter.pointer"} <= set(points)
    expected = check_output(root)
    assert expected.keys() == gen0.keys() and expected != gen0
    assert current(root).number == 1

    for k in range(1, len(points) + 1):
        root = fresh(pristine, tmp_path / "run")
        r = run_idd([a.replace("{root}", str(root)) for a in args], IDD_FAULT_AT=f"*:{k}")
        assert r.returncode == -signal.SIGKILL, (k, points[k - 1], r.returncode, r.stderr[-500:])
        # killed: the current generation is whole, the old one before the switch, the new one after it
        now = check_output(root)
        assert now == (expected if points.index("filter.pointer") < k else gen0), (k, points[k - 1])
        # rerun: the same result (a rerun after the switch re-filters generation 1 with the same thresholds)
        assert idd([a.replace("{root}", str(root)) for a in args]) == 0, (k, points[k - 1])
        assert check_output(root) == expected, (k, points[k - 1])
        assert member_bytes(root) == images
        assert label_rows(root) == labels
        assert not generations.garbage(root), (k, points[k - 1])  # the killed run's leftovers are gone
        leftovers = [p for p in (root / "generations").rglob("*.tmp*")]
        assert not leftovers, (k, leftovers)
    # about 25 s on an idle 2-core machine (37 kills, each a fresh process, and 37 in-process reruns)
    print(f"{len(points)} commit points in {time.monotonic() - t0:.1f}s")


def test_mix_killed_at_every_commit_point(pristine, tmp_path):
    root = fresh(pristine, tmp_path / "shards")
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"name: t\nroot: {tmp_path / 'shards'}\ndatasets:\n  - {{name: qpairs, output: qpairs/v1}}\n")
    out = tmp_path / "mixes" / "mixture.json"
    assert idd(["mix", str(mix), "--out", str(out)]) == 0
    old = out.read_bytes()
    assert json.loads(old)["datasets"][0]["generation"] == 0
    assert idd(["filter", str(root), "--set", f"aesthetic_tgt_min={threshold(root)}"]) == 0
    log = tmp_path / "points.log"
    clean = tmp_path / "clean.json"
    assert run_idd(["mix", str(mix), "--out", str(clean)], IDD_FAULT_LOG=str(log)).returncode == 0
    points = log.read_text().split()
    assert points == ["mix.write", "mix.rename"]
    new = json.loads(clean.read_text())
    assert [(d["name"], d["generation"]) for d in new["datasets"]] == [("qpairs", 1)]

    def resolved(doc: dict, base: Path) -> list[tuple]:
        return [(d["name"], d["generation"], d["samples"], [str((base / s).resolve()) for s in d["shards"]])
                for d in doc["datasets"]]
    for k in range(1, len(points) + 1):
        out.write_bytes(old)
        r = run_idd(["mix", str(mix), "--out", str(out)], IDD_FAULT_AT=f"mix.*:{k}")
        assert r.returncode == -signal.SIGKILL
        doc = json.loads(out.read_text())  # whole: the old mixture or the new one
        assert doc["datasets"][0]["generation"] == (1 if points[k - 1] == "mix.rename" else 0)
        if doc["datasets"][0]["generation"] == 0:
            assert out.read_bytes() == old
        assert idd(["mix", str(mix), "--out", str(out)]) == 0
        doc = json.loads(out.read_text())
        assert resolved(doc, out.parent) == resolved(new, clean.parent)
        d = doc["datasets"][0]
        assert d["samples"] == current(root).manifest["splits"]["train"]["rows"]
        assert all((out.parent / s).is_file() for s in d["shards"])
