"""``idd eval``: CLIP-Sim against a hand computation, the aesthetic head on a fixed vector, the summary, and
a full run of a tiny InstructPix2Pix model on a small benchmark (per category, deterministic, grids)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from instructdiffusion_data.cli import main as idd
from instructdiffusion_data.errors import ConfigError, UserError
from tests.helpers_eval import (MLP_LAYOUT, TINY_CLIP_NAME, halves, make_aesthetic_head, make_benchmark,
                                make_ip2p_model, make_tiny_clip)

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

pytestmark = pytest.mark.ml


# -- metrics on fixed numbers ---------------------------------------------------------------------

def test_clip_sim_is_100_times_cosine_by_hand():
    from instructdiffusion_data.evaluation.metrics import clip_sim

    img = np.array([[1.0, 0.0, 0.0], [3.0, 4.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    txt = np.array([[1.0, 1.0, 0.0], [3.0, 4.0, 0.0], [0.0, -5.0, 0.0], [1.0, -1.0, 0.0]])
    # cos = (a.b) / (|a||b|): 1/sqrt(2); 25/25; -10/10; 0/(sqrt3 sqrt2)
    want = [100 / math.sqrt(2), 100.0, -100.0, 0.0]
    np.testing.assert_allclose(clip_sim(img, txt), want, atol=1e-9)
    # the norm of either side does not matter; the order of the pair does not either
    np.testing.assert_allclose(clip_sim(img * 7.0, txt * 0.1), want, atol=1e-9)
    np.testing.assert_allclose(clip_sim(txt, img), want, atol=1e-9)
    with pytest.raises(ValueError, match="one shape"):
        clip_sim(img, txt[:, :2])


def test_aesthetic_head_on_a_fixed_vector(tmp_path):
    """Weights chosen so that the five affine maps give 6 * x0 + 2.5 for a normalised input x."""
    from instructdiffusion_data.models.aesthetics import AestheticPredictor

    sd = {k: torch.zeros(*s) for k, s in MLP_LAYOUT.items()}
    sd["layers.0.weight"][0, 0] = 1.0   # h = x0
    sd["layers.2.weight"][0, 0] = 2.0   # h = 2 x0
    sd["layers.4.weight"][0, 0] = 1.0
    sd["layers.4.bias"][0] = 0.5        # h = 2 x0 + 0.5
    sd["layers.6.weight"][0, 0] = 1.0
    sd["layers.7.weight"][0, 0] = 3.0
    sd["layers.7.bias"][0] = 1.0        # 3 (2 x0 + 0.5) + 1 = 6 x0 + 2.5
    torch.save(sd, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    pred = AestheticPredictor(tmp_path / "sac+logos+ava1-l14-linearMSE.pth", "mlp", device="cpu")
    x = np.zeros((2, 768), np.float32)
    x[0, :2] = [3.0, 4.0]  # normalised: x0 = 0.6
    x[1, 0] = -2.0         # normalised: x0 = -1
    np.testing.assert_allclose(pred.predict(x), [6 * 0.6 + 2.5, -6 + 2.5], rtol=1e-6)


def test_summary_per_category_and_overall():
    from instructdiffusion_data.evaluation.metrics import format_table, summarise

    names = ("category", "clip_sim", "aesthetic", "source_clip_sim", "source_aesthetic")
    recs = [dict(zip(names, v)) for v in (("remove", 20.0, 5.0, 18.0, 5.5), ("remove", 30.0, None, 19.0, 5.0),
                                          ("add", 25.0, 6.0, 21.0, 6.5))]
    s = summarise(recs, ["remove", "add", "replace"])
    rm = s["per_category"]["remove"]
    assert rm["samples"] == 2 and rm["clip_sim"]["mean"] == pytest.approx(25.0)
    assert rm["clip_sim"]["std"] == pytest.approx(math.sqrt(50.0))  # sample std of 20, 30
    assert rm["aesthetic"] == {"mean": 5.0, "std": 0.0, "n": 1}  # a missing value is not counted
    assert s["per_category"]["replace"]["clip_sim"] == {"mean": None, "std": None, "n": 0}
    assert s["overall"]["samples"] == 3 and s["overall"]["clip_sim"]["mean"] == pytest.approx(25.0)
    assert s["overall"]["aesthetic"]["mean"] == pytest.approx(5.5)
    table = format_table(s, "title")
    lines = table.splitlines()
    assert lines[0] == "title" and "CLIP-Sim" in lines[1]
    row = next(ln for ln in lines if ln.startswith("remove"))
    assert row.split()[1:4] == ["2", "25.00", "5.00"]
    assert next(ln for ln in lines if ln.startswith("replace")).split()[2] == "-"
    assert next(ln for ln in lines if ln.startswith("overall")).split()[1:3] == ["3", "25.00"]


# -- the scorer through open_clip (tiny model) ----------------------------------------------------

@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    cfg, ckpt = make_tiny_clip(root / "clip")
    head = make_aesthetic_head(root / "sac+logos+ava1-l14-linearMSE.pth")
    model = make_ip2p_model(root / "model")
    bench = make_benchmark(root, n=12)
    return {"root": root, "clip_cfg": cfg, "clip_ckpt": ckpt, "head": head, "model": model, "bench": bench}


def _metric_cfg(a, **kw):
    from instructdiffusion_data.evaluation.metrics import MetricConfig

    return MetricConfig(clip_model=TINY_CLIP_NAME, clip_pretrained=str(a["clip_ckpt"]),
                        clip_model_config=str(a["clip_cfg"]), aesthetic_weights=str(a["head"]), device="cpu", **kw)


def test_scorer_equals_hand_computation_with_open_clip(assets):
    import open_clip
    from PIL import Image

    from instructdiffusion_data.evaluation.metrics import EditScorer
    from instructdiffusion_data.models.aesthetics import AestheticPredictor
    from tests.helpers_quality import scene

    scorer = EditScorer(_metric_cfg(assets, batch_size=2))
    imgs = [scene(i, 40, 56) for i in range(3)]
    caps = ["a red circle", "a picture with a blue square", "a red circle"]
    got = scorer.score(imgs, caps)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=str(assets["clip_ckpt"])).eval()
    tok = open_clip.get_tokenizer(TINY_CLIP_NAME)
    with torch.no_grad():
        x = torch.stack([scorer.clip.preprocess(Image.fromarray(i)) for i in imgs])
        fi = model.encode_image(x).numpy().astype(np.float64)
        ft = model.encode_text(tok(caps)).numpy().astype(np.float64)
    cos = (fi * ft).sum(1) / (np.linalg.norm(fi, axis=1) * np.linalg.norm(ft, axis=1))
    np.testing.assert_allclose(got["clip_sim"], 100 * cos, atol=1e-3)
    ap = AestheticPredictor(assets["head"], "mlp", device="cpu").predict(fi.astype(np.float32))
    np.testing.assert_allclose(got["aesthetic"], ap, rtol=1e-4, atol=1e-5)
    assert got["clip_sim"][0] != pytest.approx(got["clip_sim"][1])  # the caption matters


def test_aesthetic_needs_768d_embeddings(assets, tmp_path):
    import open_clip

    from instructdiffusion_data.evaluation.metrics import EditScorer, MetricConfig

    small = dict(json.loads(assets["clip_cfg"].read_text()), embed_dim=64)
    cfg = tmp_path / "idd-test-eval-clip-64.json"
    cfg.write_text(json.dumps(small))
    open_clip.add_model_config(cfg)
    with pytest.raises(ConfigError, match="aesthetic_weights: the LAION head needs 768-d"):
        EditScorer(MetricConfig(clip_model="idd-test-eval-clip-64", clip_pretrained=None, clip_model_config=str(cfg),
                                aesthetic_weights=str(assets["head"]), device="cpu"))


# -- the whole evaluation -------------------------------------------------------------------------

def test_evaluate_per_category_deterministic_and_checked(assets, tmp_path):
    from PIL import Image

    from instructdiffusion_data.evaluation.editor import Editor, EditorConfig
    from instructdiffusion_data.evaluation.metrics import EditScorer
    from instructdiffusion_data.evaluation.run import EvalConfig, evaluate
    from instructdiffusion_data.imageio import decode

    ecfg = EditorConfig(model=str(assets["model"]), steps=2, resolution=64, batch_size=4, device="cpu",
                        local_files_only=True)
    cfg = EvalConfig(model=str(assets["model"]), benchmark=str(assets["bench"]), out=str(tmp_path / "a"),
                     editor=ecfg, metrics=_metric_cfg(assets), save_images=True, grid_rows=2)
    scorer = EditScorer(_metric_cfg(assets))
    rep = evaluate(cfg, scorer=scorer)
    doc = json.loads((tmp_path / "a" / "metrics.json").read_text())
    want = halves(assets["bench"])["eval"]  # the held-out half only
    assert doc["benchmark"]["split"] == "eval" and doc["benchmark"]["samples"] == sum(want.values())
    assert {r["split"] for r in doc["samples"]} == {"eval"}
    assert list(doc["per_category"]) == ["remove", "add", "replace"] and len(want) == 3
    for cat, b in doc["per_category"].items():
        assert b["samples"] == want[cat]
        for m in ("clip_sim", "aesthetic", "source_clip_sim", "source_aesthetic"):
            assert b[m]["n"] == want[cat] and math.isfinite(b[m]["mean"])
        assert Image.open(tmp_path / "a" / doc["grids"][cat]).size[0] > 0
    assert doc["overall"]["clip_sim"]["mean"] == pytest.approx(np.mean([r["clip_sim"] for r in doc["samples"]]))
    assert doc["guidance"] == {"text": 5.0, "image": 1.25} and doc["editor"]["dtype"] == "fp32"
    # each sample's CLIP-Sim is 100 x cosine of its saved edit and its target caption
    r0 = doc["samples"][0]
    edit = decode((tmp_path / "a" / "edited" / f"{r0['key']}.png").read_bytes())
    assert edit.shape == (64, 64, 3)  # 240x320 source: longer side 64, sides rounded to 64
    v_img = scorer.clip.embed_images([edit])[0]
    v_txt = scorer.clip.embed_texts([r0["target_caption"]])[0]
    assert r0["clip_sim"] == pytest.approx(100 * float(v_img @ v_txt), abs=1e-3)
    # the same seed gives the same numbers whatever the batch size (noise seeded per sample)
    # (first sample of each category, one at a time; batched convolutions round differently: ~1e-4 on 0-100)
    cfg2 = EvalConfig(model=cfg.model, benchmark=cfg.benchmark, out=str(tmp_path / "b"), metrics=cfg.metrics, limit=1,
                      editor=EditorConfig(**{**ecfg.__dict__, "batch_size": 1}))
    editor1 = Editor(cfg2.editor)
    rep2 = evaluate(cfg2, editor=editor1, scorer=scorer)
    first = {r["key"]: r["clip_sim"] for r in rep["samples"]}
    assert len(rep2["samples"]) == 3
    assert [r["clip_sim"] for r in rep2["samples"]] == pytest.approx([first[r["key"]] for r in rep2["samples"]],
                                                                   abs=2e-3)
    # another guidance pair changes the edits
    cfg3 = EvalConfig(**{**cfg2.__dict__, "out": str(tmp_path / "c"), "text_guidance": 9.0, "image_guidance": 1.0})
    rep3 = evaluate(cfg3, editor=editor1, scorer=scorer)
    assert [r["clip_sim"] for r in rep3["samples"]] != pytest.approx([first[r["key"]] for r in rep3["samples"]],
                                                                   abs=0.05)


def test_cli_eval_table_json_and_errors(assets, tmp_path, capsys):
    common = [str(assets["model"]), str(assets["bench"]), "--steps", "1", "--resolution", "64", "--device", "cpu",
              "--local-files-only", "--clip-model", TINY_CLIP_NAME, "--clip-pretrained", str(assets["clip_ckpt"]),
              "--clip-model-config", str(assets["clip_cfg"])]
    assert idd(["eval", *common, "--aesthetic-weights", str(assets["head"]), "--split", "align", "--limit", "1",
                "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    for cat in (*halves(assets["bench"])["align"], "overall"):
        assert any(ln.startswith(cat) for ln in out.splitlines())
    doc = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert doc["benchmark"]["samples"] == len(halves(assets["bench"])["align"])  # --limit 1: one per category
    assert {r["split"] for r in doc["samples"]} == {"align"}
    # no aesthetic weights: one line naming the option
    assert idd(["eval", *common, "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--aesthetic-weights" in err[0]
    # a 4-channel SD model is no InstructPix2Pix model
    assert idd(["eval", str(assets["model"].parent / "tiny-sd"), *common[1:], "--no-aesthetic",
                "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4 input channels" in err[0]
    # not a benchmark
    assert idd(["eval", *common[:1], str(tmp_path), *common[2:], "--no-aesthetic"]) == 2
    assert "not a shard output" in capsys.readouterr().err


def test_benchmark_rows_are_checked(assets, tmp_path):
    from instructdiffusion_data.benchmark.build import FORMAT
    from instructdiffusion_data.evaluation.benchmark import read_benchmark
    from instructdiffusion_data.imageio import encode_jpeg
    from instructdiffusion_data.schema import make_key, new_row
    from instructdiffusion_data.writer import ShardWriter
    from tests.helpers_quality import scene

    meta = {"category": "add", "bench_split": "eval", "source_caption": "a scene", "target_caption": "a scene, a cat"}

    def output(name, rows, section=True):
        out = tmp_path / name / "v1"
        w = ShardWriter(out)
        w.write_shard(0, rows)
        w.write_manifest(config={}, extra={"name": name, "version": "v1",
                                           **({"benchmark": {"format": FORMAT}} if section else {})})
        return out

    row = lambda i, **m: new_row(key=make_key("b", i), task="edit_add", dataset="b", src=encode_jpeg(scene(i, 32, 32)),
                                 instruction="add a cat", meta={**meta, **m})
    assert len(read_benchmark(output("ok", [row(0), row(1, bench_split="align")]), "eval").samples) == 1
    with pytest.raises(UserError, match=r"row b_1_0_\w+: field meta.target_caption missing or empty"):
        read_benchmark(output("bad", [row(0), row(1, target_caption=" ")]), "all")
    with pytest.raises(UserError, match=r"field meta.bench_split is 'test'"):
        read_benchmark(output("half", [row(0, bench_split="test")]), "all")
    with pytest.raises(UserError, match="not a benchmark output"):
        read_benchmark(output("plain", [row(0)], section=False), "eval")
    with pytest.raises(UserError, match="--split"):
        read_benchmark(assets["bench"], "train")


def test_openai_tag_gets_quick_gelu(assets, monkeypatch):
    """open_clip's plain ViT-L-14 config uses GELU; OpenAI's weights were trained with QuickGELU. The embedder
    asks for QuickGELU when the tag's config says so (the factory is stubbed: no download, a tiny model)."""
    import open_clip

    from instructdiffusion_data.models.clip import ClipEmbedder

    real = open_clip.create_model_and_transforms
    seen = []

    def factory(name, pretrained=None, **kw):
        seen.append((name, pretrained, kw["force_quick_gelu"]))
        return real(TINY_CLIP_NAME, pretrained=None, **kw)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", factory)
    ClipEmbedder("ViT-L-14", "openai", "cpu")
    ClipEmbedder("ViT-L-14", "laion2b_s32b_b82k", "cpu")
    ClipEmbedder(TINY_CLIP_NAME, str(assets["clip_ckpt"]), "cpu", model_config=str(assets["clip_cfg"]))
    assert seen == [("ViT-L-14", "openai", True), ("ViT-L-14", "laion2b_s32b_b82k", False),
                    (TINY_CLIP_NAME, str(assets["clip_ckpt"]), False)]
