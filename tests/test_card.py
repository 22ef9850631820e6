"""Issue 16: ``idd card`` (the dataset card over an output root) and the per-row licence and provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from instructdiffusion_data.card import build_card, write_card
from instructdiffusion_data.cli import main
from instructdiffusion_data.errors import UserError
from instructdiffusion_data.licences import (DATASET_LICENCES, SOURCES, UNKNOWN_LICENCE, licence_for,
                                             provenance_for)

from .helpers_card import row, write_output

REPO = Path(__file__).resolve().parents[1]


def header(path: Path) -> dict:
    text = path.read_text()
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_mixed_extensions_and_optional_masks_load_every_row(tmp_path):
    """One output whose rows carry src.jpg or src.png and a mask only sometimes: every member is declared,
    ``datasets`` loads every row with its image, and a second output keeps its own config."""
    import datasets

    rows = [row("mix", 1, fmt="JPEG"), row("mix", 2, fmt="JPEG"), row("mix", 3, fmt="PNG", mask=True),
            row("mix", 4, fmt="PNG", mask=True), row("mix", 5, keep=False)]
    write_output(tmp_path, "mixed", "v1", [rows[:2], rows[2:]])
    write_output(tmp_path, "plain", "v1", [[row("coco", 7), row("coco", 8)]])
    write_card(tmp_path)
    h = header(tmp_path / "README.md")
    feats = {i["config_name"]: [f["name"] for f in i["features"]] for i in h["dataset_info"]}
    assert feats["mixed"] == ["__key__", "src.jpg", "src.png", "tgt.jpg", "tgt.png", "mask.png", "txt", "json", "__url__"]
    assert feats["plain"] == ["__key__", "src.jpg", "tgt.jpg", "txt", "json", "__url__"]
    ds = datasets.load_dataset(str(tmp_path), "mixed", split="train", cache_dir=str(tmp_path / ".hf"))
    assert ds.num_rows == 4
    for r in ds:
        n = int(r["__key__"].split("_")[1].split("-")[0])
        ext = "jpg" if n <= 2 else "png"
        other = "png" if ext == "jpg" else "jpg"
        assert isinstance(r[f"src.{ext}"], Image.Image) and r[f"src.{other}"] is None
        assert isinstance(r[f"tgt.{ext}"], Image.Image)
        assert (r["mask.png"] is not None) == (n > 2)
    plain = datasets.load_dataset(str(tmp_path), "plain", split="train", cache_dir=str(tmp_path / ".hf"))
    assert plain.num_rows == 2 and "mask.png" not in plain.features


def test_config_names_several_versions_and_skipped_outputs(tmp_path):
    write_output(tmp_path, "a", "v1", [[row("coco", 1)]])
    write_output(tmp_path, "a", "v2", [[row("coco", 2)]])
    write_output(tmp_path, "b", "v1", [[row("coco", 3)]])
    write_output(tmp_path, "c", "v1", [[row("coco", 4, keep=False)]])  # nothing kept: not a config
    (tmp_path / "ieiw_gallery").mkdir()  # not an output: ignored
    res = build_card(tmp_path)
    assert [o.config_name for o in res.outputs] == ["a_v1", "a_v2", "b"]
    assert res.skipped == [("c/v1", "no kept rows")]
    h = yaml.safe_load(res.text.split("---\n", 2)[1])
    assert [c["data_files"][0]["path"] for c in h["configs"]] == [
        ["a/v1/train/000000.tar"], ["a/v2/train/000000.tar"], ["b/v1/train/000000.tar"]]
    assert "`c/v1`" in res.text and "no kept rows" in res.text


def test_with_rejected_adds_the_split(tmp_path):
    write_output(tmp_path, "a", "v1", [[row("coco", 1), row("coco", 2, keep=False, mask=True)]])
    res = build_card(tmp_path, with_rejected=True)
    h = yaml.safe_load(res.text.split("---\n", 2)[1])
    files = h["configs"][0]["data_files"]
    assert [f["split"] for f in files] == ["train", "rejected"]
    assert [s["num_examples"] for s in h["dataset_info"][0]["splits"]] == [1, 1]
    assert "mask.png" in [f["name"] for f in h["dataset_info"][0]["features"]]


def test_card_is_written_atomically_and_never_over_a_foreign_readme(tmp_path):
    write_output(tmp_path, "a", "v1", [[row("coco", 1)]])
    readme = tmp_path / "README.md"
    readme.write_text("# my own notes\n")
    with pytest.raises(UserError, match="not written by idd card"):
        write_card(tmp_path)
    assert readme.read_text() == "# my own notes\n"
    assert main(["card", str(tmp_path)]) == 2  # one line, exit 2
    assert main(["card", str(tmp_path), "--force"]) == 0
    first = readme.read_text()
    assert main(["card", str(tmp_path)]) == 0  # its own card: replaced without --force
    assert readme.read_text() == first  # deterministic: the same outputs give the same card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "a"]  # no temporary file left


def test_card_cli_json_and_errors(tmp_path, capsys):
    write_output(tmp_path, "a", "v1", [[row("coco", 1)]])
    assert main(["card", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["configs"]["a"]["train_rows"] == 1 and out["configs"]["a"]["members"] == ["json", "src.jpg", "tgt.jpg", "txt"]
    (tmp_path / "a" / "v1" / "train" / "000000.tar").unlink()
    assert main(["card", str(tmp_path)]) == 2
    assert "000000.tar: missing" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["card", str(empty)]) == 2
    assert main(["card", str(tmp_path / "nowhere")]) == 2


def test_card_header_validates_with_huggingface_hub(tmp_path):
    from huggingface_hub import DatasetCard, DatasetCardData

    write_output(tmp_path, "k", "v1", [[row("coco", 1), row("mpii", 2)]])
    write_output(tmp_path, "e", "v1", [[row("magicbrush", 3, fmt="PNG", mask=True, task="edit")]])
    write_output(tmp_path, "own", "v1", [[row("triplets", 4, task="edit")]])
    write_card(tmp_path)
    card = DatasetCard.load(tmp_path / "README.md")
    data = DatasetCardData(**card.data.to_dict())
    assert set(data.license) == {"cc-by-4.0", "other", "unknown"}
    assert data.license_name and data.license_link
    assert {"image-to-image", "keypoint-detection"} <= set(data.task_categories)
    assert data.size_categories == ["n<1K"]
    text = card.text
    for d in ("coco", "mpii", "magicbrush"):
        assert f"| `{d}` ({SOURCES[d].name}) | `{SOURCES[d].licence}` |" in text
        assert SOURCES[d].url in text
    assert f"| `triplets` | {UNKNOWN_LICENCE} |" in text
    for key in ("geng2023instructdiffusion", "lin2014coco", "andriluka20142d", "zhang2023magicbrush"):
        assert text.count("{" + key + ",") == 1  # each citation once, also when two sources share it


def test_licence_table_covers_every_dataset_a_pipeline_writes():
    names = {"coco", "cocostuff", "refcoco", "refcoco+", "refcocog", "grefcoco", "phrasecut", "sa1b", "openimages",
             "magicbrush", "instructpix2pix", "gier", "gqa_inpaint", "gopro", "reds", "sidd", "clwd", "mpii",
             "crowdpose", "aic"}
    for cfg in (REPO / "configs" / "pipelines").glob("*.yaml"):
        ds = (yaml.safe_load(cfg.read_text()).get("source") or {}).get("dataset")
        if ds:
            names.add(ds)
    assert names <= set(DATASET_LICENCES), sorted(names - set(DATASET_LICENCES))
    assert DATASET_LICENCES["magicbrush"] == "CC-BY-4.0"
    assert DATASET_LICENCES["coco"].startswith("CC-BY-4.0")
    assert DATASET_LICENCES["sa1b"] == "LicenseRef-SA-1B-Dataset-Research-License"
    assert licence_for("triplets") == UNKNOWN_LICENCE
    for s in SOURCES.values():
        assert s.bibtex.lstrip().startswith("@") and s.url.startswith("http")


def test_writer_fills_licence_and_source_id_from_provenance(tmp_path):
    prov = provenance_for("coco", "100_3", image=100)
    assert prov == {"source_id": "100_3", "licence": DATASET_LICENCES["coco"], "dataset": "coco", "image": 100}
    out = write_output(tmp_path, "k", "v1", [[row("coco", 100, provenance=prov), row("coco", 101)]])
    side = {r["key"]: r for r in pq.read_table(out / "train" / "000000.parquet").to_pylist()}
    with_prov, without = sorted(side.values(), key=lambda r: r["key"])
    assert with_prov["licence"] == DATASET_LICENCES["coco"] and with_prov["source_id"] == "100_3"
    assert without["licence"] is None and without["source_id"] == "101_0"  # falls back to meta.record_id
    card = build_card(tmp_path).text
    assert "1 kept rows have no `licence` value" in card
