"""Fault suite for ``idd run``: the process is SIGKILLed at each of its commit points in turn (the
fault hook of ``instructdiffusion_data.faults``), then rerun. After every rerun: every source record
in train or rejected exactly as often as in a clean run, valid tars whose members match the parquet,
a manifest equal to the files on disk, and bytes identical to an uninterrupted run."""

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent


def write_config(tmp: Path, ann: Path) -> Path:
    conf = tmp / "c.yaml"
    conf.write_text(f"name: lines\nsource: {{type: 'tests.helpers_core:LinesSource', path: '{ann}'}}\n"
                    "stages: [{type: 'tests.helpers_core:PaintStage', variants: 2, batch_size: 3}]\n"
                    "writer: {records_per_shard: 4}\nray: {num_cpus: 2, object_store_memory: 200000000}\n")
    return conf


def idd(args: list[str], env_extra: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    env.pop("IDD_FAULT_AT", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "instructdiffusion_data.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.glob("*/*")) if p.suffix in (".tar", ".parquet")}


def check_output(root: Path, expected_ids: dict[str, int]) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["complete"] is True
    seen: dict[str, int] = {}
    listed = set()
    for split in ("train", "rejected"):
        for e in manifest["splits"][split]["shards"]:
            listed.add(e["tar"])
            tar_bytes = (root / e["tar"]).read_bytes()
            assert len(tar_bytes) == e["tar_bytes"]
            assert hashlib.sha256(tar_bytes).hexdigest() == e["tar_sha256"]
            rows = pq.read_table(root / e["parquet"]).to_pylist()
            assert len(rows) == e["rows"]
            with tarfile.open(root / e["tar"]) as t:
                members = {m.name: m.size for m in t.getmembers()}
            for r in rows:
                if r["src_member"]:
                    assert members[r["src_member"]] == r["src_size"]
                rid = json.loads(r["meta"])["record_id"]
                seen[rid] = seen.get(rid, 0) + 1
    on_disk = {f"{p.parent.name}/{p.name}" for p in root.glob("*/*.tar")}
    assert on_disk == listed, "the manifest must list exactly the shard files on disk"
    assert seen == expected_ids
    assert not [p for p in root.rglob("*") if ".tmp" in p.name], "temporary files left behind"


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    ann = tmp / "ann.txt"
    ann.write_text("".join(f"{x}\n" for x in ["a", "bad1", "b", "c", "d", "bad2", "e", "f", "g"]))
    conf = write_config(tmp, ann)
    log = tmp / "points.log"
    res = idd(["run", str(conf), "--out", str(tmp / "clean"), "--no-ray"], {"IDD_FAULT_LOG": str(log)})
    assert res.returncode == 0, res.stderr[-2000:]
    points = log.read_text().split()
    root = tmp / "clean" / "lines" / "v1"
    seen = {}
    for split in ("train", "rejected"):
        for p in root.glob(f"{split}/*.parquet"):
            for r in pq.read_table(p).to_pylist():
                rid = json.loads(r["meta"])["record_id"]
                seen[rid] = seen.get(rid, 0) + 1
    assert seen == {"a": 2, "b": 2, "c": 2, "d": 2, "e": 2, "f": 2, "g": 2, "bad1": 1, "bad2": 1}
    return tmp, conf, points, digest(root), seen


def test_run_has_enough_commit_points(clean_run):
    _, _, points, _, _ = clean_run
    assert len(points) >= 20, points
    assert {"run.runfile", "split.records", "split.index", "writer.tar", "writer.rename", "writer.marker",
            "writer.manifest"} <= set(points)


def test_kill_at_every_commit_point_then_rerun(clean_run):
    tmp, conf, points, clean_digest, expected = clean_run
    for k in range(1, len(points) + 1):
        out = tmp / f"k{k}"
        killed = idd(["run", str(conf), "--out", str(out), "--no-ray"], {"IDD_FAULT_AT": f"*:{k}"})
        assert killed.returncode == -9, (k, points[k - 1], killed.stderr[-1000:])
        root = out / "lines" / "v1"
        if points[k - 1] != "writer.manifest":
            assert not (root / "manifest.json").exists(), "no manifest before every shard is committed"
        rerun = idd(["run", str(conf), "--out", str(out), "--no-ray"])
        assert rerun.returncode == 0, (k, points[k - 1], rerun.stderr[-2000:])
        check_output(root, expected)
        assert digest(root) == clean_digest, (k, points[k - 1])


@pytest.mark.parametrize("point", ["split.records:1", "writer.rename:3", "writer.marker:2"])
def test_real_kill_9_on_ray_then_rerun(clean_run, point):
    """With Ray the split and the writers run in workers: the fault kills a worker (once), Ray retries
    it, and the output equals the clean run's."""
    tmp, conf, _, clean_digest, expected = clean_run
    out = tmp / f"ray-{point.replace(':', '-')}"
    fired = tmp / f"fired-{point.replace(':', '-')}"
    first = idd(["run", str(conf), "--out", str(out)], {"IDD_FAULT_AT": point, "IDD_FAULT_ONCE": str(fired)},
                timeout=300)
    assert fired.exists(), "the fault must fire in a worker"
    if first.returncode != 0:  # a task that exhausts its retries fails its shard; the rerun redoes it
        rerun = idd(["run", str(conf), "--out", str(out)], timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
    root = out / "lines" / "v1"
    check_output(root, expected)
    assert digest(root) == clean_digest
