"""The llm_instruction stage: template path, LLM path over real HTTP, validation drops, budget stop."""

import json

import pyarrow.parquet as pq
import pytest

from instructdiffusion_data import runner
from instructdiffusion_data.config import PipelineConfig, build
from instructdiffusion_data.shard_tasks import run_stages_local
from instructdiffusion_data.schema import make_key, new_row
from instructdiffusion_data.stages.llm_instruction import LLMInstruction

from .helpers_llm import FakeOpenAIServer


def _rows(objects, task="edit_remove", targets=None):
    rows = []
    for i, obj in enumerate(objects):
        meta = {"record_id": str(i), "phrase": obj}
        if task == "edit_replace":
            meta = {"record_id": str(i), "src_label": obj, "ref_label": targets[i]}
        rows.append(new_row(key=make_key("t", i, task), task=task, dataset="t", meta=meta))
    return rows


def _llm(srv, tmp_path, **kw):
    return {"base_url": srv.base_url, "model": "test-model", "cache_path": str(tmp_path / "llm.sqlite"),
            "backoff_base_s": 0.01, **kw}


def test_template_path_is_seeded_and_names_the_object():
    objs = [f"thing{i}" for i in range(24)]
    st = LLMInstruction({}, seed=3)
    out = run_stages_local([st], _rows(objs, "edit_remove") + _rows(["old man"], "edit_add")
                           + _rows(["running dog"], "edit_replace", ["cute cat"]))
    again = run_stages_local([LLMInstruction({}, seed=3)], _rows(objs, "edit_remove") + _rows(["old man"], "edit_add")
                             + _rows(["running dog"], "edit_replace", ["cute cat"]))
    assert [r["instruction"] for r in out] == [r["instruction"] for r in again]
    by_key = {r["key"]: r for r in out}
    for i, obj in enumerate(objs):
        r = by_key[make_key("t", i, "edit_remove")]
        assert r["keep"] and obj in r["instruction"]
        prov = r["meta"]["instruction_provenance"]
        assert prov["path"] == "template" and prov["templates"] == "edit_remove.txt"
    assert len({r["instruction"].replace(obj, "X") for r, obj in zip(out, objs)}) >= 5  # varied templates
    add = by_key[make_key("t", 0, "edit_add")]
    assert "an old man" in add["instruction"]
    rep = by_key[make_key("t", 0, "edit_replace")]
    assert "running dog" in rep["instruction"] and "a cute cat" in rep["instruction"]
    other = run_stages_local([LLMInstruction({}, seed=4)], _rows(objs))
    assert [r["instruction"] for r in other] != [r["instruction"] for r in out[:24]]  # the seed matters


def test_template_path_keeps_an_upstream_instruction_and_skips_other_tasks():
    rows = _rows(["dog"])
    rows[0]["instruction"] = "Erase the dog."
    rows[0]["meta"]["template_id"] = 3
    kp = new_row(key="kp", task="keypoint", dataset="coco", instruction="circle the nose", meta={})
    out = {r["key"]: r for r in run_stages_local([LLMInstruction({})], rows + [kp])}
    r = out[rows[0]["key"]]
    assert r["instruction"] == "Erase the dog."
    assert r["meta"]["instruction_provenance"] == {"path": "template", "by": "upstream", "template_index": 3}
    assert out["kp"]["instruction"] == "circle the nose" and "instruction_provenance" not in out["kp"]["meta"]


def test_row_without_object_is_dropped_with_reason():
    row = new_row(key="x", task="edit_replace", dataset="t", meta={"src_label": "dog"})
    out = run_stages_local([LLMInstruction({})], [row])[0]
    assert not out["keep"] and "no replacement target" in out["drop_reason"]


def _read_split(root, split):
    rows = []
    for p in sorted((root / split).glob("*.parquet")):
        rows.extend(pq.read_table(p).to_pylist())
    return rows


