"""The caption stage's weight-free backend (captions from annotations) and its hand-off to llm_instruction."""

import json

import pyarrow.parquet as pq
import pytest

from instructdiffusion_data.shard_tasks import run_stages_local
from instructdiffusion_data.schema import new_row
from instructdiffusion_data.stages.caption import CaptionStage
from instructdiffusion_data.stages.llm_instruction import LLMInstruction


def _row(task, **meta):
    return new_row(key=f"{task}-{len(meta)}", task=task, dataset="t", meta={"record_id": "1", **meta})


def test_phrasecut_removal_and_addition_captions():
    st = CaptionStage({"targets": ["src", "src_region", "tgt", "tgt_region"]})
    rem, add = run_stages_local([st], [_row("edit_remove", phrase="the blue bird on the tree"),
                                       _row("edit_add", phrase="blue bird on the tree", x=1)])
    assert rem["meta"]["captions"] == {"src": "a photo with the blue bird on the tree", "src_region": "blue bird on the tree",
                                       "tgt": "a photo without the blue bird on the tree"}
    assert rem["meta"]["caption_provenance"] == {"backend": "annotations", "sources": {
        "src": "phrase+template", "src_region": "phrase", "tgt": "phrase+template", "tgt_region": "unavailable"}}
    # addition rows are the swapped pair: the source lacks the object, the target has it
    assert add["meta"]["captions"] == {"src": "a photo without the blue bird on the tree",
                                       "tgt": "a photo with the blue bird on the tree", "tgt_region": "blue bird on the tree"}
    assert rem["keep"] and add["keep"]


def test_openimages_and_replacement_labels():
    st = CaptionStage({"targets": ["src_region", "tgt_region", "reference", "tgt"]})
    oi, rep = run_stages_local([st], [
        _row("edit_remove", region={"label": "Dog", "bbox": [1, 2, 3, 4]}),
        _row("edit_replace", src_label="running dog", reference={"label": "cat", "file": "/x.jpg"}),
    ])
    assert oi["meta"]["captions"]["src_region"] == "dog"  # OpenImages "Dog" as running text
    assert oi["meta"]["caption_provenance"]["sources"]["src_region"] == "region.label"
    assert rep["meta"]["captions"] == {"src_region": "running dog", "tgt_region": "cat", "reference": "cat",
                                       "tgt": "a photo with the cat"}
    assert rep["meta"]["caption_provenance"]["sources"]["reference"] == "reference.label"


def test_captions_feed_the_instruction_stage():
    # an SA-1B-like replacement row: no labels at all, captions (from a captioner) name the objects
    row = _row("edit_replace")
    row["meta"]["captions"] = {"src_region": "a running dog", "reference": "a cute cat with black and white stripes"}
    out = run_stages_local([LLMInstruction({}, seed=0)], [row])[0]
    assert out["keep"], out["drop_reason"]
    assert "running dog" in out["instruction"] and "a cute cat with black and white stripes" in out["instruction"]
    assert "a a " not in out["instruction"] and "the a " not in out["instruction"]
    # PhraseCut row through both stages (annotations + template path)
    rows = run_stages_local([CaptionStage({}), LLMInstruction({}, seed=0)], [_row("edit_add", phrase="the old man")])
    assert "an old man" in rows[0]["instruction"]
    assert rows[0]["meta"]["instruction_provenance"]["path"] == "template"
    # an OpenImages region: the class name as running text
    rows = run_stages_local([LLMInstruction({}, seed=0)], [_row("edit_remove", region={"label": "Human face"})])
    assert "the human face" in rows[0]["instruction"]


@pytest.mark.slow
def test_removal_pipeline_over_demo_data_writes_provenance(tmp_path):
    from instructdiffusion_data import runner
    from instructdiffusion_data.config import load_pipeline_config
    from instructdiffusion_data.demo import phrasecut

    phrasecut.generate(tmp_path / "demo", n=6, seed=0)
    cfg = load_pipeline_config("configs/pipelines/ieiw_removal.yaml",
                               [f"source.root={tmp_path / 'demo' / 'phrasecut'}", f"writer.out={tmp_path / 'shards'}"])
    assert [s["type"] for s in cfg.stages][-3:] == ["caption", "llm_instruction", "quality_filter"]
    summary = runner.run(cfg, use_ray=False)
    rows = [r for p in sorted((summary.root / "train").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert rows
    for r in rows:
        meta = json.loads(r["meta"])
        assert meta["caption_provenance"]["backend"] == "annotations"
        phrase = meta["phrase"].split(" ", 1)[-1] if meta["phrase"].startswith("the ") else meta["phrase"]
        with_obj = f"a photo with the {phrase}"
        if r["task"] == "edit_remove":
            assert meta["captions"] == {"src": with_obj, "src_region": phrase, "tgt": f"a photo without the {phrase}"}
        else:
            assert meta["captions"] == {"src": f"a photo without the {phrase}", "tgt": with_obj}
        assert phrase in r["instruction"]
        assert meta["instruction_provenance"] == {"path": "template", "by": "upstream",
                                                  "template_index": meta["template_id"]}


def test_blip2_captions_take_precedence_over_class_names():
    row = _row("edit_replace", region={"label": "Dog"}, ref_label="Cat")
    row["meta"]["captions"] = {"src_region": "a running dog", "reference": "a cute cat with black and white stripes"}
    row["meta"]["caption_provenance"] = {"backend": "blip2"}
    out = run_stages_local([LLMInstruction({}, seed=0)], [row])[0]
    assert "running dog" in out["instruction"] and "a cute cat with black and white stripes" in out["instruction"]
    row["meta"]["caption_provenance"] = {"backend": "annotations"}  # the stated reference label first otherwise
    out = run_stages_local([LLMInstruction({}, seed=0)], [row])[0]
    assert "a cat" in out["instruction"] and "stripes" not in out["instruction"]
