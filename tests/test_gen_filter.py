"""Generations (issue 14 item 2): ``idd filter`` in place writes a new generation and switches one pointer;
generation 0 is never touched, every reader resolves the current generation, a mixture keeps meaning what it
meant, leftovers of a killed filter are removed (only the engine's files), labels live beside the output."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from instructdiffusion_data import generations
from instructdiffusion_data.audit.labels import LabelStore, labels_path, overrides
from instructdiffusion_data.cli import main as idd
from instructdiffusion_data.errors import UserError
from instructdiffusion_data.generations import current
from tests.test_quality_refilter import _build

SPLITS = ("train", "rejected")


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def check_output(root) -> dict[str, str]:
    """The current generation of ``root`` is whole: its manifest lists exactly the shard files on disk, each
    file has the recorded size and sha256, each tar opens and holds exactly the members its parquet names
    (bytes at the parquet's offsets), each sample's json agrees with its split, every key appears once.
    Returns ``{key: split}``."""
    gen = current(root)
    base = Path(gen.path)
    where: dict[str, str] = {}
    for split in SPLITS:
        entries = gen.manifest["splits"][split]["shards"]
        listed = {e["tar"] for e in entries} | {e["parquet"] for e in entries}
        on_disk = {f"{split}/{p.name}" for p in (base / split).iterdir()
                   if p.name.endswith((".tar", ".parquet"))} if (base / split).is_dir() else set()
        assert on_disk == listed, (split, on_disk ^ listed)
        assert sum(e["rows"] for e in entries) == gen.manifest["splits"][split]["rows"]
        for e in entries:
            for kind in ("tar", "parquet"):
                f = base / e[kind]
                assert f.stat().st_size == e[f"{kind}_bytes"], f
                assert sha(f) == e[f"{kind}_sha256"], f
            rows = pq.read_table(base / e["parquet"]).to_pylist()
            assert len(rows) == e["rows"]
            data = (base / e["tar"]).read_bytes()
            with tarfile.open(base / e["tar"]) as tf:
                names = {m.name: m for m in tf.getmembers()}
                expect = set()
                for r in rows:
                    assert r["key"] not in where, f"{r['key']} twice"
                    where[r["key"]] = split
                    assert bool(r["keep"]) == (split == "train")
                    for col in ("src", "tgt", "mask"):
                        if r[f"{col}_member"]:
                            expect.add(r[f"{col}_member"])
                            blob = data[r[f"{col}_offset"]:r[f"{col}_offset"] + r[f"{col}_size"]]
                            assert blob == tf.extractfile(r[f"{col}_member"]).read()
                    doc = json.loads(tf.extractfile(f"{r['key']}.json").read())
                    assert doc["keep"] == (split == "train")
                    expect |= {f"{r['key']}.json", f"{r['key']}.txt"}
                assert set(names) == expect
    return where


def member_bytes(root) -> dict[str, bytes]:
    """``{key: source image bytes}`` of the current generation."""
    gen = current(root)
    out = {}
    for split in SPLITS:
        for e in gen.manifest["splits"][split]["shards"]:
            data = (Path(gen.path) / e["tar"]).read_bytes()
            for r in pq.read_table(Path(gen.path) / e["parquet"]).to_pylist():
                out[r["key"]] = data[r["src_offset"]:r["src_offset"] + r["src_size"]]
    return out


def tree(root: Path, sub: str = "") -> dict[str, str]:
    base = root / sub if sub else root
    return {p.relative_to(root).as_posix(): sha(p) for p in sorted(base.rglob("*")) if p.is_file()}


def threshold(root) -> float:
    scores = sorted(json.loads(r["meta"])["scores"]["aesthetic_tgt"]
                    for p in sorted((Path(root) / "train").glob("*.parquet")) for r in pq.read_table(p).to_pylist())
    return scores[len(scores) // 2]


def test_filter_in_place_writes_a_generation_and_switches_the_pointer(tmp_path, capsys):
    root = _build(tmp_path, n=8)
    gen0 = {k: v for k, v in tree(root).items() if k.startswith(("train/", "rejected/", "manifest.json"))}
    before = check_output(root)
    t = threshold(root)
    assert idd(["filter", str(root), "--set", f"aesthetic_tgt_min={t}"]) == 0
    assert "-> generation 1" in capsys.readouterr().out
    ptr = json.loads((root / "CURRENT.json").read_text())
    assert ptr["generation"] == 1 and ptr["path"] == "generations/0001" and ptr["committed"] == [0, 1]
    # generation 0 is byte for byte what idd run wrote; the new rows are in generations/0001
    assert {k: v for k, v in tree(root).items() if k in gen0} == gen0
    after = check_output(root)
    assert after.keys() == before.keys() and after != before
    gen = current(root)
    assert gen.number == 1 and Path(gen.path) == root / "generations" / "0001"
    assert gen.manifest["refilter"]["from_generation"] == 0 and gen.manifest["generation"] == 1
    assert (Path(gen.path) / "filter_report.json").is_file()
    # a second filter reads generation 1 and writes generation 2; generation 1 stays (a mixture may name it)
    assert idd(["filter", str(root), "--set", "aesthetic_tgt_min=0.0"]) == 0
    assert current(root).number == 2 and json.loads((root / "CURRENT.json").read_text())["committed"] == [0, 1, 2]
    assert (root / "generations" / "0001" / "manifest.json").is_file()
    assert check_output(root) == before  # back to the run's thresholds: the run's split


def test_leftovers_of_a_killed_filter_are_ignored_then_removed(tmp_path, caplog):
    root = _build(tmp_path, n=6)
    before = check_output(root)
    # a filter killed before its switch left generation 1 half written
    gen = generations.new_generation(root)
    (Path(gen.path) / "train").mkdir()
    (Path(gen.path) / "train" / "000000.tar").write_bytes(b"half a tar")
    (Path(gen.path) / "train" / "000000.parquet.tmp-abc").write_bytes(b"x")
    assert current(root).number == 0 and check_output(root) == before  # readers never see it
    assert generations.garbage(root).keys() == {1}
    # a folder the engine did not write is never deleted (its number is skipped)
    foreign = root / "generations" / "0002"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert idd(["filter", str(root), "--set", "aesthetic_tgt_min=0.0"]) == 0
    assert current(root).number == 3
    assert not (root / "generations" / "0001").exists()  # removed by the next filter; 0002 is not ours: 0003
    assert (foreign / "notes.txt").read_text() == "mine" and "not a generation this engine wrote" in caplog.text
    assert check_output(root) == before


def test_filter_reuses_the_number_of_a_removed_leftover(tmp_path):
    root = _build(tmp_path, n=3)
    gen = generations.new_generation(root)
    (Path(gen.path) / "manifest.json").write_text("{}")  # complete-looking but never committed
    assert idd(["filter", str(root), "--set", "aesthetic_tgt_min=0.0"]) == 0
    assert current(root).number == 1 and current(root).manifest["generation"] == 1
    check_output(root)


def test_broken_pointer_is_one_line(tmp_path, capsys):
    root = _build(tmp_path, n=3)
    (root / "CURRENT.json").write_text('{"generation": "one"}')
    with pytest.raises(UserError, match="CURRENT.json: field generation"):
        current(root)
    capsys.readouterr()
    assert idd(["inspect", str(root)]) == 2
    err = capsys.readouterr().err
    assert "CURRENT.json: field generation" in err and len(err.strip().splitlines()) == 1
    (root / "CURRENT.json").write_text('{"generation": 4, "committed": [0, 4]}')
    assert idd(["filter", str(root), "--dry-run"]) == 2
    assert "names generation 4" in capsys.readouterr().err


def test_every_reader_follows_the_pointer_and_a_mixture_keeps_its_generation(tmp_path, capsys):
    from instructdiffusion_data.audit.catalog import Catalog
    from trainer.datasets import load_mixture, specs_from_outputs

    root = _build(tmp_path, n=8)
    shards = tmp_path / "shards"
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"name: t\nroot: {shards}\ndatasets:\n  - {{name: qpairs, output: qpairs/v1, weight: 2}}\n")
    assert idd(["mix", str(mix), "--out", str(tmp_path / "m0.json")]) == 0
    m0 = json.loads((tmp_path / "m0.json").read_text())
    d0 = m0["datasets"][0]
    assert d0["generation"] == 0
    tars0 = {s: sha(tmp_path / s) for s in d0["shards"]}

    t = threshold(root)
    assert idd(["filter", str(root), "--set", f"aesthetic_tgt_min={t}"]) == 0
    kept = {k for k, s in check_output(root).items() if s == "train"}
    # idd mix reads generation 1 and says so; its shards point into generations/0001
    assert idd(["mix", str(mix), "--out", str(tmp_path / "m1.json")]) == 0
    d1 = json.loads((tmp_path / "m1.json").read_text())["datasets"][0]
    assert d1["generation"] == 1 and d1["samples"] == len(kept)
    assert all("generations/0001/train/" in s for s in d1["shards"])
    assert d1["manifest"].endswith("generations/0001/manifest.json")
    # the earlier mixture still means what it meant: same files, same bytes
    assert {s: sha(tmp_path / s) for s in d0["shards"]} == tars0
    assert sum(sp.samples for sp in load_mixture(tmp_path / "m0.json")) == d0["samples"]
    # trainer fallback, inspect and the auditor catalog read generation 1
    spec = specs_from_outputs([str(root)], {})[0]
    assert spec.samples == len(kept) and all("/generations/0001/" in s for s in spec.shards)
    capsys.readouterr()
    assert idd(["inspect", str(tmp_path / "shards"), "--json"]) == 0
    summaries = json.loads(capsys.readouterr().out)
    assert len(summaries) == 1 and summaries[0]["generation"] == 1  # generations/ is not an output of its own
    assert summaries[0]["splits"]["train"]["rows"] == len(kept)
    cat = Catalog(tmp_path / "shards", refresh_s=0)
    assert set(cat.outputs) == {"qpairs/v1"} and cat.outputs["qpairs/v1"].generation == 1
    rows = cat.search(__import__("instructdiffusion_data.audit.query", fromlist=["Filters"]).Filters(split="train"),
                      page_size=200)["rows"]
    assert {r["key"] for r in rows} == kept
    loc = cat.location("qpairs/v1", "train", rows[0]["key"])
    assert loc["tar"].startswith("generations/0001/train/") and (root / loc["tar"]).is_file()


def test_labels_live_beside_the_output_and_survive_overwrite_and_refilter(tmp_path):
    root = _build(tmp_path, n=6)
    path = labels_path(root)
    assert path == root.parent / ".audit" / root.name / "labels.sqlite"
    assert root not in path.parents
    keys = sorted(check_output(root))
    store = LabelStore(root, "qpairs/v1")
    store.add(keys[0], "reject", "ann")
    store.add(keys[1], "accept", "bob")
    assert idd(["filter", str(root), "--set", "aesthetic_tgt_min=0.0"]) == 0
    assert check_output(root)[keys[0]] == "rejected"
    # a rerun with --overwrite removes the output folder's engine files; the labels stay and still apply
    from instructdiffusion_data import runner

    summary_root = _build(tmp_path, n=6)  # same config: a no-op resume
    assert summary_root == root
    import instructdiffusion_data.config as cfgmod
    cfg = cfgmod.build(cfgmod.PipelineConfig, json.loads((root / ".idd-run.json").read_text())["config"])
    runner.run(cfg, use_ray=False, overwrite=True)
    assert not (root / "CURRENT.json").exists() and current(root).number == 0
    assert overrides(root) == {keys[0]: "reject", keys[1]: "accept"}
    assert idd(["filter", str(root), "--set", "aesthetic_tgt_min=0.0"]) == 0
    assert check_output(root)[keys[0]] == "rejected"
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM labels").fetchone()[0] == 2
    con.close()


def test_labels_at_the_old_place_are_read_and_moved(tmp_path):
    root = _build(tmp_path, n=3)
    keys = sorted(check_output(root))
    old = root / "audit" / "labels.sqlite"
    old.parent.mkdir()
    con = sqlite3.connect(old)
    con.execute("CREATE TABLE labels(id INTEGER PRIMARY KEY, ts TEXT, auditor TEXT, output TEXT, key TEXT, "
                "verdict TEXT, comment TEXT, group_id TEXT)")
    con.execute("INSERT INTO labels(ts, auditor, output, key, verdict) VALUES ('t1', 'ann', 'o', ?, 'reject')",
                (keys[0],))
    con.commit()
    con.close()
    assert overrides(root) == {keys[0]: "reject"}  # read, and moved beside the output
    assert not old.exists() and labels_path(root).is_file()
    # an old file appearing again (an older version wrote it) is merged, not duplicated
    old.parent.mkdir(exist_ok=True)
    con = sqlite3.connect(old)
    con.execute("CREATE TABLE labels(id INTEGER PRIMARY KEY, ts TEXT, auditor TEXT, output TEXT, key TEXT, "
                "verdict TEXT, comment TEXT, group_id TEXT)")
    con.executemany("INSERT INTO labels(ts, auditor, output, key, verdict) VALUES (?, ?, 'o', ?, ?)",
                    [("t1", "ann", keys[0], "reject"), ("t2", "bob", keys[0], "accept")])
    con.commit()
    con.close()
    assert overrides(root) == {keys[0]: "accept"}
    con = sqlite3.connect(labels_path(root))
    assert con.execute("SELECT count(*) FROM labels").fetchone()[0] == 2
    with pytest.raises(sqlite3.DatabaseError):  # the moved file keeps the append-only triggers
        con.execute("DELETE FROM labels")
    con.close()


def test_a_second_filter_waits_for_no_one(tmp_path, capsys):
    """While one filter writes a generation (it holds the lock), another refuses with one line instead of
    taking the running one's folder for a leftover."""
    from instructdiffusion_data.generations import lock

    root = _build(tmp_path, n=3)
    with lock(root):
        capsys.readouterr()
        assert idd(["filter", str(root), "--set", "aesthetic_tgt_min=0.0"]) == 2
        assert "another idd filter is writing a generation" in capsys.readouterr().err
    assert idd(["filter", str(root), "--set", "aesthetic_tgt_min=0.0"]) == 0


def test_refiltered_rows_are_what_the_stage_would_write(tmp_path):
    """A row dropped before the quality filter keeps its own drop (the stage never re-drops it); a row the new
    thresholds drop gets the stage's drop class, details and text; the run's thresholds give the run's bytes."""
    root = _build(tmp_path, n=6)
    gen0 = {p.relative_to(root).as_posix(): sha(p) for p in sorted(root.glob("*/*.tar"))}

    def sidecar(key):
        gen = current(root)
        for split in SPLITS:
            for p in sorted((Path(gen.path) / split).glob("*.parquet")):
                for r in pq.read_table(p).to_pylist():
                    if r["key"] == key:
                        return r
        raise KeyError(key)

    earlier = next(k for k, s in check_output(root).items() if s == "rejected")
    was = sidecar(earlier)
    assert idd(["filter", str(root), "--set", "aesthetic_tgt_min=99"]) == 0  # every scored row fails
    now = sidecar(earlier)
    assert (now["drop_reason"], now["drop_class"], now["drop_detail"]) == \
        (was["drop_reason"], was["drop_class"], was["drop_detail"])
    assert json.loads(now["meta"])["filter"]["failed"]  # the failure is recorded, not added to its drop
    other = next(k for k, s in check_output(root).items() if s == "rejected" and k != earlier)
    r = sidecar(other)
    assert r["drop_class"] and r["drop_class"] in r["drop_reason"]
    assert [json.loads(d)["class"] for d in r["drop_detail"]] == [r["drop_class"]]
    assert idd(["filter", str(root), "--set", "aesthetic_tgt_min=0.0"]) == 0
    cur = Path(current(root).path)
    assert {p.relative_to(cur).as_posix(): sha(p) for p in sorted(cur.glob("*/*.tar"))} == gen0


def test_new_generation_keeps_the_shard_facts(tmp_path):
    root = _build(tmp_path, n=6)
    m0 = current(root).manifest
    st0 = json.loads((root / "train" / "000000.stats.json").read_text())
    assert idd(["filter", str(root), "--set", "aesthetic_tgt_min=0.0"]) == 0
    gen = current(root)
    st1 = json.loads((Path(gen.path) / "train" / "000000.stats.json").read_text())
    for k in set(st0) - {"files", "rows", "tasks", "datasets", "drop_reasons", "verified", "bytes",
                         "rows_without_image", "rows_without_image_examples"}:
        assert st1.get(k) == st0[k], k
    assert gen.manifest.get("records") == m0.get("records")
