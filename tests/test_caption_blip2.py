"""BLIP-2 captions: a tiny BLIP-2 (tiny ViT, Q-Former, OPT and BPE tokenizer) built from configs, saved,
and loaded back through the production path (``Blip2Captioner`` / the ``caption`` stage)."""

import functools

import numpy as np
import pytest

from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.imageio import encode_jpeg, encode_png
from instructdiffusion_data.models.blip2 import crop_region
from instructdiffusion_data.shard_tasks import run_stages_local
from instructdiffusion_data.schema import new_row

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def build_tiny_blip2(out_dir):
    """Save a random tiny BLIP-2 and its processor to ``out_dir`` (~1 MB)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        GPT2TokenizerFast,
    )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["a photo of a dog on the grass", "a cat sitting on a red sofa", "a man riding a horse"] * 4,
                            trainer)
    tok = GPT2TokenizerFast(tokenizer_object=bpe, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="</s>")
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
                               num_query_tokens=4)  # adds the <image> token to the tokenizer
    image_token = tok.convert_tokens_to_ids("<image>")
    config = Blip2Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        qformer_config={"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "intermediate_size": 64, "max_position_embeddings": 64},
        text_config={"model_type": "opt", "vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 2,
                     "ffn_dim": 64, "num_attention_heads": 4, "max_position_embeddings": 128, "word_embed_proj_dim": 32,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                     "pad_token_id": tok.pad_token_id},
        num_query_tokens=4, image_token_index=image_token)
    torch.manual_seed(0)
    Blip2ForConditionalGeneration(config).save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def tiny_blip2(tmp_path_factory):
    return str(build_tiny_blip2(tmp_path_factory.mktemp("blip2")))


def _img(seed, h=40, w=56):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@functools.lru_cache(maxsize=2)
def _reference_model(model_dir):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    proc = Blip2Processor.from_pretrained(model_dir, local_files_only=True)
    return proc, Blip2ForConditionalGeneration.from_pretrained(model_dir, local_files_only=True).eval()


def reference_captions(model_dir, images, prompt=None, **gen):
    """Captions computed with transformers directly, one image at a time, to compare the adapter with."""
    from PIL import Image

    proc, model = _reference_model(model_dir)
    out = []
    for a in images:
        kw = {"text": [prompt]} if prompt else {}
        inputs = proc(images=[Image.fromarray(a)], return_tensors="pt", **kw)
        with torch.inference_mode():
            ids = model.generate(**inputs, do_sample=False, **gen)
        ids = ids[:, inputs["input_ids"].shape[1]:] if "input_ids" in inputs else ids
        out.append(" ".join(proc.batch_decode(ids, skip_special_tokens=True)[0].split()))
    return out


def test_stage_captions_a_batch_through_the_production_path(tiny_blip2, monkeypatch):
    from instructdiffusion_data.stages.caption import CaptionStage

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    imgs = [_img(i) for i in range(3)]
    tgts = [255 - a for a in imgs]
    mask = np.zeros((40, 56), np.uint8)
    mask[10:30, 20:40] = 255
    rows = [new_row(key=f"k{i}", task="edit_remove", dataset="t", src=encode_png(imgs[i]), tgt=encode_png(tgts[i]),
                    mask=encode_png(mask), meta={"record_id": str(i), "phrase": "dog"}) for i in range(3)]
    cfg = {"backend": "blip2", "model": tiny_blip2, "local_files_only": True, "targets": ["src", "src_region", "tgt"],
           "min_new_tokens": 3, "max_new_tokens": 5, "caption_batch_size": 4}
    out = run_stages_local([CaptionStage(cfg)], rows)
    assert all(r["keep"] for r in out)
    gen = {"min_new_tokens": 3, "max_new_tokens": 5}
    crops = [crop_region(a, mask=mask, pad_frac=0.1) for a in imgs]
    want_src = reference_captions(tiny_blip2, imgs, **gen)
    want_region = reference_captions(tiny_blip2, crops, **gen)
    want_tgt = reference_captions(tiny_blip2, tgts, **gen)
    for i, r in enumerate(out):
        caps = r["meta"]["captions"]
        assert caps == {"src": want_src[i], "src_region": want_region[i], "tgt": want_tgt[i]}
        assert all(caps.values())  # min_new_tokens: never empty
        prov = r["meta"]["caption_provenance"]
        assert prov["backend"] == "blip2" and prov["model"].startswith("local:")
        assert prov["sources"] == {"src": "blip2", "src_region": "blip2", "tgt": "blip2"}


def test_captioner_batching_and_prompt(tiny_blip2):
    from instructdiffusion_data.models.blip2 import Blip2Captioner

    imgs = [_img(10 + i, 32 + 4 * i, 48) for i in range(3)]
    many = Blip2Captioner(tiny_blip2, local_files_only=True, batch_size=4, min_new_tokens=2, max_new_tokens=4)
    assert many.dtype == torch.float32 and many.device.type == "cpu"
    assert many.caption(imgs) == reference_captions(tiny_blip2, imgs, min_new_tokens=2, max_new_tokens=4)
    prompted = Blip2Captioner(tiny_blip2, local_files_only=True, batch_size=3, min_new_tokens=2, max_new_tokens=4,
                              prompt="a photo of")
    assert prompted.caption(imgs) == reference_captions(tiny_blip2, imgs, prompt="a photo of",
                                                        min_new_tokens=2, max_new_tokens=4)


def test_missing_inputs_drop_the_row_and_bad_config(tiny_blip2, tmp_path):
    from instructdiffusion_data.stages.caption import CaptionStage

    cfg = {"backend": "blip2", "model": tiny_blip2, "local_files_only": True, "targets": ["src_region", "tgt"],
           "min_new_tokens": 1, "max_new_tokens": 2}
    ok = new_row(key="ok", task="edit_remove", dataset="t", src=encode_jpeg(_img(1)), tgt=encode_jpeg(_img(2)),
                 meta={"record_id": "1", "phrase": "dog", "width": 112, "height": 80, "region": {"bbox": [20, 20, 40, 30]}})
    no_tgt = new_row(key="no_tgt", task="edit_remove", dataset="t", src=encode_jpeg(_img(1)),
                     meta={"record_id": "2", "phrase": "dog", "region": {"bbox": [0, 0, 10, 10]}})
    no_region = new_row(key="no_region", task="edit_remove", dataset="t", src=encode_jpeg(_img(1)),
                        tgt=encode_jpeg(_img(2)), meta={"record_id": "3", "phrase": "dog"})
    out = {r["key"]: r for r in run_stages_local([CaptionStage(cfg)], [ok, no_tgt, no_region])}
    assert out["ok"]["keep"] and set(out["ok"]["meta"]["captions"]) == {"src_region", "tgt"}
    assert out["no_tgt"]["drop_reason"] == "caption: no target image to caption (record=2)"
    assert out["no_region"]["drop_reason"].startswith("caption: no region to caption")
    with pytest.raises(ConfigError, match="model: dir not found"):
        CaptionStage({"backend": "blip2", "model": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="targets"):
        CaptionStage({"targets": ["everything"]})


def test_crop_region_box_mask_and_background():
    img = np.arange(20 * 30 * 3, dtype=np.uint32).reshape(20, 30, 3).astype(np.uint8)
    crop = crop_region(img, box=[10, 5, 10, 8], pad_frac=0.0)
    assert crop.shape == (8, 10, 3) and np.array_equal(crop, img[5:13, 10:20])
    crop = crop_region(img, box=[10, 5, 10, 8], pad_frac=0.5)  # 5 px / 4 px of context per side, clipped
    assert np.array_equal(crop, img[1:17, 5:25])
    mask = np.zeros((20, 30), np.uint8)
    mask[4:12, 6:14] = 1
    mask[4, 6] = 0
    grey = crop_region(img, mask=mask, pad_frac=0.0, background="grey")
    assert grey.shape == (8, 8, 3)
    assert (grey[0, 0] == 128).all() and np.array_equal(grey[1, 1], img[5, 7])
    with pytest.raises(ValueError, match="empty"):
        crop_region(img, mask=np.zeros((20, 30), np.uint8))


def test_reference_patch_from_meta(tiny_blip2):
    """The retrieve_reference stage's patch (RGBA PNG, base64) is captioned with its background grey."""
    import base64

    import cv2

    from instructdiffusion_data.stages.caption import CaptionStage

    patch = _img(7, 24, 20)
    alpha = np.zeros((24, 20), np.uint8)
    alpha[4:20, 3:17] = 255
    _ok, png = cv2.imencode(".png", np.dstack([cv2.cvtColor(patch, cv2.COLOR_RGB2BGR), alpha]))
    row = new_row(key="r", task="edit_replace", dataset="t",
                  meta={"record_id": "1", "reference": {"label": "Cat", "patch_png_b64": base64.b64encode(png.tobytes()).decode()}})
    st = CaptionStage({"backend": "blip2", "model": tiny_blip2, "local_files_only": True, "targets": ["reference"],
                       "region_background": "grey", "min_new_tokens": 2, "max_new_tokens": 3})
    out = run_stages_local([st], [row])[0]
    seen = patch.copy()
    seen[alpha == 0] = 128
    assert np.array_equal(st.reference_patch(row["meta"], "1"), seen)
    assert out["meta"]["captions"] == {"reference": reference_captions(tiny_blip2, [seen], min_new_tokens=2,
                                                                        max_new_tokens=3)[0]}


def test_processor_without_num_query_tokens(tiny_blip2, tmp_path):
    """An older hub snapshot's processor_config.json has no num_query_tokens: taken from the model."""
    import json
    import shutil

    from instructdiffusion_data.models.blip2 import Blip2Captioner

    old = tmp_path / "old"
    shutil.copytree(tiny_blip2, old)
    cfg = json.loads((old / "processor_config.json").read_text())
    del cfg["num_query_tokens"]
    (old / "processor_config.json").write_text(json.dumps(cfg))
    cap = Blip2Captioner(str(old), local_files_only=True, prompt="a photo of", min_new_tokens=2, max_new_tokens=3)
    assert cap.processor.num_query_tokens == 4
    imgs = [_img(3)]
    assert cap.caption(imgs) == reference_captions(tiny_blip2, imgs, prompt="a photo of", min_new_tokens=2,
                                                   max_new_tokens=3)
