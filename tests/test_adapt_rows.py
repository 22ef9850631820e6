"""Adaptation rows (paper 3.3, task ``adapt``): rendered keypoint / semantic / referring segmentation
targets captioned "<image caption><suffix>", written in the shard format and read back with the stock
``webdataset`` library; the COCO captions reader on the release format; the fallbacks; ``idd mix``."""

import glob
import json
from pathlib import Path

import pytest
import webdataset as wds

from instructdiffusion_data import config as cfgmod
from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.readers._coco_captions import read_captions
from instructdiffusion_data.runner import run
from instructdiffusion_data.stages.adapt_caption import AdaptCaption

# captions a person wrote for two of the demo images (COCO release format, ids of the demo scenes)
FIXTURE_CAPTIONS = {100: ["A man in a park with a dog.  ", "Two friends outside."], 107: ["A busy street scene"]}
SUFFIXES = {
    "keypoint": "{caption}, surrounded with {marks}",
    "semantic_seg": "{caption}, with a few different color patches here and there",
    "referring_seg": "{caption}, with {object} covered by a {color} semi-transparent mask",
}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapt_fixtures")
    anns, k = [], 1
    for iid, caps in FIXTURE_CAPTIONS.items():
        for c in caps:
            anns.append({"image_id": iid, "id": k, "caption": c})
            k += 1
    captions = d / "captions_fixture2017.json"
    captions.write_text(json.dumps({"info": {}, "licenses": [], "images": [{"id": i} for i in FIXTURE_CAPTIONS],
                                    "annotations": anns}))
    sdir = d / "suffixes"
    sdir.mkdir()
    for task, line in SUFFIXES.items():
        (sdir / f"{task}.txt").write_text(f"# one template, for exact expectations\n{line}\n")
    return {"captions": str(captions), "suffixes": str(sdir)}


def _pipeline(name: str, render: dict, adapt: dict, source: dict) -> cfgmod.PipelineConfig:
    raw = {"name": name, "version": "v1", "seed": 0, "source": source,
           "stages": [render, {"type": "adapt_caption", **adapt}], "writer": {"records_per_shard": 64}}
    return cfgmod.build(cfgmod.PipelineConfig, raw, where=name)


def _samples(out: Path, name: str, split: str = "train") -> list[dict]:
    tars = sorted(glob.glob(str(out / name / "v1" / split / "*.tar")))
    return list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))


