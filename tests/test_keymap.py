"""``idd keymap``: old keys -> new keys across the format-2 record-id change, and auditor labels carried over.

The old output is the real CrowdPose pipeline's output rewritten the way format 1 wrote it: record ids
``<image>/<annotation>``, keys made from them, sidecars without the format-2 columns, manifest format 1,
labels inside the output (``<output>/audit/labels.sqlite``). The tool reads sidecars and manifests only,
so the tars are left out of the old output.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instructdiffusion_data import cli, keymap, runner
from instructdiffusion_data.audit import labels as L
from instructdiffusion_data.config import load_pipeline_config
from instructdiffusion_data.demo import generate_all
from instructdiffusion_data.schema import make_key

REPO = Path(__file__).resolve().parent.parent
FORMAT1_COLUMNS = ("key", "task", "dataset", "instruction", "meta", "keep", "drop_reason", "tar", "src_member",
                   "src_offset", "src_size", "tgt_member", "tgt_offset", "tgt_size", "mask_member", "mask_offset",
                   "mask_size")
GONE_RID = "999999/9"  # an old record the new output does not have


def old_rid(rid: str) -> str:
    image, ann = rid.split("_", 1)
    return f"{image}/{ann}"


def write_format1(new: Path, old: Path, gone: str) -> dict[str, str]:
    """``old``: ``new`` as format 1 wrote it. Returns {old key: new key} as it should come out (``gone``:
    the new key whose old row gets a record id the new output does not have)."""
    manifest = json.loads((new / "manifest.json").read_text())
    expect = {}
    for split, body in manifest["splits"].items():
        (old / split).mkdir(parents=True, exist_ok=True)
        for shard in body["shards"]:
            table = pq.read_table(new / shard["parquet"])
            schema = pa.schema([table.schema.field(c) for c in FORMAT1_COLUMNS])
            rows = table.to_pylist()
            out = []
            for r in rows:
                meta = json.loads(r["meta"])
                rid = GONE_RID if r["key"] == gone else old_rid(meta["record_id"])
                meta["record_id"] = rid
                meta.pop("provenance", None)
                key = make_key(r["dataset"], rid, f"v{meta['variant']}")
                if r["key"] != gone:
                    expect[key] = r["key"]
                out.append({**{c: r[c] for c in FORMAT1_COLUMNS}, "key": key, "meta": json.dumps(meta)})
            out.sort(key=lambda r: r["key"])
            pq.write_table(pa.Table.from_pylist(out, schema=schema), old / shard["parquet"])
    manifest["format"] = "instructdiffusion-data/1"
    manifest["version"] = old.name
    for body in manifest["splits"].values():
        body["shards"] = [{k: s[k] for k in ("tar", "parquet", "rows")} for s in body["shards"]]
    (old / "manifest.json").write_text(json.dumps(manifest))
    return expect


def legacy_labels(old: Path, rows: list[tuple]) -> Path:
    """Labels where format-1 versions kept them: inside the output."""
    path = old / "audit" / "labels.sqlite"
    path.parent.mkdir(parents=True)
    con = sqlite3.connect(path)
    con.executescript(L._SCHEMA)
    con.executemany("INSERT INTO labels(ts, auditor, output, key, verdict, comment, group_id) VALUES (?,?,?,?,?,?,?)",
                    rows)
    con.commit()
    con.close()
    return path


def all_labels(output: Path) -> list[dict]:
    con = sqlite3.connect(L.labels_path(output))
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM labels ORDER BY id")]
    finally:
        con.close()


@pytest.fixture(scope="module")
def crowdpose(tmp_path_factory):
    work = tmp_path_factory.mktemp("keymap")
    generate_all(work / "demo_data", 6, 0, ["crowdpose"])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # the config names demo_data/... relative to the working folder
        cfg = load_pipeline_config(REPO / "configs" / "pipelines" / "keypoints_crowdpose.yaml",
                                   ["writer.records_per_shard=4"])
        runner.run(cfg, out=str(work / "shards"), use_ray=False)
    return work / "shards" / "keypoints_crowdpose"


@pytest.fixture
def outputs(crowdpose, tmp_path):
    """A fresh copy: ``(old v1, new v2, {old key: new key} expected, the new key whose record is gone)``."""
    import shutil

    root = tmp_path / "shards" / "keypoints_crowdpose"
    new = root / "v2"
    shutil.copytree(crowdpose / "v2", new)
    keys = sorted(k for p in new.glob("*/*.parquet") for k in pq.read_table(p, columns=["key"])["key"].to_pylist())
    gone = keys[-1]
    expect = write_format1(new, root / "v1", gone)
    return root / "v1", new, expect, gone


def test_record_ids_normalised_and_variants_recovered_from_keys():
    assert keymap.normalise_record_id("crowdpose", "100/7") == "100_7"
    assert keymap.normalise_record_id("mpii", "015601864.jpg/0") == "015601864.jpg_0"
    assert keymap.normalise_record_id("aic", "abc/human1") == "abc_human1"
    assert keymap.normalise_record_id("coco", "100/7") == "100/7"  # other readers kept their ids
    assert keymap.normalise_record_id("mpii", "a/b.jpg/0") == "a/b.jpg_0"  # the image name keeps its folder
    assert keymap.normalise_record_id("mpii", "<entry 3>") == "<entry 3>"
    assert keymap.normalise_record_id("sa1b", "sa_1/2", {"sa1b"}) == "sa_1_2"
    for variant, meta in (("v3", 3), ("rec", None), ("remove", None), ("a.b", "a.b"), ("x" * 70, None)):
        key = make_key("crowdpose", "100/7", variant)
        assert keymap.key_variant(key, "crowdpose", "100/7", meta) == variant, variant
    assert keymap.key_variant(make_key("crowdpose", "100/7", "v0"), "crowdpose", "100/8", 0) is None


def test_keymap_carries_labels_onto_the_new_keys(outputs, capsys):
    old, new, expect, gone = outputs
    olds = sorted(expect)
    k0, k1, k2, k3 = olds[:4]
    unmatched_old = make_key("crowdpose", GONE_RID, "v" + gone.split("_")[-2][1:])
    stale = "crowdpose_1-1_v0_deadbeef"  # a label on a key the old output does not hold
    legacy = legacy_labels(old, [
        ("2026-01-01T00:00:00.000001+00:00", "ann", "keypoints_crowdpose/v1", k0, "reject", "joint off", None),
        ("2026-01-01T00:00:01.000001+00:00", "bob", "keypoints_crowdpose/v1", k1, "reject", "", None),
        ("2026-01-01T00:00:02.000001+00:00", "bob", "keypoints_crowdpose/v1", k0, "accept", "fine after all", None),
        ("2026-01-01T00:00:03.000001+00:00", "ann", "keypoints_crowdpose/v1", unmatched_old, "reject", "", None),
        ("2026-01-01T00:00:04.000001+00:00", "ann", "keypoints_crowdpose/v1", stale, "accept", "", None),
        ("2026-01-01T00:00:05.000001+00:00", "cy", "keypoints_crowdpose/v1", k2, "align_pick", "", "g1"),
        ("2026-01-01T00:00:05.000001+00:00", "cy", "keypoints_crowdpose/v1", k3, "align_pick", "", "g1"),
    ])
    # the new output already has a label for k1's new key: it must stay the only one there
    L.LabelStore(new, "keypoints_crowdpose/v2").add(expect[k1], "accept", "dee", "checked in v2")
    mapfile = old.parents[2] / "maps" / "map.parquet"
    mapfile.parent.mkdir()

    rc = cli.main(["keymap", str(old), str(new), "--write", str(mapfile), "--carry-labels", "--json"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    n_old = len(expect) + 1
    assert s["old"]["rows"] == n_old and s["old"]["format"] == "instructdiffusion-data/1"
    assert s["new"]["rows"] == n_old and s["new"]["format"] == "instructdiffusion-data/2"
    assert s["matched"] == s["changed_keys"] == len(expect) and s["same_keys"] == 0
    assert s["unmatched_old"] == 1 and s["unmatched_old_examples"] == [unmatched_old]
    assert s["unmatched_old_by_dataset"] == {"crowdpose": 1} and s["unmatched_new"] == 1 and s["ambiguous_old"] == 0
    lab = s["labels"]
    assert (lab["carried"], lab["no_match"], lab["already_labelled"]) == (1, 2, 1)
    assert (lab["picks_carried"], lab["picks_no_match"], lab["picks_already"]) == (1, 0, 0)
    assert lab["rows_added"] == 4 and sorted(lab["no_match_examples"]) == sorted([unmatched_old, stale])

    # the map: every matched old key with its new key, which is the key the new readers make
    t = pq.read_table(mapfile)
    assert t.column_names == ["old_key", "new_key", "dataset", "record_id"]
    got = dict(zip(t.column("old_key").to_pylist(), t.column("new_key").to_pylist()))
    assert got == expect
    for r in t.to_pylist():
        assert r["dataset"] == "crowdpose" and "/" not in r["record_id"]
        assert make_key("crowdpose", r["record_id"], r["new_key"].split("_")[-2]) == r["new_key"]
    assert [p.name for p in mapfile.parent.iterdir()] == ["map.parquet"]  # no temporary left
    assert json.loads(pq.read_schema(mapfile).metadata[b"idd.keymap"])["old"] == "keypoints_crowdpose/v1"

    # labels: the legacy file moved beside the old output and left as it was; the new store has the carried ones
    assert not legacy.exists() and len(all_labels(old)) == 7
    assert L.overrides(new) == {expect[k0]: "accept", expect[k1]: "accept"}
    hist = [(r["auditor"], r["verdict"], r["comment"], r["ts"], r["output"])
            for r in all_labels(new) if r["key"] == expect[k0]]
    assert hist == [("ann", "reject", "joint off", "2026-01-01T00:00:00.000001+00:00", "keypoints_crowdpose/v2"),
                    ("bob", "accept", "fine after all", "2026-01-01T00:00:02.000001+00:00", "keypoints_crowdpose/v2")]
    k1_rows = [(r["auditor"], r["verdict"]) for r in all_labels(new) if r["key"] == expect[k1]]
    assert k1_rows == [("dee", "accept")]  # never overwritten, nothing added
    picks = L.alignment_picks(L.labels_path(new))
    assert sorted(p["key"] for p in picks) == sorted([expect[k2], expect[k3]])
    assert {p["group_id"] for p in picks} == {"g1"}
    assert not any(r["key"] in (unmatched_old, stale) for r in all_labels(new))

    # a second run adds nothing: every carried key is labelled now
    before = all_labels(new)
    assert cli.main(["keymap", str(old), str(new), "--carry-labels", "--json"]) == 0
    lab2 = json.loads(capsys.readouterr().out)["labels"]
    assert (lab2["carried"], lab2["no_match"], lab2["already_labelled"], lab2["rows_added"]) == (0, 2, 2, 0)
    assert lab2["picks_already"] == 1 and all_labels(new) == before


def test_keymap_text_summary_names_unmatched_keys(outputs, capsys):
    old, new, expect, gone = outputs
    assert cli.main(["keymap", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert f"matched {len(expect)} ({len(expect)} keys changed, 0 unchanged)" in out
    assert "old keys without a new one: 1 (crowdpose: 1); first: crowdpose_999999-9_" in out
    assert not (new.parent / ".audit").exists()  # without --carry-labels nothing is written


def test_unchanged_ids_map_to_themselves_and_labels_follow_the_version(tmp_path, capsys):
    from .helpers_card import row, write_output

    rows = [row("coco", 1), row("coco", 2), row("coco", 3, keep=False)]
    old = write_output(tmp_path, "kp", "v1", [rows])
    new = write_output(tmp_path, "kp", "v2", [rows[:2] + [row("coco", 4)]])
    L.LabelStore(old, "kp/v1").add(rows[2]["key"], "accept", "ann")
    assert cli.main(["keymap", str(old), str(new), "--carry-labels", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["matched"] == s["same_keys"] == 2 and s["changed_keys"] == 0
    assert s["unmatched_old_examples"] == [rows[2]["key"]] and s["unmatched_new"] == 1
    assert s["labels"]["no_match"] == 1 and L.overrides(new) == {}
    L.LabelStore(old, "kp/v1").add(rows[0]["key"], "reject", "ann")
    assert cli.main(["keymap", str(old), str(new), "--carry-labels"]) == 0
    assert "carried 1 keys (1 label rows)" in capsys.readouterr().out
    assert L.overrides(new) == {rows[0]["key"]: "reject"}


def test_one_line_errors(tmp_path, capsys):
    from .helpers_card import row, write_output

    new = write_output(tmp_path, "kp", "v2", [[row("coco", 1)]])
    (tmp_path / "empty").mkdir()
    for args, msg in (([str(tmp_path / "nope"), str(new)], "no such output folder"),
                      ([str(tmp_path / "empty"), str(new)], "not a shard output (no manifest.json)"),
                      ([str(new), str(new)], "the old and new outputs are the same folder"),
                      ([str(new), str(tmp_path / "nope")], "no such output folder")):
        assert cli.main(["keymap", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    other = write_output(tmp_path, "kp", "v3", [[row("coco", 1)]])
    (new / "train" / "000000.parquet").unlink()
    assert cli.main(["keymap", str(new), str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "000000.parquet: missing" in err and len(err.splitlines()) == 1, err
