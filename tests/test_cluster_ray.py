"""Pipelines on a real two-node Ray cluster of this machine (`ray start --head` + `ray start --address`):
`idd run --address`, `ray job submit`, a worker SIGKILLed mid-stage, the driver SIGKILLed mid-run."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instructdiffusion_data.config import load_pipeline_config
from instructdiffusion_data.runner import run
from tests.helpers_cluster import RAY, REPO, LocalCluster, cluster_env, session_pids
from tests.test_core_runner import all_keys, digest_tree

pytestmark = pytest.mark.slow

IDD = [sys.executable, "-m", "instructdiffusion_data.cli", "run"]


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    try:
        c.start()
        nodes = list(c.nodes)
        yield c
    finally:
        nodes = list(c.nodes)
        c.stop()
        # nothing of the cluster is left: no process of either node, no temp dir, no address file that a
        # later plain ray.init() would follow
        assert not [pid for n in nodes for pid in session_pids(n.pid)]
        assert not c.tmp.exists()
        default_addr = Path("/tmp/ray/ray_current_cluster")
        assert not (default_addr.is_file() and default_addr.read_text().strip() == c.address)


@pytest.fixture(scope="module")
def single_node(tmp_path_factory, demo_root):
    """The keypoint demo pipeline in one process (no Ray): the reference output."""
    out = tmp_path_factory.mktemp("single")
    conf = REPO / "configs" / "pipelines" / "keypoints_coco.yaml"
    run(load_pipeline_config(conf, keypoint_overrides(demo_root)), out=str(out), use_ray=False)
    return files_digest(out / "keypoints_coco" / "v2")


def clean_digest(conf: Path, out: Path) -> dict:
    """An uninterrupted run of the same config in one process (no sleeping: timing never changes bytes)."""
    run(load_pipeline_config(conf, ["stages.0.sleep=0", "stages.0.where_dir=''"]), out=str(out), use_ray=False)
    return digest_tree(out / "t" / "v1")


def keypoint_overrides(demo_root: Path) -> list[str]:
    return [f"source.annotations={demo_root}/coco/annotations/person_keypoints_train2017.json",
            f"source.images={demo_root}/coco/train2017", "writer.records_per_shard=4"]


def files_digest(root: Path) -> dict:
    """Every tar and parquet, and the manifest's counts (same keys, same bytes, same counts)."""
    d = digest_tree(root)
    m = json.loads((root / "manifest.json").read_text())
    d["counts"] = json.dumps({s: (v["rows"], v["tasks"], v["drop_reasons"]) for s, v in m["splits"].items()})
    return d


def slow_config(tmp_path: Path, where: Path, n: int = 40, sleep: float = 0.1, concurrency: int | None = None) -> Path:
    conf = tmp_path / "slow.yaml"
    pool = f", concurrency: {concurrency}" if concurrency else ""
    conf.write_text(
        "name: t\n"
        f"source: {{type: 'tests.helpers_core:CountSource', n: {n}, bad_every: 7}}\n"
        "stages: [{type: 'tests.helpers_cluster:WherePaint', variants: 2, fail_on: 10, batch_size: 2,"
        f" sleep: {sleep}, where_dir: '{where}'{pool}}}]\n"
        "writer: {records_per_shard: 4}\n"
    )
    return conf


def test_keypoints_via_ray_job_submit_equal_single_node(tmp_path, demo_root, single_node, cluster):
    """`ray job submit -- idd run CONFIG` on the two-node cluster: the entrypoint runs on the head node
    and joins the cluster through RAY_ADDRESS (set by the job server); the output equals the
    single-process output (same keys, same bytes, same counts). The `--address` path is the one the
    kill tests below take, also checked byte for byte."""
    conf = REPO / "configs" / "pipelines" / "keypoints_coco.yaml"
    sets = " ".join(f"--set {s}" for s in keypoint_overrides(demo_root))
    entry = f"{sys.executable} -m instructdiffusion_data.cli run {conf} {sets} --out {tmp_path / 'j'}"
    res = subprocess.run([RAY, "job", "submit", "--address", cluster.dashboard, "--", *entry.split()],
                         cwd=REPO, env=cluster_env(), capture_output=True, text=True, timeout=150)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert "succeeded" in res.stdout and "joining Ray cluster" in log
    root = tmp_path / "j" / "keypoints_coco" / "v2"
    digest = files_digest(root)
    assert len(digest) > 4 and digest == single_node
    keys = all_keys(root)
    assert len(keys) == len(set(keys)) > 20