@pytest.mark.slow
def test_pipeline_llm_path_validation_to_rejected_and_cache(tmp_path):
    objects = ["dog", "refusebait cat", "badjson lamp", "holder vase", "offtopic tree", "red car", "flaky bench"]
    with FakeOpenAIServer() as srv:
        srv.state.fail_next = [429, 500]  # the first requests are retried
        raw = {"name": "llm_demo", "version": "v1", "seed": 0,
               "source": {"type": "tests.helpers_llm:EditRowsSource", "objects": objects},
               "stages": [{"type": "llm_instruction", "llm": _llm(srv, tmp_path, concurrency=2)}],
               "writer": {"out": str(tmp_path / "shards"), "records_per_shard": 4}}
        summary = runner.run(build(PipelineConfig, raw), use_ray=False)
        # one ask per row, 2 HTTP retries, and one more ask for each of the 5 answers failing validation
        assert len(srv.chat_requests()) == len(objects) + 2 + 5
        train = {r["key"]: r for r in _read_split(summary.root, "train")}
        rejected = {json.loads(r["meta"])["phrase"]: r for r in _read_split(summary.root, "rejected")}
        assert sorted(json.loads(r["meta"])["phrase"] for r in train.values()) == ["dog", "flaky bench", "red car"]
        for r in train.values():
            meta = json.loads(r["meta"])
            assert r["instruction"] == f"remove the {meta['phrase']} from the picture"
            prov = meta["instruction_provenance"]
            assert prov["asked"] == (2 if meta["phrase"] == "flaky bench" else 1)
            assert prov["path"] == "llm" and prov["model"] == "test-model" and prov["cached"] is False
            assert prov["prompt_tokens"] > 50  # the server counts words of system + user prompt
            first_ask = 7 if meta["phrase"] == "flaky bench" else 0  # the off-topic answer's words count too
            assert prov["completion_tokens"] == len(json.dumps({"instruction": r["instruction"]}).split()) + first_ask
        assert "instruction is a refusal" in rejected["refusebait cat"]["drop_reason"]
        assert "llm answer not JSON" in rejected["badjson lamp"]["drop_reason"]
        assert "leftover placeholder" in rejected["holder vase"]["drop_reason"]
        assert "does not mention the edited object" in rejected["offtopic tree"]["drop_reason"]
        assert all(r["drop_reason"].startswith("llm_instruction: ") for r in rejected.values())
        assert all(json.loads(r["meta"])["instruction_provenance"]["asked"] == 2 for r in rejected.values())
        manifest = json.loads((summary.root / "manifest.json").read_text())
        assert manifest["splits"]["rejected"]["rows"] == 4 and manifest["splits"]["train"]["rows"] == 3

        # a rerun (new output, same cache file) pays nothing: zero requests, same answers
        before = len(srv.chat_requests())
        raw["writer"]["out"] = str(tmp_path / "shards2")
        summary2 = runner.run(build(PipelineConfig, raw), use_ray=False)
        assert len(srv.chat_requests()) == before
        train2 = {r["key"]: r for r in _read_split(summary2.root, "train")}
        assert {k: r["instruction"] for k, r in train2.items()} == {k: r["instruction"] for k, r in train.items()}
        assert all(json.loads(r["meta"])["instruction_provenance"]["cached"] for r in train2.values())


