"""The part-2 demo generators: real layouts, deterministic bytes, and a seed that changes them."""

import hashlib
import json
import math
from pathlib import Path

import pytest

from instructdiffusion_data.demo import generate_all, generator_names

DEMOS = ["mpii", "crowdpose", "aic", "gopro", "reds", "sidd", "clwd", "instructpix2pix", "magicbrush", "gier", "gqa_inpaint"]
LAYOUT = {
    "mpii": ["mpii/annotations/mpii_train.json", "mpii/images/000000001.jpg"],
    "crowdpose": ["crowdpose/json/crowdpose_train.json", "crowdpose/images/100000.jpg"],
    "aic": ["aic/keypoint_train_annotations_20170909.json", "aic/annotations/aic_train.json"],
    "gopro": ["gopro/GOPRO_Large/train/GOPR0372_07_00/blur/000001.png",
              "gopro/GOPRO_Large/train/GOPR0372_07_00/blur_gamma/000001.png",
              "gopro/GOPRO_Large/train/GOPR0372_07_00/sharp/000001.png"],
    "reds": ["reds/train/train_blur/000/00000000.png", "reds/train/train_sharp/000/00000000.png"],
    "sidd": ["sidd/SIDD_Medium_Srgb/Data"],
    "clwd": ["clwd/train/Watermarked_image/1.jpg", "clwd/train/Watermark_free_image/1.jpg", "clwd/train/Mask/1.png",
             "clwd/test/Watermarked_image/1.jpg"],
    "instructpix2pix": ["instructpix2pix/clip-filtered-dataset/seeds.json",
                        "instructpix2pix/clip-filtered-dataset/0000000/prompt.json",
                        "instructpix2pix/clip-filtered-dataset/0000000/metadata.jsonl",
                        "instructpix2pix/data/train-00000-of-00001.parquet"],
    "magicbrush": ["magicbrush/data/train-00000-of-00001.parquet"],
    "gier": ["gier/GIER.json", "gier/images/001000_in.jpg", "gier/images/001000_out.jpg"],
    "gqa_inpaint": ["gqa_inpaint/train_scenes.json", "gqa_inpaint/images"],
}


def digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generators_registered_and_layouts(tmp_path):
    assert set(DEMOS) <= set(generator_names())
    generate_all(tmp_path, 8, 0, DEMOS)
    for name, paths in LAYOUT.items():
        for p in paths:
            assert (tmp_path / p).exists(), p
    sidd = sorted((tmp_path / "sidd/SIDD_Medium_Srgb/Data").iterdir())[0]
    assert sorted(p.name[5:] for p in sidd.iterdir()) == ["GT_SRGB_010.PNG", "GT_SRGB_011.PNG", "NOISY_SRGB_010.PNG",
                                                          "NOISY_SRGB_011.PNG"]
    text = (tmp_path / "gier/GIER.json").read_text()
    assert ": NaN" in text  # bare NaN tokens, like the released file
    assert any(isinstance(e["request"], float) and math.isnan(e["request"]) for e in json.loads(text))


@pytest.mark.parametrize("name", DEMOS)
def test_generators_deterministic(tmp_path, name):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_all(a, 8, 0, [name])
    generate_all(b, 8, 0, [name])
    generate_all(c, 8, 1, [name])
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)
