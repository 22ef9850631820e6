"""Issue 14 item 4: every count and ratio of a stage config is range-checked when the config loads, so
``variants_per_record: 0`` (which made 247 of 284 records vanish with exit 0) stops the run before any
work with one line naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest

from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.stage import _available, make_stage

# stage type -> (a count set to zero or below, an out-of-range ratio or bounded number)
CASES = {
    "adapt_caption": (("max_annotation_names", 0), ("blip2", {"caption_batch_size": 0})),
    "caption": (("caption_batch_size", 0), ("pad_frac", 2.5)),
    "enhance_pair": (("crops_per_pair", 0), ("quality", 101)),
    "ingest_edit": (("max_side", 0), ("quality", 0)),
    "inpaint_remove": (("lama_batch", 0), ("dilate_frac", 1.5)),
    "llm_instruction": (("min_words", 0), ("validation_retries", -1)),
    "paint_replace": (("steps", 0), ("ring", 1.5)),
    "quality_filter": (("giqa_k", 0), ("aesthetic_tgt_min", 11.0)),
    "render_keypoints": (("variants_per_record", 0), ("radius_frac", 0.5)),
    "render_refseg": (("variants_per_record", -1), ("alpha", 1.5)),
    "render_semseg": (("variants_per_record", 0), ("absent_ratio", 1.2)),
    "retrieve_reference": (("k", 0), ("dup_threshold", 1.5)),
}

# one more per stage where the stage has them: further counts and ratios
MORE = [
    ("render_keypoints", "min_joints", 0), ("render_keypoints", "max_joints", -2),
    ("render_keypoints", "min_visibility", 3), ("render_semseg", "min_area_frac", -0.1),
    ("render_semseg", "min_iou", 1.01), ("render_refseg", "colors_tried", 0), ("render_refseg", "jpeg_quality", 0),
    ("quality_filter", "background_margin", -1), ("quality_filter", "edit_change_min", 256.0),
    ("quality_filter", "giqa_build_limit", 1), ("quality_filter", "replace_gain_min", -3.0),
    ("quality_filter", "clip_batch_size", 0), ("inpaint_remove", "dilate_px", -1),
    ("inpaint_remove", "min_inside_diff", 300.0), ("caption", "num_beams", 0), ("caption", "max_new_tokens", 0),
    ("retrieve_reference", "search_k", 0), ("retrieve_reference", "embed_patch_max_side", -1),
    ("paint_replace", "fit", 0.0), ("paint_replace", "jpeg_quality", 101), ("enhance_pair", "crop_size", 4),
]


def test_every_stage_type_has_cases():
    assert set(CASES) == set(_available("instructdiffusion_data.stages"))


def _error(stage: str, key: str, value) -> str:
    with pytest.raises(ConfigError) as e:
        make_stage({"type": stage, key: value}, 0, 0)
    return str(e.value)


@pytest.mark.parametrize("stage", sorted(CASES))
def test_zero_count_and_bad_ratio_name_the_key(stage):
    for key, bad in CASES[stage]:
        msg = _error(stage, key, bad)
        assert key in msg and "\n" not in msg, msg


@pytest.mark.parametrize("stage,key,bad", MORE)
def test_more_bounds(stage, key, bad):
    msg = _error(stage, key, bad)
    assert f"{key}: must be" in msg and "stages[0]" in msg, msg


def test_nested_llm_config_is_checked():
    for key, bad in (("concurrency", 0), ("temperature", 3.0), ("max_retries", -1), ("timeout_s", 0.0)):
        msg = _error("llm_instruction", "llm", {key: bad})
        assert f"llm.{key}: must be" in msg, msg


def test_defaults_and_the_shipped_configs_are_in_range():
    for stage in CASES:
        if stage == "retrieve_reference":
            continue  # needs a gallery folder; its defaults are checked below without validate()
        make_stage({"type": stage}, 0, 0)
    from instructdiffusion_data import config as cfgmod
    from instructdiffusion_data.stage import stage_class

    cfgmod.build(stage_class("retrieve_reference").Config, {}, "retrieve_reference")


def test_trainer_config_ranges():
    from trainer.config import make_config

    make_config(output_dir="x", max_train_steps=1)
    for kw, key in ((dict(max_train_steps=0), "max_train_steps"),
                    (dict(max_train_steps=1, train_batch_size=0), "train_batch_size"),
                    (dict(max_train_steps=1, conditioning_dropout={"text_only": 1.5}), "conditioning_dropout.text_only"),
                    (dict(max_train_steps=1, model={"ema_decay": 1.5}), "model.ema_decay"),
                    (dict(max_train_steps=1, optim={"adam_beta1": -0.1}), "optim.adam_beta1"),
                    (dict(max_train_steps=1, validation={"num_inference_steps": 0}), "validation.num_inference_steps"),
                    (dict(max_train_steps=1, log_every_steps=0), "log_every_steps")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ": must be"):
            make_config(output_dir="x", **kw)


def test_idd_run_refuses_zero_variants_before_any_work(demo_root, tmp_path):
    """End to end: `idd run ... --set stages.0.variants_per_record=0` exits 2, one line on stderr naming
    the key, and writes nothing."""
    cfg = tmp_path / "kp.yaml"
    cfg.write_text(
        "name: kp\nsource:\n  type: coco_keypoints\n"
        f"  annotations: {demo_root / 'coco/annotations/person_keypoints_train2017.json'}\n"
        f"  images: {demo_root / 'coco/train2017'}\n"
        "stages:\n  - type: render_keypoints\n    variants_per_record: 2\n")
    out = tmp_path / "out"
    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, "-m", "instructdiffusion_data.cli", "run", str(cfg), "--no-ray", "--out", str(out),
                        "--set", "stages.0.variants_per_record=0"], capture_output=True, text=True, cwd=root,
                       timeout=300)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert "variants_per_record" in lines[0] and "must be >= 1" in lines[0] and "got 0" in lines[0]
    assert not out.exists() or not any(out.rglob("*.tar"))
