"""``idd benchmark build`` (paper 4.4): a benchmark output from a folder of images and a JSONL, read back
with the stock ``webdataset`` library: members, captions (exact strings from the fixture lines), counts,
the align/eval halves (disjoint, stable), bad lines kept in rejected/ with file and line, the LLM path
against a loopback OpenAI-compatible server, and a rebuild from an existing output."""

import glob
import json

import pytest
import webdataset as wds

from instructdiffusion_data.benchmark import bench_split, build, load_config, read_samples, split_tars
from instructdiffusion_data.benchmark.captions import LLM_REJECTED, NO_OBJECT, NO_SOURCE_CAPTION, OBJECT_NOT_IN_CAPTION
from instructdiffusion_data.benchmark.inputs import (BAD_FIELD_VALUE, DUPLICATE, INVALID_JSON, MISSING_FIELD, NO_IMAGE, UNKNOWN_CATEGORY,
                                                     UNSAFE_PATH)
from instructdiffusion_data.cli import main as idd
from instructdiffusion_data.demo import generate_all
from instructdiffusion_data.errors import UserError

# fixture lines (images of the demo editbench folder) with the target caption each must get
GOOD = [
    ({"image": "000500.jpg", "instruction": "Remove the red dog.", "category": "remove",
      "caption": "A red dog and a cat on the grass."}, "A cat on the grass.", "rule:remove"),
    ({"image": "000501.jpg", "instruction": "add a yellow umbrella", "category": "addition",
      "caption": "Two people on the sand."}, "Two people on the sand, with a yellow umbrella", "rule:add"),
    ({"image": "000502.jpg", "instruction": "Replace the blue car with a bus.", "category": "replace",
      "caption": "A blue car, a cup and a person under the sky."}, "A bus, a cup and a person under the sky.",
     "rule:replace"),
    ({"image": "000503.jpg", "instruction": "Make it snow", "category": "add", "caption": "A street.",
      "target_caption": "A street covered in snow.", "id": "snow-1"}, "A street covered in snow.", "given"),
]
BAD = [  # (line text, drop class, field)
    ('{"image": "000504.jpg", "instruction": "Remove the cat", "category": "swap", "caption": "A cat."}',
     UNKNOWN_CATEGORY, "category"),
    ('{"image": "000504.jpg", "instruction": "Remove the cat", "caption": "A cat."', INVALID_JSON, None),
    ('["000504.jpg", "Remove the cat", "remove"]', INVALID_JSON, None),
    ('{"image": "000504.jpg", "category": "remove", "caption": "A cat."}', MISSING_FIELD, "instruction"),
    ('{"image": "nope.jpg", "instruction": "Remove the cat", "category": "remove"}', NO_IMAGE, "image"),
    ('{"image": "../images/000504.jpg", "instruction": "Remove the cat", "category": "remove"}', UNSAFE_PATH, "image"),
    ('{"image": "000504.jpg", "instruction": 5, "category": "remove"}', BAD_FIELD_VALUE, "instruction"),
    (json.dumps(GOOD[0][0]), DUPLICATE, "image"),
]
# valid lines that cannot be captioned: rejected after reading, with the reason
UNCAPTIONED = [
    ({"image": "000505.jpg", "instruction": "Remove the giraffe.", "category": "remove",
      "caption": "A dog on the grass."}, OBJECT_NOT_IN_CAPTION),
    ({"image": "000506.jpg", "instruction": "Remove the dog.", "category": "remove"}, NO_SOURCE_CAPTION),
    ({"image": "000507.jpg", "instruction": "Make it look nicer", "category": "replace", "caption": "A dog."}, NO_OBJECT),
]