@pytest.fixture(scope="module")
def outputs(demo_root, fixtures, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapt_out")
    coco = demo_root / "coco"
    adapt = {"coco_captions": [fixtures["captions"]], "caption_pick": "first", "suffixes_dir": fixtures["suffixes"]}
    kp = _pipeline("adapt_kp", {"type": "render_keypoints", "variants_per_record": 1},
                   adapt, {"type": "coco_keypoints", "annotations": str(coco / "annotations/person_keypoints_train2017.json"),
                           "images": str(coco / "train2017")})
    ss = _pipeline("adapt_ss", {"type": "render_semseg", "variants_per_record": 1, "absent_ratio": 0.5},
                   adapt, {"type": "coco_stuff", "images": str(coco / "train2017"),
                           "annotations": [str(demo_root / "cocostuff/annotations/stuff_train2017.json"),
                                           str(coco / "annotations/instances_train2017.json")]})
    rs = _pipeline("adapt_rs", {"type": "render_refseg", "variants_per_record": 1},
                   {**adapt, "fallback": "none"},
                   {"type": "refcoco", "dataset": "refcoco", "refs": str(demo_root / "refcoco/refcoco/refs(unc).p"),
                    "instances": str(demo_root / "refcoco/refcoco/instances.json"), "images": str(coco / "train2014"),
                    "splits": ["train"]})
    manifests = {}
    for cfg in (kp, ss, rs):
        manifests[cfg.name] = run(cfg, out=str(out), use_ray=False).manifest
    return out, manifests


def _caption(iid: int) -> str:
    return " ".join(FIXTURE_CAPTIONS[iid][0].split()).rstrip(" .")


def test_keypoint_rows_members_and_captions(outputs):
    out, manifests = outputs
    samples = _samples(out, "adapt_kp")
    assert len(samples) == manifests["adapt_kp"]["splits"]["train"]["rows"] > 0
    seen_coco = seen_fallback = 0
    for s in samples:
        assert sorted(k for k in s if not k.startswith("__")) == ["json", "tgt.jpg", "txt"]  # no src, no mask
        doc = json.loads(s["json"])
        assert doc["task"] == "adapt" and doc["meta"]["adapt"]["from_task"] == "keypoint"
        colours = [d["color"] for d in doc["meta"]["drawn"]]
        marks = f"a {colours[0]} circle" if len(colours) == 1 else \
            ", ".join(colours[:-1]) + f" and {colours[-1]} circles"
        marks = marks.replace("a orange", "an orange")
        iid = doc["meta"]["image_id"]
        if iid in FIXTURE_CAPTIONS:
            base, src = _caption(iid), "coco:captions_fixture2017.json"
            seen_coco += 1
        else:  # weight-free fallback from the annotations
            base = "a photo of a person" if doc["meta"]["person"] == "the person" else "a photo of a group of people"
            src = "annotations"
            seen_fallback += 1
        expected = f"{base}, surrounded with {marks}"
        assert s["txt"].decode() == expected[:1].upper() + expected[1:]
        assert doc["meta"]["adapt"]["caption_source"] == src
        assert doc["meta"]["adapt"]["caption"] == base
    assert seen_coco and seen_fallback
    # the caption of image 100 is the fixture's first one, whitespace collapsed and final full stop gone
    assert any(s["txt"].decode().startswith("A man in a park with a dog, surrounded with ") for s in samples)


def test_semseg_rows_exact_text_and_unmarked_targets_rejected(outputs):
    out, manifests = outputs
    m = manifests["adapt_ss"]
    samples = _samples(out, "adapt_ss")
    texts = {json.loads(s["json"])["meta"]["image_id"]: s["txt"].decode() for s in samples}
    for iid in FIXTURE_CAPTIONS:
        if iid in texts:
            assert texts[iid] == f"{_caption(iid)}, with a few different color patches here and there"
    assert 100 in texts or 107 in texts
    # absent_ratio 0.5: the absent draws have no mask, so no mark: rejected, as adapt rows
    rej = _samples(out, "adapt_ss", "rejected")
    assert m["splits"]["rejected"]["drop_reasons"].get("adapt_caption: target has no mark", 0) == len(rej) > 0
    for s in rej:
        doc = json.loads(s["json"])
        assert doc["task"] == "adapt" and doc["meta"]["absent"] is True and "src.jpg" not in s
    assert m["splits"]["train"]["tasks"] == {"adapt": len(samples)}
    assert m["splits"]["train"]["rows_without_image"] == 0  # an adapt row's image is its target


def test_refseg_without_caption_is_dropped_with_fallback_none(outputs):
    out, manifests = outputs
    m = manifests["adapt_rs"]
    samples = _samples(out, "adapt_rs")
    assert samples, "the two captioned images give rows"
    for s in samples:
        doc = json.loads(s["json"])
        iid = doc["meta"]["image_id"]
        assert iid in FIXTURE_CAPTIONS
        obj = doc["meta"]["sentence"]
        obj = obj if obj.split()[0] in ("the", "all", "both", "every") else f"the {obj}"
        assert s["txt"].decode() == f"{_caption(iid)}, with {obj} covered by a {doc['meta']['color']} semi-transparent mask"
    rejected = m["splits"]["rejected"]
    assert rejected["drop_reasons"]["adapt_caption: no caption"] == rejected["rows"] > 0
    # keys differ from the task rows' keys (another variant text), one per rendered row
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == len(keys) and all("_adapt-v0_" in k for k in keys)


def test_demo_captions_file_and_random_pick(demo_root, tmp_path):
    """The demo generator's captions file is in the release format; ``caption_pick: random`` draws one of
    the image's captions, the same one on every run."""
    path = demo_root / "coco/annotations/captions_train2017.json"
    doc = json.loads(path.read_text())
    assert {"info", "licenses", "images", "annotations"} <= set(doc)
    assert all(set(a) == {"image_id", "id", "caption"} for a in doc["annotations"])
    index = read_captions([str(path)])
    assert len(index) == len(doc["images"]) and index.skipped == 0
    stage = AdaptCaption({"coco_captions": [str(path)]}, seed=0)
    stage.setup()
    row = {"key": "k1", "meta": {"image_set": "coco", "image_id": doc["images"][0]["id"]}}
    first = stage.coco_caption(row)
    assert first[0] in index.get(doc["images"][0]["id"]) and first == stage.coco_caption(dict(row))
    assert stage.coco_caption({"key": "k1", "meta": {"image_set": "crowdpose", "image_id": 100}}) is None


def test_captions_reader_bad_entries_and_bad_files(tmp_path, caplog):
    f = tmp_path / "captions_x.json"
    f.write_text(json.dumps({"images": [], "annotations": [
        {"image_id": 1, "caption": "A dog."}, {"image_id": "x", "caption": "no id"}, {"image_id": 2, "caption": ""},
        "not an object", {"image_id": 2.0, "caption": " two  spaces "}, {"image_id": 1, "caption": "Second."}]}))
    index = read_captions([str(f)])
    assert index.get(1) == ("A dog.", "Second.") and index.get("2") == ("two spaces",) and index.skipped == 3
    assert "captions_x.json: annotations[1]" in caplog.text
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"list.json is not a COCO captions file"):
        read_captions([str(tmp_path / "list.json")])
    (tmp_path / "noann.json").write_text('{"images": []}')
    with pytest.raises(ConfigError, match=r"noann.json has no 'annotations' list"):
        read_captions([str(tmp_path / "noann.json")])
    (tmp_path / "broken.json").write_text('{"annotations": [')
    with pytest.raises(ConfigError, match=r"broken.json is not valid JSON"):
        read_captions([str(tmp_path / "broken.json")])


