"""A damaged shard stops ``idd filter`` with one line naming it (issue 14 item 3): member reads are checked
against the sidecar's size columns, shard files against the manifest's sizes; nothing is written as if the
missing members were never there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructdiffusion_data.cli import main as idd
from instructdiffusion_data.errors import UserError
from instructdiffusion_data.generations import current, generation_dirs
from instructdiffusion_data.models.quality import read_member
from tests.test_gen_faults import run_idd
from tests.test_gen_filter import check_output
from tests.test_quality_refilter import _build


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _strip_sizes(root: Path) -> None:
    """The manifest an older version wrote: no sizes or hashes per shard file."""
    m = json.loads((root / "manifest.json").read_text())
    for split in m["splits"].values():
        for e in split["shards"]:
            for k in ("tar_bytes", "tar_sha256", "parquet_bytes", "parquet_sha256"):
                e.pop(k, None)
    (root / "manifest.json").write_text(json.dumps(m))


def _one_error_line(stderr: str, *needles: str) -> str:
    assert "Traceback" not in stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("idd filter: error:")]
    assert len(errors) == 1, stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def test_read_member_checks_the_length(tmp_path):
    tar = tmp_path / "000000.tar"
    tar.write_bytes(b"x" * 1000)
    assert read_member(tar, 100, 50) == b"x" * 50
    fhs: dict = {}
    assert read_member(tar, 990, 10, fhs) == b"x" * 10
    with pytest.raises(UserError, match=r"000000.tar: damaged shard .*needs 50 bytes, the file gives 20"):
        read_member(tar, 980, 50, fhs)
    for fh in fhs.values():
        fh.close()
    with pytest.raises(UserError, match="shard tar missing"):
        read_member(tmp_path / "nope.tar", 0, 1)


def test_truncated_tar_stops_filter_out_with_one_line(tmp_path):
    root = _build(tmp_path, n=8)
    tar = root / "train" / "000001.tar"
    _truncate(tar)
    out = tmp_path / "new"
    r = run_idd(["filter", str(root), "--set", "aesthetic_tgt_min=0.0", "--out", str(out)])
    assert r.returncode == 2, r.stdout + r.stderr
    _one_error_line(r.stderr, str(tar), "damaged shard", "manifest")
    assert not (out / "manifest.json").exists()  # no output that looks complete


def test_truncated_tar_of_an_older_output_is_caught_by_the_member_sizes(tmp_path, caplog):
    root = _build(tmp_path, n=8)
    _strip_sizes(root)
    tar = root / "train" / "000001.tar"
    _truncate(tar)
    out = tmp_path / "new"
    r = run_idd(["filter", str(root), "--set", "aesthetic_tgt_min=0.0", "--out", str(out)])
    assert r.returncode == 2, r.stdout + r.stderr
    _one_error_line(r.stderr, str(tar), "damaged shard", "bytes")
    assert "no file sizes in the manifest" in r.stderr  # the older manifest is tolerated, with a warning
    assert not (out / "manifest.json").exists()
    # in place: the current generation stays the old one, whole; the next filter clears the leftover
    assert idd(["filter", str(root), "--set", "aesthetic_tgt_min=0.0"]) == 2
    assert current(root).number == 0 and list(generation_dirs(root)) == [1]
    tar.write_bytes(b"")  # repaired? no: now the tar is empty
    assert idd(["filter", str(root), "--set", "aesthetic_tgt_min=0.0"]) == 2
    assert list(generation_dirs(root)) == [1]  # the leftover of the first attempt was replaced, not kept


def test_missing_sidecar_or_tar_is_one_line(tmp_path):
    root = _build(tmp_path, n=6)
    (root / "rejected" / "000000.parquet").unlink()
    r = run_idd(["filter", str(root), "--out", str(tmp_path / "new")])
    assert r.returncode == 2
    _one_error_line(r.stderr, "rejected/000000.parquet", "missing")


def test_out_of_an_earlier_killed_filter_is_redone(tmp_path):
    root = _build(tmp_path, n=6)
    out = tmp_path / "new"
    assert idd(["filter", str(root), "--out", str(out)]) == 0
    whole = check_output(out)
    (out / "manifest.json").unlink()  # as if killed before its manifest
    (out / "train" / "000000.tar").write_bytes(b"partial")
    assert idd(["filter", str(root), "--out", str(out)]) == 0
    assert check_output(out) == whole
    assert idd(["filter", str(root), "--out", str(out)]) == 2  # a finished output is never overwritten
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("x")
    assert idd(["filter", str(root), "--out", str(tmp_path / "other")]) == 2