@pytest.fixture(scope="module")
def bench_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("editbench")
    generate_all(root, n=12, seed=0, only=["editbench"])
    folder = root / "editbench"
    # the demo's paths are relative to its JSONL's folder; here images= is its images/ folder
    demo_lines = [json.dumps({**d, "image": d["image"].removeprefix("images/")})
                  for d in map(json.loads, (folder / "benchmark.jsonl").read_text().splitlines())]
    lines = [json.dumps(g[0]) for g in GOOD] + ["", "# a comment"] + [b[0] for b in BAD] + \
        [json.dumps(u[0]) for u in UNCAPTIONED] + demo_lines[8:]
    (folder / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    return folder, lines


def _lineno(lines: list[str], text: str) -> int:
    return lines.index(text) + 1


def _cfg(folder, out, **kw):
    return load_config(None, [], jsonl=str(folder / "mixed.jsonl"), images=str(folder / "images"), out=str(out), **kw)


def _decode(paths):
    return list(wds.WebDataset(sorted(paths), shardshuffle=False, empty_check=False))


@pytest.fixture(scope="module")
def built(bench_input, tmp_path_factory):
    folder, lines = bench_input
    out = tmp_path_factory.mktemp("bench_out")
    manifest = build(_cfg(folder, out))
    return out / "editbench" / "v1", manifest


def test_members_captions_and_counts(built, bench_input):
    root, manifest = built
    _, lines = bench_input
    samples = _decode(glob.glob(str(root / "train" / "*.tar")))
    n_demo = 4  # demo lines 9-12 (the demo's own captions and objects)
    assert len(samples) == len(GOOD) + n_demo == manifest["splits"]["train"]["rows"]
    by_instruction = {}
    for s in samples:
        assert sorted(k for k in s if not k.startswith("__")) == ["json", "src.jpg", "txt"]
        doc = json.loads(s["json"])
        assert doc["task"] == f"edit_{doc['meta']['category']}" and doc["dataset"] == "editbench"
        by_instruction[s["txt"].decode()] = doc["meta"]
    for line, target, how in GOOD:
        meta = by_instruction[line["instruction"]]
        assert meta["source_caption"] == line["caption"]
        assert meta["target_caption"] == target
        assert meta["target_caption_provenance"]["path"] == how
        assert meta["caption_provenance"] == {"backend": "annotations", "source": "jsonl"}
        assert meta["line"] == _lineno(lines, json.dumps(line))
        assert meta["file"] == "{source.images}/" + line["image"]
    assert by_instruction["add a yellow umbrella"]["category"] == "add"  # "addition" read as add
    # the source image is the file's own bytes (a JPEG within max_side)
    src = {s["txt"].decode(): s["src.jpg"] for s in samples}
    assert src["Remove the red dog."] == (bench_input[0] / "images" / "000500.jpg").read_bytes()
    # no absolute input path in the rows (the manifest's roots map the tokens back)
    for f in root.rglob("*"):
        if f.is_file() and f.suffix in (".parquet", ".tar"):
            assert str(bench_input[0]).encode() not in f.read_bytes(), f


def test_bad_lines_kept_in_rejected_with_file_and_line(built, bench_input):
    root, manifest = built
    _, lines = bench_input
    rejected = _decode(glob.glob(str(root / "rejected" / "*.tar")))
    assert len(rejected) == len(BAD) + len(UNCAPTIONED) == manifest["splits"]["rejected"]["rows"]
    assert manifest["benchmark"]["bad_lines"] == len(BAD)
    by_line = {json.loads(s["json"])["meta"]["line"]: json.loads(s["json"]) for s in rejected}
    for text, reason, field in BAD:
        n = len(lines) - lines[::-1].index(text) if reason == DUPLICATE else _lineno(lines, text)
        doc = by_line[n]
        assert doc["drop_class"] == reason and doc["keep"] is False
        assert f"file=mixed.jsonl, line={n}" in doc["drop_reason"]
        assert doc["meta"]["field"] == field
    for line, reason in UNCAPTIONED:
        doc = by_line[_lineno(lines, json.dumps(line))]
        assert doc["drop_class"] == reason
    assert manifest["splits"]["rejected"]["drop_reasons"][UNKNOWN_CATEGORY] == 1
    assert manifest["splits"]["rejected"]["drop_reasons"][INVALID_JSON] == 2


def test_halves_disjoint_stable_and_listed(built, bench_input, tmp_path):
    root, manifest = built
    folder, lines = bench_input
    bench = manifest["benchmark"]
    keys = {}
    for half in ("align", "eval"):
        tars = split_tars(root, half)
        assert [t.split("/")[-2] + "/" + t.split("/")[-1] for t in tars] == bench["splits"][half]["tars"]
        got = _decode(tars)
        keys[half] = {s["__key__"] for s in got}
        assert len(got) == bench["splits"][half]["rows"]
        for s in got:
            meta = json.loads(s["json"])["meta"]
            assert meta["bench_split"] == half == bench_split(s["__key__"], 0, 0.5)
        assert sorted(r["key"] for r in read_samples(root, half)) == sorted(keys[half])
    assert keys["align"] and keys["eval"] and not keys["align"] & keys["eval"]
    assert sum(bench["splits"][h]["rows"] for h in ("align", "eval")) == manifest["splits"]["train"]["rows"]
    # the same input and seed: the same bytes
    again = build(_cfg(folder, tmp_path / "again"))
    shas = lambda m: [s["tar_sha256"] for s in m["splits"]["train"]["shards"]]  # noqa: E731
    assert shas(again) == shas(manifest)
    # lines added or removed leave every other sample in its half
    (folder / "more.jsonl").write_text("\n".join(lines[2:] + [json.dumps(
        {"image": "000508.jpg", "instruction": "Add a hat.", "category": "add", "caption": "A man."})]) + "\n")
    more = build(load_config(None, [], jsonl=str(folder / "more.jsonl"), images=str(folder / "images"),
                             out=str(tmp_path / "more")))
    moved = {}
    for half in ("align", "eval"):
        for s in _decode(split_tars(tmp_path / "more" / "editbench" / "v1", half)):
            moved[s["__key__"]] = half
    common = set(moved) & (keys["align"] | keys["eval"])
    # lines 1-2 gone (line 1 comes back as its later duplicate, now the first), one line added
    assert len(common) == manifest["splits"]["train"]["rows"] - 1 == more["splits"]["train"]["rows"] - 1
    for half in ("align", "eval"):
        for k in keys[half] & common:
            assert moved[k] == half


def test_strict_and_user_errors(bench_input, tmp_path, capsys):
    folder, lines = bench_input
    n = _lineno(lines, BAD[0][0])
    with pytest.raises(UserError, match=rf"^mixed.jsonl:{n}: category: expected one of remove, add, replace, got 'swap'$"):
        build(_cfg(folder, tmp_path, strict=True))
    rc = idd(["benchmark", "build", "--jsonl", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"idd benchmark: error: {tmp_path / 'none.jsonl'}: benchmark JSONL not found"
    rc = idd(["benchmark", "build", "--out", str(tmp_path)])
    assert rc == 2 and "give a JSONL (with --images) or --from-output" in capsys.readouterr().err


def test_cli_build_info_and_rebuild_refusal(bench_input, tmp_path, capsys):
    folder, _ = bench_input
    args = ["benchmark", "build", "--jsonl", str(folder / "benchmark.jsonl"), "--out", str(tmp_path), "--name", "demo"]
    assert idd(args) == 0
    out = capsys.readouterr().out
    assert "align" in out and "eval" in out and "rejected 0 (0 bad lines)" in out
    assert idd(["benchmark", "info", str(tmp_path / "demo" / "v1"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert sum(h["rows"] for h in info["splits"].values()) == 12  # every demo line is usable
    assert sum(sum(h["categories"].values()) for h in info["splits"].values()) == 12
    assert idd(args + ["--seed", "5"]) == 2
    assert "built with another config; pass --overwrite" in capsys.readouterr().err
    assert idd(args + ["--seed", "5", "--overwrite"]) == 0


def test_llm_target_captions_through_a_loopback_server(bench_input, tmp_path, monkeypatch):
    from tests import helpers_llm

    def answer(prompt: str, seed: int = 0) -> str:
        cap = prompt.split("Caption of the source image: ", 1)[1].split("\n", 1)[0]
        ins = prompt.split("Editing instruction: ", 1)[1].split("\n", 1)[0]
        if "giraffe" in ins:  # repeats the source caption: asked again, then rejected
            return json.dumps({"caption": cap})
        return json.dumps({"caption": f"{cap.rstrip('.')} after: {ins.rstrip('.').lower()}"})

    monkeypatch.setattr(helpers_llm, "answer_for", answer)
    folder, _ = bench_input
    with helpers_llm.FakeOpenAIServer() as srv:
        cfg = _cfg(folder, tmp_path, name="llmbench")
        cfg.target_caption.llm.base_url = srv.base_url
        cfg.target_caption.llm.cache_path = str(tmp_path / "llm.sqlite")
        m = build(cfg)
        asked = len(srv.chat_requests())
    root = tmp_path / "llmbench" / "v1"
    metas = {s["txt"].decode(): json.loads(s["json"])["meta"] for s in _decode(glob.glob(str(root / "train/*.tar")))}
    assert metas["Remove the red dog."]["target_caption"] == "A red dog and a cat on the grass after: remove the red dog"
    assert metas["Remove the red dog."]["target_caption_provenance"]["path"] == "llm"
    assert metas["Make it snow"]["target_caption_provenance"] == {"path": "given"}  # never asked
    assert m["splits"]["rejected"]["drop_reasons"][LLM_REJECTED] == 1  # the giraffe line, asked twice
    # the uncaptioned-object line is asked too (the LLM needs no parsed object); lines with no source caption are not
    assert asked == len(GOOD) - 1 + 4 + 2 + 1
    assert m["benchmark"]["target_caption"] == "llm"


def test_from_output_subset(built, tmp_path):
    root, manifest = built
    cfg = load_config(None, [], from_output=str(root), out=str(tmp_path), name="sub", limit=3, seed=7)
    m = build(cfg)
    assert m["splits"]["train"]["rows"] == 3 and m["config"]["from_output"] == "{source.output}"
    src = {r["key"]: r for h in ("align", "eval") for r in read_samples(root, h)}
    got = [r for h in ("align", "eval") for r in read_samples(tmp_path / "sub" / "v1", h)]
    assert len(got) == 3
    for r in got:
        orig = src[r["record_id"]]  # a row of an output is named by its key
        assert (r["instruction"], r["category"], r["image"]) == (orig["instruction"], orig["category"], orig["image"])
        assert r["source_caption"] == orig["source_caption"] and r["target_caption"] == orig["target_caption"]
    # the subset is chosen by key hash: the same seed, the same subset
    again = build(load_config(None, [], from_output=str(root), out=str(tmp_path / "again"), name="sub", limit=3, seed=7))
    assert [s["tar_sha256"] for s in again["splits"]["train"]["shards"]] == \
        [s["tar_sha256"] for s in m["splits"]["train"]["shards"]]


class _FakeCaptioner:
    """Stands in for :class:`Blip2Captioner` (the real one is covered by tests/test_caption_blip2.py): the
    caption names the image's size and mean level, so the test sees which pixels were captioned."""

    def __init__(self, model, **kw):
        self.model_id = f"fake:{model}"

    def caption(self, images):
        return [f"an image of {img.shape[1]}x{img.shape[0]} at {int(img.mean())}" for img in images]


def test_blip2_captioner_captions_the_written_source(bench_input, tmp_path, monkeypatch):
    from instructdiffusion_data.imageio import decode
    from instructdiffusion_data.models import blip2

    monkeypatch.setattr(blip2, "Blip2Captioner", _FakeCaptioner)
    folder, _ = bench_input
    cfg = load_config(None, ["captioner.backend=blip2", "captioner.model=tiny"], jsonl=str(folder / "benchmark.jsonl"),
                      out=str(tmp_path), name="b2")
    m = build(cfg)
    rows = [r for h in ("align", "eval") for r in read_samples(tmp_path / "b2" / "v1", h)]
    assert len(rows) + m["splits"]["rejected"]["rows"] == 12
    for r in rows:
        img = decode(r["image"])
        assert r["source_caption"] == f"an image of {img.shape[1]}x{img.shape[0]} at {int(img.mean())}"
    # the demo's given captions are not used, so the offline rule finds no object to remove in them
    assert set(m["splits"]["rejected"]["drop_reasons"]) <= {OBJECT_NOT_IN_CAPTION}


def test_from_an_editing_output_uses_its_captions(tmp_path):
    """Rows of an IEIW-style output: the captions their caption stage wrote (``meta.captions``), else the
    annotation caption from the phrase and the offline rule; other tasks and dropped rows are not read."""
    import numpy as np

    from instructdiffusion_data.imageio import encode_png
    from instructdiffusion_data.schema import drop, new_row
    from instructdiffusion_data.writer import ShardWriter

    img = encode_png(np.full((16, 16, 3), 90, np.uint8))
    rows = [
        new_row(key="a", task="edit_add", dataset="phrasecut", src=img, tgt=img, instruction="Add a kite.",
                meta={"record_id": "1", "phrase": "kite",
                      "captions": {"src": "a photo without the kite", "tgt": "a photo with the kite"}}),
        new_row(key="b", task="edit_remove", dataset="phrasecut", src=img, tgt=img, instruction="Remove the dog.",
                meta={"record_id": "2", "phrase": "dog"}),
        new_row(key="c", task="keypoint", dataset="coco", src=img, tgt=img, instruction="Circle the nose.",
                meta={"record_id": "3"}),
        drop(new_row(key="d", task="edit_remove", dataset="phrasecut", src=img, tgt=img, instruction="Remove x.",
                     meta={"record_id": "4", "phrase": "x"}), "dropped for the test"),
    ]
    root = tmp_path / "src_out" / "v1"
    w = ShardWriter(root, output="src_out", version="v1")
    w.write_shard(0, rows)
    w.write_manifest(config={})
    m = build(load_config(None, [], from_output=str(root), out=str(tmp_path), name="fromout"))
    got = {r["record_id"]: r for h in ("align", "eval") for r in read_samples(tmp_path / "fromout" / "v1", h)}
    assert set(got) == {"a", "b"} and m["splits"]["rejected"]["rows"] == 0
    assert (got["a"]["category"], got["a"]["source_caption"], got["a"]["target_caption"]) == \
        ("add", "a photo without the kite", "a photo with the kite")
    assert (got["b"]["category"], got["b"]["source_caption"], got["b"]["target_caption"]) == \
        ("remove", "a photo with the dog", "a photo")
