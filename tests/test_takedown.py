"""Issue 16: ``idd takedown ROOT --source ID`` moves every row made from one source to rejected, as a new
generation of each affected output (the pointer switched last), logged; a kill at any commit point
leaves a consistent output and a rerun finishes the job."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from instructdiffusion_data.card import write_card
from instructdiffusion_data.cli import main
from instructdiffusion_data.commands.takedown import LOG_FILE, takedown
from instructdiffusion_data.generations import current

from .helpers_card import manifest, row, sidecar_rows, write_output

REPO = Path(__file__).resolve().parents[1]


def build(root: Path) -> dict[str, Path]:
    """Two outputs sharing COCO image 100 (keypoints: two people, two shards; semseg: one), and a RefCOCO
    output whose *record* 100 is another image."""
    kp = write_output(root, "keypoints_coco", "v1", [
        [row("coco", 100, 0), row("coco", 100, 1), row("coco", 101, 0), row("coco", 102, 0, keep=False)],
        [row("coco", 103, 0), row("coco", 104, 0)],  # no match here: linked into the new generation
    ])
    ss = write_output(root, "semseg_cocostuff", "v1", [[
        row("cocostuff", 100, 0, mask=True, task="semantic_seg"), row("cocostuff", 105, 0, mask=True, task="semantic_seg")]])
    rc = write_output(root, "refseg_refcoco", "v1", [[
        row("refcoco", 135, 0, mask=True, task="referring_seg",
            provenance={"source_id": "100", "licence": "x"})]])
    write_card(root)
    return {"kp": kp, "ss": ss, "rc": rc}


def files_digest(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and "generations" not in p.parts and p.name != "CURRENT.json"
            and p.name != LOG_FILE}


def keys(out: Path, split: str) -> set[str]:
    return {r["key"] for r in sidecar_rows(out, split)}


def test_takedown_moves_rows_in_a_new_generation(tmp_path, capsys):
    import datasets

    outs = build(tmp_path)
    before = {k: files_digest(o) for k, o in outs.items()}
    kp_train = keys(outs["kp"], "train")
    assert main(["takedown", str(tmp_path), "--source", "image:100", "--note", "request 42"]) == 0
    printed = capsys.readouterr().out
    assert "3 rows moved to rejected" in printed and "generation 1" in printed

    # generation 0 untouched, pointer switched, the unaffected output left as it was
    for k in ("kp", "ss", "rc"):
        assert files_digest(outs[k]) == before[k]
    assert current(outs["kp"]).number == 1 and current(outs["ss"]).number == 1
    assert current(outs["rc"]).number == 0 and not (outs["rc"] / "generations").exists()

    moved = {r["key"] for r in sidecar_rows(outs["kp"], "rejected") if r["drop_class"] == "takedown"}
    assert len(moved) == 2 and keys(outs["kp"], "train") == kp_train - moved
    for r in sidecar_rows(outs["kp"], "rejected") + sidecar_rows(outs["ss"], "rejected"):
        if r["key"] in moved or r["dataset"] == "cocostuff":
            assert r["drop_class"] == "takedown" and r["keep"] is False
            detail = json.loads(r["drop_detail"][0])
            assert detail["class"] == "takedown" and detail["requested"] == "image:100" and detail["note"] == "request 42"
            assert detail["date"] and r["meta"]["takedown"]["was_kept"] is True
            assert r["src_member"] is None and r["tgt_member"] is None and r["mask_member"] is None  # images gone
    old_drop = next(r for r in sidecar_rows(outs["kp"], "rejected") if r["key"].startswith("coco_102"))
    assert old_drop["drop_class"] == "too small"  # rows the request does not name keep their reason

    # the unchanged shard is linked, the changed one rewritten; the manifest records the takedown
    gen = current(outs["kp"])
    assert os.path.samefile(outs["kp"] / "train" / "000001.tar", Path(gen.path) / "train" / "000001.tar")
    m = manifest(outs["kp"])
    assert m["splits"]["train"]["rows"] == 3 and m["splits"]["rejected"]["rows"] == 3
    assert m["splits"]["rejected"]["drop_reasons"] == {"takedown": 2, "too small": 1}
    assert m["takedowns"][0]["sources"] == ["image:100"] and m["takedowns"][0]["from_train"] == 2
    for s in m["splits"]["train"]["shards"] + m["splits"]["rejected"]["shards"]:
        p = Path(gen.path) / s["tar"]
        assert p.stat().st_size == s["tar_bytes"] and hashlib.sha256(p.read_bytes()).hexdigest() == s["tar_sha256"]
    log = [json.loads(x) for x in (outs["kp"] / LOG_FILE).read_text().splitlines()]
    assert log[0]["rows"] == 2 and sorted(log[0]["keys"]) == sorted(moved) and log[0]["still_in_generations"] == [0]

    # the card follows the new generation, and datasets loads exactly the rows left
    card = (tmp_path / "README.md").read_text()
    assert "keypoints_coco/v1/generations/0001/train/000000.tar" in card
    assert "refseg_refcoco/v1/train/000000.tar" in card
    ds = datasets.load_dataset(str(tmp_path), "keypoints_coco", split="train", cache_dir=str(tmp_path / ".hf"))
    assert sorted(ds["__key__"]) == sorted(keys(outs["kp"], "train"))

    # a second request for the same id changes nothing
    assert main(["takedown", str(tmp_path), "--source", "image:100"]) == 0
    assert current(outs["kp"]).number == 1
    assert "3 matching rows were taken down before" in capsys.readouterr().out


def test_match_kinds_dataset_and_output_filters(tmp_path):
    build(tmp_path)
    by = lambda res: {rel: len(o["rows"]) for rel, o in res["outputs"].items() if o["rows"]}  # noqa: E731
    # a bare id matches COCO image 100 and the RefCOCO record 100 (another image)
    assert by(takedown(tmp_path, ["100"], dry_run=True)) == {
        "keypoints_coco/v1": 2, "semseg_cocostuff/v1": 1, "refseg_refcoco/v1": 1}
    assert by(takedown(tmp_path, ["record:100"], dry_run=True)) == {"refseg_refcoco/v1": 1}
    assert by(takedown(tmp_path, ["record:100_1"], dry_run=True)) == {"keypoints_coco/v1": 1}
    assert by(takedown(tmp_path, ["image:100"], datasets=["coco"], dry_run=True)) == {"keypoints_coco/v1": 2}
    assert by(takedown(tmp_path, ["image:100"], outputs=["semseg_cocostuff"], dry_run=True)) == {"semseg_cocostuff/v1": 1}
    # source files: name, stem, the tokenised path and the absolute path it resolves to
    for ident in ("000000000101.jpg", "file:000000000101", "{source.images}/000000000101.jpg",
                  "/data/coco/train2017/000000000101.jpg"):
        assert by(takedown(tmp_path, [ident], dry_run=True)) == {"keypoints_coco/v1": 1}, ident
    assert not any(p.name == "generations" for p in tmp_path.rglob("*"))  # dry runs write nothing


def test_replacement_rows_match_the_image_their_patch_came_from(tmp_path):
    write_output(tmp_path, "ieiw_replacement", "v1", [[
        row("openimages", 7, task="edit_replace", file_root="{source.root}/validation",
            reference={"image_id": "7a1ec4ff91c4911f", "file": "{source.root}/validation/7a1ec4ff91c4911f.jpg"}),
        row("openimages", 8, task="edit_replace")]], roots={"source.root": "/data/openimages"})
    for ident in ("image:7a1ec4ff91c4911f", "7a1ec4ff91c4911f.jpg", "/data/openimages/validation/7a1ec4ff91c4911f.jpg"):
        res = takedown(tmp_path, [ident], dry_run=True)
        assert [r["key"] for r in res["outputs"]["ieiw_replacement/v1"]["rows"]] == [row("openimages", 7)["key"]], ident


def test_no_match_and_keep_images(tmp_path, capsys):
    outs = build(tmp_path)
    assert main(["takedown", str(tmp_path), "--source", "image:999"]) == 1
    assert "no row matches" in capsys.readouterr().out
    assert all(current(o).number == 0 for o in outs.values())
    assert main(["takedown", str(tmp_path), "--source", "image:101", "--keep-images"]) == 0
    r = next(r for r in sidecar_rows(outs["kp"], "rejected") if r["drop_class"] == "takedown")
    assert r["src_member"] and r["tgt_member"] and r["meta"]["takedown"]["images_removed"] is False
    assert main(["takedown", str(tmp_path / "nowhere"), "--source", "1"]) == 2


def _run(root: Path, fault: str | None, log: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDD_FAULT")}
    if fault:
        env["IDD_FAULT_AT"] = fault
    if log:
        env["IDD_FAULT_LOG"] = str(log)
    return subprocess.run([sys.executable, "-m", "instructdiffusion_data.cli", "takedown", str(root),
                           "--source", "image:100"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _consistent(outs: dict[str, Path], expect_gen: dict[str, int]) -> None:
    for k, out in outs.items():
        gen = current(out)
        assert gen.number == expect_gen[k], (k, gen.number)
        train, rejected = sidecar_rows(out, "train"), sidecar_rows(out, "rejected")
        all_keys = [r["key"] for r in train + rejected]
        assert len(all_keys) == len(set(all_keys))  # every row once
        m = gen.manifest
        assert m["splits"]["train"]["rows"] == len(train) and m["splits"]["rejected"]["rows"] == len(rejected)
        taken = gen.number > 0
        for r in train:
            assert not (taken and r["meta"].get("image_id") == 100 and r["dataset"] in ("coco", "cocostuff"))


@pytest.mark.parametrize("fault", ["takedown.generation:1", "writer.parquet:1", "takedown.shard:1",
                                   "takedown.manifest:1", "takedown.pointer:1", "takedown.pointer:2"])
def test_kill_at_commit_points_then_rerun(tmp_path, fault):
    outs = build(tmp_path)
    res = _run(tmp_path, fault)
    assert res.returncode == -9, res.stderr[-2000:]
    # killed before its switch an output stays at generation 0; at the switch, it is at 1
    n = int(fault.rsplit(":", 1)[1])
    switched = {"kp": 0, "ss": 0, "rc": 0}
    if fault.startswith("takedown.pointer"):
        switched["kp"] = 1  # keypoints_coco is switched first
        if n == 2:
            switched["ss"] = 1
    _consistent(outs, switched)
    res = _run(tmp_path, None)
    assert res.returncode == 0, res.stderr[-2000:]
    _consistent(outs, {"kp": 1, "ss": 1, "rc": 0})
    for out in (outs["kp"], outs["ss"]):  # no leftover generation folder, the card points at the current one
        assert sorted(p.name for p in (out / "generations").iterdir() if p.name != ".lock") == ["0001"]
    assert "keypoints_coco/v1/generations/0001/train/000000.tar" in (tmp_path / "README.md").read_text()
