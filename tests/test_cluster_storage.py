"""Outputs on an object store (S3 API, moto's server on loopback): same bytes as a local output,
write-then-marker commit, resume after a killed driver."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from instructdiffusion_data import storage
from instructdiffusion_data.runner import run
from instructdiffusion_data.writer import ShardWriter
from tests.helpers_s3 import moto_s3
from tests.test_core_runner import all_keys, cfg, digest_tree

REPO = Path(__file__).resolve().parent.parent
BUCKET = "idd-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3-compatible server on 127.0.0.1 with one bucket; the AWS env points at it."""
    with moto_s3(BUCKET) as server:
        yield server


def s3_digest(fs, prefix: str) -> dict:
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(prefix, recursive=True)):
        if info.type == pafs.FileType.File and info.path.endswith((".tar", ".parquet")):
            with fs.open_input_stream(info.path) as fh:
                out[info.path[len(prefix) + 1:]] = hashlib.sha256(fh.read()).hexdigest()
    return out


def s3_keys(fs, prefix: str) -> list[str]:
    keys = []
    for split in ("train", "rejected"):
        sel = pafs.FileSelector(f"{prefix}/{split}", recursive=False, allow_not_found=True)
        for info in sorted(fs.get_file_info(sel), key=lambda i: i.path):
            if info.path.endswith(".parquet"):
                keys += pq.read_table(info.path, filesystem=fs, columns=["key"]).column("key").to_pylist()
    return keys


def test_uri_helpers(tmp_path):
    assert storage.is_uri("s3://b/x") and storage.is_uri("gs://b/x") and not storage.is_uri("/tmp/x")
    assert not storage.is_uri("file:///tmp/x") and not storage.is_uri(Path("a"))
    assert storage.join("s3://b/out?scheme=http", "t", "v1") == "s3://b/out/t/v1?scheme=http"
    assert storage.join("out", "t") == Path("out/t")
    (tmp_path / "a.txt").write_text("hi")
    assert storage.read_text(f"file://{tmp_path}/a.txt") == storage.read_text(tmp_path / "a.txt") == "hi"
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(tmp_path / "missing.txt")
    assert storage.exists(tmp_path, "dir") and not storage.exists(tmp_path / "nope", "file")


def test_s3_output_has_local_bytes_and_rerun_skips(tmp_path, s3):
    fs = s3["fs"]
    run(cfg(), out=str(tmp_path), use_ray=False)
    s = run(cfg(), out=f"s3://{BUCKET}/a", use_ray=False)
    assert s.root == f"s3://{BUCKET}/a/t/v1" and s.shards_written == 3
    local = digest_tree(tmp_path / "t" / "v1")
    assert local and s3_digest(fs, f"{BUCKET}/a/t/v1") == local
    assert s.manifest["splits"]["train"]["rows"] == 40 and s.manifest["splits"]["rejected"]["rows"] == 5
    # object stores have no rename: nothing is left under a temporary name
    names = [i.path for i in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/a", recursive=True))]
    assert not [n for n in names if n.endswith(".tmp")]
    assert json.loads(storage.read_text(f"s3://{BUCKET}/a/t/v1/manifest.json"))["name"] == "t"
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"s3://{BUCKET}/a/t/v1/nothing.json")
    again = run(cfg(), out=f"s3://{BUCKET}/a", use_ray=False)
    assert again.shards_written == 0 and again.shards_skipped == 3


def test_s3_shard_without_markers_is_not_done_and_is_rewritten(s3, monkeypatch):
    """Data objects written, the process dies before the stats markers: the shard is not finished;
    a rerun writes it again and the output holds every sample once."""
    fs = s3["fs"]
    root = f"s3://{BUCKET}/b/t/v1"
    s = run(cfg(), out=f"s3://{BUCKET}/b", use_ray=False)
    assert s.shards_written == 3
    # shard 1 loses its train marker (as if the driver died between data objects and markers)
    fs.delete_file(f"{BUCKET}/b/t/v1/train/000001.stats.json")
    assert ShardWriter(root).done_shards() == {0, 2}

    calls = []
    orig = storage.Location.write_text

    def dying(self, text):  # the driver dies when about to write the first marker of the next shard
        if self.name.endswith(".stats.json"):
            calls.append(self.name)
            if len(calls) == 1:
                raise KeyboardInterrupt("killed")
        return orig(self, text)

    monkeypatch.setattr(storage.Location, "write_text", dying)
    with pytest.raises(KeyboardInterrupt):
        run(cfg(), out=f"s3://{BUCKET}/b", use_ray=False)
    assert ShardWriter(root).done_shards() == {0, 2}
    monkeypatch.setattr(storage.Location, "write_text", orig)
    again = run(cfg(), out=f"s3://{BUCKET}/b", use_ray=False)
    assert again.shards_written == 1 and again.shards_skipped == 2
    keys = s3_keys(fs, f"{BUCKET}/b/t/v1")
    assert len(keys) == len(set(keys)) == 45