def test_bad_suffix_templates_name_file_and_line(tmp_path, fixtures):
    d = tmp_path / "sfx"
    d.mkdir()
    for task, line in SUFFIXES.items():
        (d / f"{task}.txt").write_text(line + "\n")
    (d / "semantic_seg.txt").write_text("# c\n{caption}, fine\n{caption}, with {marks}\n")
    with pytest.raises(ConfigError, match=r"semantic_seg.txt:3: unknown placeholder \{marks\}"):
        AdaptCaption({"suffixes_dir": str(d)})
    (d / "semantic_seg.txt").write_text("with patches\n")
    with pytest.raises(ConfigError, match=r"semantic_seg.txt:1: a suffix template must contain \{caption\}"):
        AdaptCaption({"suffixes_dir": str(d)})
    with pytest.raises(ConfigError, match=r"coco_captions\[0\]: file not found"):
        AdaptCaption({"coco_captions": [str(tmp_path / "missing.json")], "suffixes_dir": fixtures["suffixes"]})


def test_mix_accepts_adapt_outputs(outputs, tmp_path):
    from instructdiffusion_data.commands.mix import MixEntry, MixtureConfig, build_mixture

    out, manifests = outputs
    cfg = MixtureConfig(name="adapt", root=str(out), datasets=[
        MixEntry(name="adapt_kp", output="adapt_kp/v1"), MixEntry(name="adapt_ss", output="adapt_ss/v1"),
        MixEntry(name="adapt_rs", output="adapt_rs/v1")])
    mix = build_mixture(cfg, tmp_path / "mix.json")
    total = sum(manifests[n]["splits"]["train"]["rows"] for n in ("adapt_kp", "adapt_ss", "adapt_rs"))
    assert mix["tasks"] == {"adapt": float(total)}
    assert [d["name"] for d in mix["datasets"]] == ["adapt_kp", "adapt_ss", "adapt_rs"]


