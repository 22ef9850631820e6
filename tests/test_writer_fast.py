"""The shard writer's hand-built tar and json member are byte-identical to what ``tarfile`` (PAX_FORMAT)
and ``dumps_meta`` write: member headers for short, long (pax), non-ASCII and huge members, padding,
the end-of-archive record padding, the member placements, the parquet sidecar and the stats; the
result reads back with ``tarfile`` and ``webdataset``."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instructdiffusion_data.imageio import sniff_ext
from instructdiffusion_data.schema import dumps_meta, drop, make_key, new_row, typed_scores
from instructdiffusion_data.tarblocks import TarChunks as _TarChunks
from instructdiffusion_data.tarblocks import tar_header as _tar_header
from instructdiffusion_data.tarblocks import tarinfo as _tarinfo
from instructdiffusion_data.writer import IMAGE_MEMBERS, SIDECAR_SCHEMA, ShardWriter, _members, sample_members, write_tar

JPEG, PNG = b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n"  # magic bytes: members named .jpg / .png


# ---- references: the writer as it was, on tarfile and a doc serialised whole -----------------------------

def ref_members(row: dict) -> dict[str, bytes]:
    members = {}
    for col in IMAGE_MEMBERS:
        data = row.get(col)
        if data:
            members[f"{col}.{sniff_ext(data)}"] = data
    if row.get("instruction") is not None:
        members["txt"] = row["instruction"].encode("utf-8")
    meta = row.get("meta") or {}
    if isinstance(meta, str):
        meta = json.loads(meta)
    doc = {"task": row.get("task"), "dataset": row.get("dataset"), "keep": bool(row.get("keep")),
           "drop_class": row.get("drop_class"), "drop_reason": row.get("drop_reason"), "meta": meta}
    members["json"] = dumps_meta(doc).encode("utf-8")
    return members


def ref_tar(fh, rows: list[dict]) -> list[dict]:
    placements = []
    with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for row in rows:
            place = {}
            for suffix, data in sorted(ref_members(row).items()):
                name = f"{row['key']}.{suffix}"
                tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
                col = suffix.split(".")[0]
                if col in IMAGE_MEMBERS:
                    place.update({f"{col}_member": name, f"{col}_offset": tar.offset - (len(data) + 511) // 512 * 512,
                                  f"{col}_size": len(data)})
            placements.append(place)
    return placements


def ref_archive(members: list[tuple[str, bytes]], prefix: bytes = b"") -> bytes:
    buf = io.BytesIO()
    buf.write(prefix)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
    return buf.getvalue()[len(prefix):]


def fast_archive(members: list[tuple[str, bytes]], offset: int = 0) -> tuple[bytes, list[int]]:
    tar = _TarChunks(offset)
    starts = [tar.add(name, data) for name, data in members]
    tar.close()
    return b"".join(tar.chunks), starts


def data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


NAMES = {
    "1": "a",
    "99": "k" * 95 + ".jpg",
    "100": "k" * 96 + ".jpg",
    "101": "k" * 97 + ".jpg",
    "250": "k" * 246 + ".jpg",
    "100_slashes": "/".join(["dir"] * 24) + "/ab.x",  # 100 bytes with separators
    "latin1": "café_0_deadbeef.txt",
    "cjk": "日本語の鍵.json",
    "cjk_long": "画像" * 60 + ".jpg",
    "emoji": "🐱" * 30,
    "surrogate": "key\udcff.bin",  # an undecodable byte kept by surrogateescape
    "ascii_99_plus_accent": "k" * 98 + "é",
}
SIZES = [0, 1, 511, 512, 513, 1023, 1024, 1025, 60_001]


@pytest.mark.parametrize("label", sorted(NAMES))
@pytest.mark.parametrize("size", SIZES)
def test_one_member_archive_matches_tarfile(label, size):
    members = [(NAMES[label], data(size, size))]
    ours, _ = fast_archive(members)
    assert ours == ref_archive(members)
    assert len(ours) % tarfile.RECORDSIZE == 0


# header 512 + data: the archive (with its two end blocks) ends exactly at, just before or just after a record
@pytest.mark.parametrize("size", [8704 - 1, 8704, 8704 + 1, 8704 + 511, 8704 + 512, 8704 + 513,
                                  2 * 10240 - 1536, 2 * 10240 - 1536 + 1])
def test_archive_ending_at_record_boundaries(size):
    members = [("edge.bin", data(size))]
    ours, _ = fast_archive(members)
    assert ours == ref_archive(members)


def test_many_members_and_offsets_match_tarfile():
    rnd = random.Random(7)
    members = [(rnd.choice(list(NAMES.values())) + f".{i}", data(rnd.choice(SIZES + [rnd.randint(0, 5000)]), i))
               for i in range(60)]
    ours, starts = fast_archive(members)
    assert ours == ref_archive(members)
    with tarfile.open(fileobj=io.BytesIO(ours)) as tar:
        infos = tar.getmembers()
        assert [(ti.name, ti.size) for ti in infos] == [(n, len(d)) for n, d in members]
        assert [ti.offset_data for ti in infos] == starts
        for ti, (_, d) in zip(infos, members):
            assert tar.extractfile(ti).read() == d
            assert (ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname) == (0, 0o644, 0, 0, "", "")


def test_empty_archive_matches_tarfile():
    assert fast_archive([])[0] == ref_archive([]) == bytes(tarfile.RECORDSIZE)


@pytest.mark.parametrize("start", [0, 1, 511, 512, 10239, 10240, 12345])
def test_archive_after_a_prefix_pads_like_tarfile(start):
    """tarfile counts offsets (and its record padding) from the stream position it started at."""
    members = [("a.jpg", data(700)), ("b.txt", data(9000))]
    ours, starts = fast_archive(members, offset=start)
    assert ours == ref_archive(members, prefix=b"p" * start)
    buf = io.BytesIO(b"p" * start + ours)
    buf.seek(start)
    with tarfile.open(fileobj=buf) as tar:
        assert [ti.offset_data for ti in tar.getmembers()] == starts


@pytest.mark.parametrize("size", [8 ** 11 - 1, 8 ** 11, 2 ** 40])
@pytest.mark.parametrize("label", ["1", "100", "101", "cjk"])
def test_header_of_huge_members_matches_tarfile(label, size):
    """Sizes from 8 GiB on need a pax ``size`` record (no data: the header alone, as ``addfile`` makes it)."""
    tar = tarfile.open(fileobj=io.BytesIO(), mode="w", format=tarfile.PAX_FORMAT)
    expected = _tarinfo(NAMES[label], size).tobuf(tar.format, tar.encoding, tar.errors)
    assert _tar_header(NAMES[label], size) == expected
    assert len(expected) == (512 if size < 8 ** 11 and label in ("1", "100") else 1536)


# ---- the json member ---------------------------------------------------------------------------------

METAS = [
    {},
    {"caption": "un café ☕ — « quotes » \"escaped\" \\ back\nslash\t\x00\x1f", "emoji": "🐱", "ü": "ключ"},
    {"joints": [[1.5, 2.25, 1], [0.1, 1e-300, 0], [1e300, -0.0, 2]], "nested": {"b": [1, [2, [3, None]]], "a": {}}},
    {"none": None, "flag": False, "zero": 0, "big": 2 ** 70, "neg": -1.0, "empty_list": [], "empty_str": ""},
    {"np_f32": np.float32(0.1), "np_f64": np.float64(1 / 3), "np_i64": np.int64(-7), "np_bool": np.bool_(True),
     "np_arr": np.arange(6, dtype=np.int16).reshape(2, 3), "np_farr": np.linspace(0, 1, 4)},
    {"z": 1, "a": 2, "M": 3, "_": 4, "10": 5, "9": 6, "é": 7},  # sort order of mixed keys
    {"scores": {"aesthetic_tgt": 5.5, "giqa_tgt": 0.25, "clip_sim_dir": 0.2}, "filter": {"profile": "clip"},
     "provenance": {"source_id": "s-1", "licence": "cc-by-4.0"}, "record_id": 12, "verified": True},
]
ROW_FIELDS = [
    {},
    {"task": "edit_replace", "dataset": "coco", "keep": True},
    {"task": None, "dataset": None, "keep": None},
    {"task": "adapt", "dataset": "ds/ü", "keep": False, "drop_class": "aesthetic_tgt<4.5",
     "drop_reason": "aesthetic_tgt<4.5 (value=1.2);dup (of=\"x\", note=☃)"},
    {"task": "deblur", "dataset": "d", "keep": 0, "drop_class": "", "drop_reason": ""},
]


@pytest.mark.parametrize("mi", range(len(METAS)))
@pytest.mark.parametrize("fi", range(len(ROW_FIELDS)))
@pytest.mark.parametrize("as_text", [False, True])
def test_json_member_equals_dumps_meta_of_the_doc(mi, fi, as_text):
    meta = METAS[mi]
    row = {"key": "k", **ROW_FIELDS[fi], "meta": dumps_meta(meta) if as_text else meta}
    parsed = json.loads(dumps_meta(meta))
    doc = {"task": row.get("task"), "dataset": row.get("dataset"), "keep": bool(row.get("keep")),
           "drop_class": row.get("drop_class"), "drop_reason": row.get("drop_reason"),
           "meta": parsed if as_text else meta}
    expected = dumps_meta(doc).encode("utf-8")
    assert sample_members(row)["json"] == expected
    assert _members(row, dumps_meta(parsed if as_text else meta))["json"] == expected


def test_json_member_of_a_missing_or_empty_meta():
    for meta in (None, "", {}):
        row = {"key": "k", "task": "t", "meta": meta}
        assert sample_members(row)["json"] == ref_members(row)["json"]


def test_json_member_with_non_string_scalars():
    """Fields that are not str or None (not written by the stages) still serialise like the whole doc."""
    row = {"key": "k", "task": np.str_("edit"), "dataset": 3, "drop_class": ["a", 1.5], "drop_reason": {"b": 1, "a": 2},
           "keep": np.bool_(True), "meta": {"x": 1}}
    assert sample_members(row)["json"] == ref_members(row)["json"]


def test_non_finite_meta_still_refused():
    with pytest.raises(ValueError, match="is not a finite number"):
        sample_members({"key": "k", "meta": {"scores": {"x": float("nan")}}})


# ---- whole shards ---------------------------------------------------------------------------------------

def make_rows(n: int = 24, seed: int = 0) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        meta = dict(METAS[i % len(METAS)])
        meta.update({"record_id": f"rec-{i}", "joints": [[rnd.random(), rnd.random(), 1] for _ in range(3)],
                     "scores": {"aesthetic_tgt": rnd.random() * 10, "giqa_tgt": rnd.random()},
                     "verified": bool(i % 2), "verify": {"on": "written" if i % 3 else "pixels"}})
        if i % 4 == 0:
            meta["provenance"] = {"source_id": f"s{i}", "licence": "cc0"}
        row = new_row(key=make_key("coco", f"rec/{i}" + ("x" * 90 if i % 5 == 0 else ""), i % 2),
                      task=["edit_replace", "adapt", "deblur"][i % 3], dataset="coco",
                      src=JPEG + data(rnd.choice([0, 1, 507, 508, 509, 3000]), i) if i % 6 else None,
                      tgt=PNG + data(rnd.randint(0, 4000), i + 100),
                      mask=(PNG + data(rnd.randint(0, 600), i + 200)) if i % 4 else None,
                      instruction=None if i % 7 == 0 else f"make it {'ünïcode ' * (i % 3)}{i}", meta=meta)
        if i % 3 == 0:
            drop(row, "aesthetic_tgt<4.5", value=round(rnd.random(), 3))
        rows.append(row)
    rows.append(new_row(key="z_" + "ü" * 60, task="edit", dataset="d", src=JPEG + b"x", instruction="non-ASCII key"))
    return sorted(rows, key=lambda r: r["key"])


def test_write_tar_matches_the_tarfile_writer_and_placements(tmp_path):
    rows = make_rows()
    ref = io.BytesIO()
    ref_places = ref_tar(ref, rows)
    ours = io.BytesIO()
    assert write_tar(ours, rows) == ref_places
    assert ours.getvalue() == ref.getvalue()
    assert write_tar(tmp_path / "x.tar", rows) == ref_places
    assert (tmp_path / "x.tar").read_bytes() == ref.getvalue()
    # the placements point at each image's bytes
    blob = ref.getvalue()
    for row, place in zip(rows, ref_places):
        for col in IMAGE_MEMBERS:
            if row.get(col):
                assert blob[place[f"{col}_offset"]:][:place[f"{col}_size"]] == row[col]


def test_write_tar_on_a_stream_that_already_holds_bytes():
    rows = make_rows(6)
    ref, ours = io.BytesIO(b"head" * 100), io.BytesIO(b"head" * 100)
    ref.seek(0, 2)
    ours.seek(0, 2)
    assert write_tar(ours, rows) == ref_tar(ref, rows)
    assert ours.getvalue() == ref.getvalue()


def ref_sidecar(rows, places, tar_name, output, version) -> bytes:
    out = []
    for r, place in zip(rows, places):
        meta = r.get("meta") or {}
        prov = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {}
        out.append({
            "key": r["key"], "task": r.get("task"), "dataset": r.get("dataset"), "output": output, "version": version,
            "source_id": prov.get("source_id") or (str(meta["record_id"]) if meta.get("record_id") is not None else None),
            "licence": prov.get("licence"), "instruction": r.get("instruction"), "meta": dumps_meta(meta),
            "keep": bool(r.get("keep")), "drop_class": r.get("drop_class"), "drop_detail": r.get("drop_detail"),
            "drop_reason": r.get("drop_reason"), **typed_scores(meta), "tar": tar_name, **place})
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(out, schema=SIDECAR_SCHEMA), buf, compression="zstd")
    return buf.getvalue()


@pytest.mark.parametrize("keep_all", [False, True])
def test_write_shard_bytes_match_the_reference_writer(tmp_path, keep_all):
    rows = make_rows()
    if keep_all:  # an empty rejected split: a tar of one zero record, a sidecar without rows
        rows = [r for r in rows if r["keep"]]
    random.Random(1).shuffle(rows)
    stats = ShardWriter(tmp_path, output="out", version="v1").write_shard(3, rows, info={"records": 99})
    ordered = sorted(rows, key=lambda r: r["key"])
    for split, keep in (("train", True), ("rejected", False)):
        srows = [r for r in ordered if bool(r.get("keep")) == keep]
        tar_ref = io.BytesIO()
        places = ref_tar(tar_ref, srows)
        tar_bytes = (tmp_path / split / "000003.tar").read_bytes()
        pq_bytes = (tmp_path / split / "000003.parquet").read_bytes()
        assert tar_bytes == tar_ref.getvalue()
        assert pq_bytes == ref_sidecar(srows, places, "000003.tar", "out", "v1")
        files = stats[split]["files"]
        assert files["tar"] == {"bytes": len(tar_bytes), "sha256": hashlib.sha256(tar_bytes).hexdigest()}
        assert files["parquet"] == {"bytes": len(pq_bytes), "sha256": hashlib.sha256(pq_bytes).hexdigest()}
        assert json.loads((tmp_path / split / "000003.stats.json").read_text()) == stats[split]
        assert stats[split]["rows"] == len(srows)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        f"000003.{ext}" for ext in ("tar", "parquet", "stats.json") for _ in range(2))


def test_written_tar_reads_back_with_tarfile_and_webdataset(tmp_path):
    wds = pytest.importorskip("webdataset")
    rows = [r for r in make_rows() if r["keep"]]
    ShardWriter(tmp_path).write_shard(0, rows)
    path = tmp_path / "train" / "000000.tar"
    expected = {f"{r['key']}.{suffix}": d for r in rows for suffix, d in ref_members(r).items()}
    with tarfile.open(path) as tar:
        got = {ti.name: tar.extractfile(ti).read() for ti in tar.getmembers()}
    assert got == expected
    samples = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == [r["key"] for r in sorted(rows, key=lambda r: r["key"])]
    by_key = {s["__key__"]: s for s in samples}
    for r in rows:
        assert {k: v for k, v in by_key[r["key"]].items() if not k.startswith("__")} == ref_members(r)