@pytest.mark.slow
def test_s3_driver_killed_then_rerun_resumes(tmp_path, s3):
    """`idd run --out s3://...` SIGKILLed mid-run; the rerun finishes with every sample exactly once and
    the same bytes as an uninterrupted local run."""
    fs = s3["fs"]
    conf = tmp_path / "slow.yaml"
    conf.write_text(
        "name: t\n"
        "source: {type: 'tests.helpers_core:CountSource', n: 60, bad_every: 7}\n"
        "stages: [{type: 'tests.helpers_core:PaintStage', variants: 2, fail_on: 10, batch_size: 2, sleep: 0.1}]\n"
        "writer: {records_per_shard: 4}\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", **s3["env"])
    cmd = [sys.executable, "-m", "instructdiffusion_data.cli", "run", str(conf), "--out", f"s3://{BUCKET}/k",
           "--no-ray"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    train = f"{BUCKET}/k/t/v1/train"

    def markers() -> int:
        sel = pafs.FileSelector(train, allow_not_found=True)
        return len([i for i in fs.get_file_info(sel) if i.path.endswith(".stats.json")])

    deadline = time.time() + 60
    while time.time() < deadline and markers() < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = markers()
    assert 3 <= done_at_kill < 15, "the run must be killed part-way"
    assert fs.get_file_info(f"{BUCKET}/k/t/v1/manifest.json").type == pafs.FileType.NotFound

    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{done_at_kill} already done" in res.stdout or f"{done_at_kill - 1} already done" in res.stdout
    keys = s3_keys(fs, f"{BUCKET}/k/t/v1")
    assert len(keys) == len(set(keys)) == 9 + 1 + 2 * 50
    clean = tmp_path / "clean"
    run(cfg(n=60, rps=4), out=str(clean), use_ray=False)
    assert s3_digest(fs, f"{BUCKET}/k/t/v1") == digest_tree(clean / "t" / "v1")


def upload_tree(fs, local: Path, prefix: str) -> None:
    for p in local.rglob("*"):
        if p.is_file():
            with fs.open_output_stream(f"{prefix}/{p.relative_to(local).as_posix()}") as fh:
                fh.write(p.read_bytes())


def test_s3_inputs_config_annotations_and_images(tmp_path, s3, demo_root):
    """Config file, annotation file and images all read from the bucket: the rows equal a local run's
    (keys, instructions, pixels), only the provenance paths differ."""
    from instructdiffusion_data import imageio
    from instructdiffusion_data.config import load_pipeline_config

    fs = s3["fs"]
    upload_tree(fs, demo_root / "coco", f"{BUCKET}/in/coco")
    conf = REPO / "configs" / "pipelines" / "keypoints_coco.yaml"
    with fs.open_output_stream(f"{BUCKET}/in/kp.yaml") as fh:
        fh.write(conf.read_bytes())

    def run_from(root: str, config: str, out: str) -> None:
        cfg = load_pipeline_config(config, [f"source.annotations={root}/coco/annotations/person_keypoints_train2017.json",
                                            f"source.images={root}/coco/train2017", "writer.records_per_shard=8"])
        run(cfg, out=out, use_ray=False)

    run_from(f"s3://{BUCKET}/in", f"s3://{BUCKET}/in/kp.yaml", f"s3://{BUCKET}/in-out")
    run_from(str(demo_root), str(conf), str(tmp_path))
    remote = s3_keys(fs, f"{BUCKET}/in-out/keypoints_coco/v2")
    local = all_keys(tmp_path / "keypoints_coco" / "v2")
    assert remote == local and len(local) > 20
    t_remote = pq.read_table(f"{BUCKET}/in-out/keypoints_coco/v2/train/000000.parquet", filesystem=fs).to_pylist()
    t_local = pq.read_table(tmp_path / "keypoints_coco" / "v2" / "train" / "000000.parquet").to_pylist()
    assert [r["instruction"] for r in t_remote] == [r["instruction"] for r in t_local]
    # paths in rows are relative to the named input roots; the manifest maps them back to the bucket
    from instructdiffusion_data.roots import resolve_path
    with fs.open_input_stream(f"{BUCKET}/in-out/keypoints_coco/v2/manifest.json") as fh:
        roots = json.loads(fh.read())["roots"]
    assert json.loads(t_remote[0]["meta"])["file"].startswith("{source.images}/")
    assert resolve_path(json.loads(t_remote[0]["meta"])["file"], roots).startswith(f"s3://{BUCKET}/in/coco/train2017")
    with fs.open_input_stream(f"{BUCKET}/in-out/keypoints_coco/v2/train/000000.tar") as fh:
        tar_remote = fh.read()
    tar_local = (tmp_path / "keypoints_coco" / "v2" / "train" / "000000.tar").read_bytes()
    r, l = t_remote[0], t_local[0]
    assert (imageio.decode(tar_remote[r["tgt_offset"]: r["tgt_offset"] + r["tgt_size"]]) ==
            imageio.decode(tar_local[l["tgt_offset"]: l["tgt_offset"] + l["tgt_size"]])).all()
