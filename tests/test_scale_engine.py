"""The scale-out engine: resume knows its inputs, every record is accounted for, workers commit whole
shards, the plan is printed without running, and rows carry no absolute host path."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from instructdiffusion_data.config import PipelineConfig, build
from instructdiffusion_data.errors import UserError
from instructdiffusion_data.runner import run

REPO = Path(__file__).resolve().parent.parent


def lines_cfg(path, rps=4, variants=2, name="lines"):
    return build(PipelineConfig, {
        "name": name,
        "source": {"type": "tests.helpers_core:LinesSource", "path": str(path)},
        "stages": [{"type": "tests.helpers_core:PaintStage", "variants": variants, "batch_size": 3}],
        "writer": {"records_per_shard": rps},
    })


def folder_cfg(root, rps=2):
    return build(PipelineConfig, {
        "name": "folder",
        "source": {"type": "tests.helpers_core:FolderSource", "root": str(root)},
        "stages": [{"type": "tests.helpers_core:PaintStage", "variants": 1, "batch_size": 3}],
        "writer": {"records_per_shard": rps},
    })


def rows_of(root: Path) -> list[dict]:
    out = []
    for split in ("train", "rejected"):
        for p in sorted((root / split).glob("*.parquet")):
            out += pq.read_table(p).to_pylist()
    return out


def record_ids(root: Path) -> list[str]:
    return [json.loads(r["meta"])["record_id"] for r in rows_of(root)]


def write_lines(path: Path, ids) -> None:
    path.write_text("".join(f"{i}\n" for i in ids))


def test_resume_refuses_changed_annotation_file_then_redoes(tmp_path):
    """The reported case: some stats files removed, an annotation that sorts first added, rerun. Before:
    a duplicated key and a missing record. Now: one line naming the changed file, then --redo-changed."""
    ann = tmp_path / "ann.txt"
    write_lines(ann, [f"r{i:02d}" for i in range(20)])
    out = tmp_path / "out"
    run(lines_cfg(ann), out=str(out), use_ray=False)
    root = out / "lines" / "v1"
    for p in list((root / "train").glob("00000[23].stats.json")):
        p.unlink()
    time.sleep(0.01)
    write_lines(ann, ["a-first"] + [f"r{i:02d}" for i in range(20)])
    with pytest.raises(UserError) as e:
        run(lines_cfg(ann), out=str(out), use_ray=False)
    msg = str(e.value)
    assert "\n" not in msg and str(ann) in msg and "changed" in msg and "--redo-changed" in msg
    s = run(lines_cfg(ann), out=str(out), use_ray=False, redo_changed=True)
    ids = record_ids(root)
    assert sorted(set(ids)) == sorted(["a-first"] + [f"r{i:02d}" for i in range(20)])
    assert len(ids) == 2 * 21  # two variants each, nothing twice
    keys = [r["key"] for r in rows_of(root)]
    assert len(keys) == len(set(keys))
    assert s.manifest["records"] == 21 and s.records == 21
    assert len(list((root / ".plan").glob("records-*"))) == 1  # the old inputs' record files are gone


def test_resume_of_file_groups_names_the_changed_file(tmp_path):
    d = tmp_path / "items"
    d.mkdir()
    for i in range(6):
        (d / f"b{i}.txt").write_text("x\ny\n")
    out = tmp_path / "out"
    run(folder_cfg(d), out=str(out), use_ray=False)
    time.sleep(0.01)
    (d / "a0.txt").write_text("z\n")  # sorts first: every group shifts
    with pytest.raises(UserError) as e:
        run(folder_cfg(d), out=str(out), use_ray=False)
    assert "a0.txt" in str(e.value) or "b0.txt" in str(e.value)
    run(folder_cfg(d), out=str(out), use_ray=False, redo_changed=True)
    ids = record_ids(out / "folder" / "v1")
    assert sorted(ids) == sorted(["a0-z"] + [f"b{i}-{c}" for i in range(6) for c in "xy"])


def test_unchanged_inputs_resume_without_rework(tmp_path):
    ann = tmp_path / "ann.txt"
    write_lines(ann, range(10))
    out = tmp_path / "out"
    run(lines_cfg(ann), out=str(out), use_ray=False)
    s = run(lines_cfg(ann), out=str(out), use_ray=False)
    assert s.shards_skipped == s.shards_total == 3 and s.shards_written == 0


def test_record_accounting_in_manifest_and_stats(tmp_path):
    ann = tmp_path / "ann.txt"
    write_lines(ann, ["a", "bad1", "b", "c", "bad2", "d", "e"])
    out = tmp_path / "out"
    s = run(lines_cfg(ann, rps=3), out=str(out), use_ray=False)
    m = s.manifest
    assert m["records"] == 7 and m["complete"] is True and m["shards_planned"] == 3
    assert m["splits"]["train"]["rows"] == 10 and m["splits"]["rejected"]["rows"] == 2
    assert m["splits"]["rejected"]["drop_reasons"] == {"bad line": 2}
    root = out / "lines" / "v1"
    st = json.loads((root / "train" / "000000.stats.json").read_text())
    assert st["records"] == 3 and st["inputs"]["fingerprint"]
    rej = [r for r in rows_of(root) if not r["keep"]]
    assert {r["drop_class"] for r in rej} == {"bad line"}
    detail = json.loads(rej[0]["drop_detail"][0])
    assert detail["class"] == "bad line" and detail["record"] in ("bad1", "bad2") and detail["field"] == "line"
    # per-file sizes and hashes in stats and manifest match the bytes on disk
    import hashlib
    for split in ("train", "rejected"):
        for e in m["splits"][split]["shards"]:
            data = (root / e["tar"]).read_bytes()
            assert len(data) == e["tar_bytes"] and hashlib.sha256(data).hexdigest() == e["tar_sha256"]
            assert (root / e["parquet"]).stat().st_size == e["parquet_bytes"]


def test_a_stage_that_loses_a_record_fails_that_shard_loudly(tmp_path):
    ann = tmp_path / "ann.txt"
    write_lines(ann, range(8))
    cfg = build(PipelineConfig, {
        "name": "lossy",
        "source": {"type": "tests.helpers_core:LinesSource", "path": str(ann)},
        "stages": [{"type": "tests.helpers_core:LossyStage", "lose": "5"}],
        "writer": {"records_per_shard": 4},
    })
    s = run(cfg, out=str(tmp_path / "out"), use_ray=False)
    assert list(s.failed) == [1] and "without any row" in s.failed[1]
    assert s.manifest["complete"] is False and "000001" in s.manifest["failed_shards"]
    assert s.shards_written == 1  # the other shard committed


def test_plan_prints_shards_without_running(tmp_path, capsys):
    from instructdiffusion_data.cli import main

    d = tmp_path / "items"
    d.mkdir()
    for i in range(5):
        (d / f"f{i}.txt").write_text("x\n")
    conf = tmp_path / "c.yaml"
    conf.write_text(f"name: folder\nsource: {{type: 'tests.helpers_core:FolderSource', root: '{d}'}}\n"
                    "writer: {records_per_shard: 2}\n")
    assert main(["run", str(conf), "--out", str(tmp_path / "o"), "--plan"]) == 0
    text = capsys.readouterr().out
    assert "3 shards of up to 2 items; 0 done" in text and "f0.txt .. f1.txt" in text
    assert not (tmp_path / "o").exists()


def test_no_absolute_input_paths_in_written_files(tmp_path):
    ann = tmp_path / "ann.txt"
    write_lines(ann, ["a", "bad1", "b"])
    out = tmp_path / "out"
    s = run(lines_cfg(ann), out=str(out), use_ray=False)
    root = out / "lines" / "v1"
    for p in list(root.glob("train/*")) + list(root.glob("rejected/*")):
        assert str(tmp_path).encode() not in p.read_bytes(), p
    meta = json.loads(rows_of(root)[0]["meta"])
    assert meta["file"] == "{source.path}"
    assert s.manifest["roots"]["source.path"] == str(ann.resolve())


def test_overwrite_never_leaves_out_or_removes_foreign_files(tmp_path):
    from instructdiffusion_data.errors import ConfigError

    ann = tmp_path / "ann.txt"
    write_lines(ann, range(3))
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    for bad in ({"version": str(victim)}, {"name": "../precious"}, {"version": ".."}):
        with pytest.raises(ConfigError):
            build(PipelineConfig, {**lines_cfg(ann).__dict__, "source": {"type": "x"}, **bad})
    # an existing folder without the engine's run file is never written into nor removed
    cfg = lines_cfg(ann, name="precious")
    cfg.version = "v1"
    (tmp_path / "o" / "precious" / "v1").mkdir(parents=True)
    (tmp_path / "o" / "precious" / "v1" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError):
        run(cfg, out=str(tmp_path / "o"), use_ray=False, overwrite=True)
    assert (tmp_path / "o" / "precious" / "v1" / "notes.txt").read_text() == "mine"
    assert (victim / "thesis.tex").exists()
    # with the run file, --overwrite removes what the engine wrote and leaves the rest
    run(lines_cfg(ann), out=str(tmp_path / "o2"), use_ray=False)
    root = tmp_path / "o2" / "lines" / "v1"
    (root / "my-notes.txt").write_text("keep")
    run(lines_cfg(ann), out=str(tmp_path / "o2"), use_ray=False, overwrite=True)
    assert (root / "my-notes.txt").read_text() == "keep" and (root / "manifest.json").exists()


def test_unreadable_run_file_is_one_line_and_overwrite_recovers(tmp_path):
    ann = tmp_path / "ann.txt"
    write_lines(ann, range(3))
    root = tmp_path / "o" / "lines" / "v1"
    root.mkdir(parents=True)
    (root / ".idd-run.json").write_text("")  # a full disk at start left it empty
    from instructdiffusion_data.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        run(lines_cfg(ann), out=str(tmp_path / "o"), use_ray=False)
    assert "unreadable run file" in str(e.value)
    s = run(lines_cfg(ann), out=str(tmp_path / "o"), use_ray=False, overwrite=True)
    assert s.manifest["records"] == 3


def test_kill_9_of_a_worker_mid_shard_then_rerun_equals_clean_run(tmp_path):
    """A Ray worker is SIGKILLed inside the writer (between a tar and its rename); Ray retries the task
    (fresh temporary names per attempt), the run completes, and a rerun changes nothing."""
    ann = tmp_path / "ann.txt"
    write_lines(ann, [f"r{i:02d}" for i in range(24)])
    conf = tmp_path / "c.yaml"
    conf.write_text(f"name: lines\nsource: {{type: 'tests.helpers_core:LinesSource', path: '{ann}'}}\n"
                    "stages: [{type: 'tests.helpers_core:PaintStage', variants: 2, batch_size: 3}]\n"
                    "writer: {records_per_shard: 4}\nray: {num_cpus: 2, object_store_memory: 200000000}\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", IDD_FAULT_AT="writer.rename:2",
               IDD_FAULT_ONCE=str(tmp_path / "fired"))
    cmd = [sys.executable, "-m", "instructdiffusion_data.cli", "run", str(conf), "--out", str(out)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert (tmp_path / "fired").read_text() == "writer.rename"  # a worker really died mid-shard
    assert res.returncode == 0, res.stderr[-2000:]  # Ray retried the killed task; the run completed
    env.pop("IDD_FAULT_AT")
    res2 = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res2.returncode == 0, res2.stderr[-2000:]
    root = out / "lines" / "v1"
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]
    clean = tmp_path / "clean"
    run(lines_cfg(ann), out=str(clean), use_ray=False)
    from tests.test_core_runner import digest_tree
    assert digest_tree(root) == digest_tree(clean / "lines" / "v1")
    for p in root.glob("*/*.tar"):
        with tarfile.open(p) as t:
            t.getmembers()


def test_files_beside_an_annotation_file_are_written_relative_too(tmp_path):
    """A reader that finds files beside its annotation file (GIER's images/) writes them under the
    annotation file's folder token, not as absolute paths."""
    from instructdiffusion_data.roots import resolve_path, relativize

    ann = tmp_path / "data" / "ann.txt"
    ann.parent.mkdir()
    write_lines(ann, ["a"])
    from instructdiffusion_data.stage import make_source

    roots = make_source({"type": "tests.helpers_core:LinesSource", "path": str(ann)}, 0).roots()
    assert roots["source.path.parent"] == str(ann.parent.resolve())
    meta = relativize({"file": str(ann.parent / "images" / "x.jpg")}, roots)
    assert meta == {"file": "{source.path.parent}/images/x.jpg"}
    assert resolve_path(meta["file"], roots) == str(ann.parent / "images" / "x.jpg")


def test_an_item_that_raises_is_one_dropped_record_not_a_failed_shard(tmp_path):
    d = tmp_path / "items"
    d.mkdir()
    (d / "a.txt").write_text("x\ny\n")
    (d / "b.txt").write_text("z\nboom\n")
    (d / "c.txt").write_text("w\n")
    s = run(folder_cfg(d, rps=3), out=str(tmp_path / "out"), use_ray=False)
    assert not s.failed and s.manifest["complete"]
    rows = rows_of(tmp_path / "out" / "folder" / "v1")
    bad = [r for r in rows if not r["keep"]]
    assert [r["drop_class"] for r in bad] == ["input could not be read"]
    assert "cannot parse this item" in bad[0]["drop_detail"][0]
    assert sorted(json.loads(r["meta"])["record_id"] for r in rows if r["keep"]) == ["a-x", "a-y", "c-w"]