def test_budget_stop_drops_or_falls_back_to_templates(tmp_path):
    with FakeOpenAIServer() as srv:
        objs = ["dog", "cat", "bird", "horse", "cow"]
        st = LLMInstruction({"llm": _llm(srv, tmp_path, max_requests=2, concurrency=1), "batch_size": 8})
        out = run_stages_local([st], _rows(objs))
        assert len(srv.chat_requests()) == 2
        kept = [r for r in out if r["keep"]]
        dropped = [r for r in out if not r["keep"]]
        assert len(kept) == 2 and all(r["meta"]["instruction_provenance"]["path"] == "llm" for r in kept)
        assert len(dropped) == 3 and {r["drop_reason"] for r in dropped} == {"llm budget exhausted"}

        st = LLMInstruction({"llm": _llm(srv, tmp_path, max_requests=2, concurrency=1), "on_budget_exhausted": "template"})
        out = run_stages_local([st], _rows(objs + ["sheep"]))
        assert len(srv.chat_requests()) == 2  # first two cached, the rest refused by the shared ledger
        assert all(r["keep"] for r in out)
        paths = [r["meta"]["instruction_provenance"] for r in out]
        assert sum(p["path"] == "llm" and p["cached"] for p in paths) == 2
        fallback = [p for p in paths if p["path"] == "template"]
        assert len(fallback) == 4 and all(p["fallback"] == "llm budget exhausted" for p in fallback)


def test_replace_rows_ask_with_both_objects(tmp_path):
    with FakeOpenAIServer() as srv:
        rows = _rows(["running dog"], "edit_replace", ["cute cat with black and white stripes"])
        rows[0]["meta"]["captions"] = {"src": "a dog running on a lawn", "tgt": "a cat sitting on a lawn"}
        out = run_stages_local([LLMInstruction({"llm": _llm(srv, tmp_path)})], rows)[0]
        assert out["instruction"] == "please change the running dog to cute cat with black and white stripes"
        prompt = srv.chat_requests()[0]["body"]["messages"][1]["content"]
        assert "Caption of the source image: a dog running on a lawn" in prompt
        assert "It becomes: cute cat with black and white stripes" in prompt


def test_failed_endpoint_drops_with_reason_or_uses_template(tmp_path):
    with FakeOpenAIServer() as srv:
        srv.state.fail_next = [503] * 20
        cfg = {"llm": _llm(srv, tmp_path, max_retries=1, concurrency=1)}
        out = run_stages_local([LLMInstruction(cfg)], _rows(["dog"]))[0]
        assert not out["keep"] and out["drop_class"] == "llm_instruction: llm request failed"
        assert out["drop_reason"] == "llm_instruction: llm request failed (attempts=2, error=HTTP 503)"
        out = run_stages_local([LLMInstruction({**cfg, "on_error": "template"})], _rows(["dog"]))[0]
        assert out["keep"] and "dog" in out["instruction"]
        assert out["meta"]["instruction_provenance"]["fallback"].startswith("llm request failed")


@pytest.mark.slow
def test_ray_workers_share_the_cache_file(tmp_path, ray_local):
    """On Ray (an actor pool of 2 and plain tasks) the workers ask the loopback server, write one
    cache file, and the Ray output equals the local one."""
    objects = ["dog", "cat", "red car", "offtopic tree", "blue bird", "lamp"]
    with FakeOpenAIServer() as srv:
        def raw(out, **stage):
            return {"name": "llm_ray", "version": "v1", "seed": 0,
                    "source": {"type": "tests.helpers_llm:EditRowsSource", "objects": objects},
                    "stages": [{"type": "llm_instruction", "batch_size": 2, "llm": _llm(srv, tmp_path), **stage}],
                    "writer": {"out": str(tmp_path / out), "records_per_shard": 3}}

        asked = len(objects) + 1  # the off-topic answer is asked twice
        s1 = runner.run(build(PipelineConfig, raw("ray", concurrency=2)), use_ray=True)
        assert len(srv.chat_requests()) == asked
        s2 = runner.run(build(PipelineConfig, raw("local", concurrency=2)), use_ray=False)
        assert len(srv.chat_requests()) == asked  # all answers came from the cache the workers wrote
        for split in ("train", "rejected"):
            a = [(r["key"], r["instruction"], r["drop_reason"]) for r in _read_split(s1.root, split)]
            b = [(r["key"], r["instruction"], r["drop_reason"]) for r in _read_split(s2.root, split)]
            assert a == b
        assert len(_read_split(s1.root, "train")) == 5