def test_keypoints_via_ray_client_address(tmp_path, demo_root, single_node, cluster):
    """`idd run --address ray://head:port` (Ray Client): the run executes on the head node and the
    output (a path the cluster sees) equals the single-process output."""
    conf = REPO / "configs" / "pipelines" / "keypoints_coco.yaml"
    sets = [a for s in keypoint_overrides(demo_root) for a in ("--set", s)]
    cmd = [*IDD, str(conf), *sets, "--address", cluster.client, "--out", str(tmp_path / "c")]
    for attempt in range(2):
        res = subprocess.run(cmd, cwd=REPO, env=cluster_env(), capture_output=True, text=True, timeout=150)
        # Ray Client's per-connection server process occasionally dies at start-up on a loaded machine
        if res.returncode == 0 or "Initialization failure from server" not in res.stderr:
            break
    assert res.returncode == 0, res.stderr[-3000:]
    assert "executes on the cluster's head node" in res.stderr
    assert files_digest(tmp_path / "c" / "keypoints_coco" / "v2") == single_node


@pytest.mark.parametrize("pool", [None, 2], ids=["tasks", "actors"])
def test_worker_sigkill_mid_stage_every_sample_once(tmp_path, cluster, pool):
    """A Ray worker process running the stage is SIGKILLed (a task worker, or an actor of the pool that
    GPU stages use); Ray retries the work, the job finishes and the output holds every sample exactly
    once (bytes equal to a clean run)."""
    where = tmp_path / "where"
    where.mkdir()
    conf = slow_config(tmp_path, where, n=40 if pool is None else 28, concurrency=pool)
    proc = subprocess.Popen([*IDD, str(conf), "--address", cluster.address, "--out", str(tmp_path / "o")],
                            cwd=REPO, env=cluster_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    victim = None
    deadline = time.time() + 90
    while victim is None and time.time() < deadline and proc.poll() is None:
        for f in where.iterdir():
            pid = int(f.name.rsplit(".", 1)[1])
            if pid in cluster.worker_pids():  # a worker of the cluster, not the driver
                victim = pid
                break
        time.sleep(0.05)
    assert victim, "no stage worker seen"
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=150)
    assert proc.returncode == 0, err[-3000:]
    pids = {int(f.name.rsplit(".", 1)[1]) for f in where.iterdir()}
    assert pids - {victim}, "the work went on in another worker"
    root = tmp_path / "o" / "t" / "v1"
    keys = all_keys(root)
    n, bad = (40, 6) if pool is None else (28, 4)
    assert len(keys) == len(set(keys)) == bad + 1 + 2 * (n - bad - 1)  # bad records, record 10 raises, 2 variants
    m = json.loads((root / "manifest.json").read_text())
    # the row that raised went to rejected/ with its error, on the cluster as on one node
    assert m["splits"]["rejected"]["drop_reasons"] == {"bad record": bad, "paint: error ValueError": 1}
    assert digest_tree(root) == clean_digest(conf, tmp_path / "clean")


def test_driver_killed_on_cluster_then_rerun_resumes(tmp_path, cluster):
    where = tmp_path / "where"
    where.mkdir()
    conf = slow_config(tmp_path, where, n=48, sleep=0.1)
    cmd = [*IDD, str(conf), "--address", cluster.address, "--out", str(tmp_path / "o")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=cluster_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    train = tmp_path / "o" / "t" / "v1" / "train"
    deadline = time.time() + 120

    def nodes() -> set[str]:
        return {f.name.rsplit(".", 1)[0] for f in where.iterdir()}

    # kill once 3 shards are committed and both nodes have run the stage (Ray may fill the head node's
    # first tasks before the second node's worker is up: the kill waits for that, never past 10 shards)
    while time.time() < deadline:
        done = len(list(train.glob("*.stats.json")))
        if done >= 10 or (done >= 3 and len(nodes()) == 2):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(train.glob("*.stats.json")))
    assert 3 <= done_at_kill < 12, "the run must be killed part-way"
    assert not (tmp_path / "o" / "t" / "v1" / "manifest.json").exists()
    assert len(nodes()) == 2, f"the stage ran on both nodes: {nodes()}"

    res = subprocess.run(cmd, cwd=REPO, env=cluster_env(), capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{done_at_kill} already done" in res.stdout or f"{done_at_kill - 1} already done" in res.stdout
    root = tmp_path / "o" / "t" / "v1"
    keys = all_keys(root)
    assert len(keys) == len(set(keys)) == 7 + 1 + 2 * 40  # 7 bad records, record 10 raises
    assert digest_tree(root) == clean_digest(conf, tmp_path / "clean")