def test_shipped_adapt_configs_load():
    root = Path(__file__).resolve().parent.parent / "configs" / "pipelines"
    for name in ("adapt_keypoints_coco", "adapt_semseg_cocostuff", "adapt_refseg_refcoco"):
        cfg = cfgmod.load_pipeline_config(root / f"{name}.yaml")
        assert cfg.stages[-1]["type"] == "adapt_caption" and cfg.name == name
        stage_cfg = {k: v for k, v in cfg.stages[-1].items() if k not in ("type", "coco_captions")}
        AdaptCaption(stage_cfg)  # the shipped suffix templates pass the checks


class _FakeCaptioner:
    """Stands in for :class:`Blip2Captioner` (the real one is covered by tests/test_caption_blip2.py): its
    caption names the mean grey level of the pixels it was given, "" for a black image."""

    def __init__(self, model, **kw):
        self.model_id = f"fake:{model}"

    def caption(self, images):
        return [f"a picture of grey level {int(img.mean())}" if img.mean() > 1 else "" for img in images]


def test_blip2_fallback_captions_the_source_image(monkeypatch, fixtures):
    import numpy as np

    from instructdiffusion_data.imageio import encode_png
    from instructdiffusion_data.models import blip2
    from instructdiffusion_data.schema import new_row, rows_to_table, table_to_rows

    monkeypatch.setattr(blip2, "Blip2Captioner", _FakeCaptioner)
    stage = AdaptCaption({"fallback": "blip2", "suffixes_dir": fixtures["suffixes"], "blip2": {"model": "tiny"}})
    rows = []
    for i, grey in enumerate((120, 0)):
        src = encode_png(np.full((8, 8, 3), grey, np.uint8))
        rows.append(new_row(key=f"k{i}", task="semantic_seg", dataset="cocostuff", src=src, tgt=encode_png(
            np.full((8, 8, 3), 200, np.uint8)), mask=src, instruction="Place a red mask on the grass.",
            meta={"record_id": str(i), "image_id": 5 + i, "image_set": "coco", "variant": 0, "color": "red",
                  "category": "grass", "mask_area": 10}))
    out = table_to_rows(stage(rows_to_table(rows)))
    ok, empty = sorted(out, key=lambda r: r["meta"]["record_id"])
    assert ok["instruction"] == "A picture of grey level 120, with a few different color patches here and there"
    assert ok["meta"]["adapt"]["caption_source"] == "blip2:fake:tiny" and ok["src"] is None and ok["mask"] is None
    assert empty["keep"] is False and empty["drop_class"] == "adapt_caption: no caption" and empty["task"] == "adapt"


def test_rerun_over_a_changed_captions_file_is_refused(demo_root, fixtures, tmp_path):
    """The captions file is a stage input: the run file records it, and a rerun after it changed stops in
    one line naming it instead of reusing shards captioned from the old file; --overwrite rebuilds."""
    import shutil

    from instructdiffusion_data.errors import ConfigError

    caps = tmp_path / "captions_fixture2017.json"
    shutil.copy(fixtures["captions"], caps)
    coco = demo_root / "coco"
    cfg = _pipeline("adapt_side", {"type": "render_keypoints", "variants_per_record": 1},
                    {"coco_captions": [str(caps)], "caption_pick": "first", "suffixes_dir": fixtures["suffixes"]},
                    {"type": "coco_keypoints", "annotations": str(coco / "annotations/person_keypoints_train2017.json"),
                     "images": str(coco / "train2017"), "limit": 8})
    out = tmp_path / "out"
    first = run(cfg, out=str(out), use_ray=False).manifest
    run_file = json.loads((out / "adapt_side" / "v1" / ".idd-run.json").read_text())
    assert run_file["side_inputs"][str(caps)] == [caps.stat().st_size, caps.stat().st_mtime_ns]
    assert run(cfg, out=str(out), use_ray=False).manifest["splits"] == first["splits"]  # unchanged: reused
    doc = json.loads(caps.read_text())
    doc["annotations"][0]["caption"] = "A different caption."
    caps.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"stage input .*captions_fixture2017\.json changed"):
        run(cfg, out=str(out), use_ray=False)
    assert run(cfg, out=str(out), use_ray=False, overwrite=True).manifest["splits"]["train"]["rows"] >= 1
