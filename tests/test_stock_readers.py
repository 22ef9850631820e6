"""Issue 16: the outputs read as they are by stock tools: Hugging Face ``datasets`` (through the card that
``idd card`` writes), ``webdataset``, DuckDB over the sidecars and ``ray.data.read_webdataset``; every
kept row with every image, nothing of the checkout's or the input data's absolute paths in the files.

One small demo output set per module: COCO keypoints (JPEG, no mask), COCO-Stuff (JPEG + mask), MagicBrush
(PNG + mask) and IEIW removal (scored by the quality filter).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("keypoints_coco", "semseg_cocostuff", "edit_magicbrush", "ieiw_removal")


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    """``(root, demo_dir)``: the demo outputs under ``root`` (card written), run without Ray."""
    from instructdiffusion_data.cli import main
    from instructdiffusion_data.demo import generate_all

    work = tmp_path_factory.mktemp("stock")
    generate_all(work / "demo_data", n=6, seed=0, only=["coco", "magicbrush", "phrasecut"])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # the configs name demo_data/... relative to the working folder
        rc = main(["run", *(str(REPO / "configs" / "pipelines" / f"{c}.yaml") for c in CONFIGS),
                   "--out", "shards", "--no-ray"])
        assert rc == 0
        assert main(["card", "shards"]) == 0
    return work / "shards", work / "demo_data"


def manifest(root: Path, name: str) -> dict:
    return json.loads((root / name / "v2" / "manifest.json").read_text())


def train_tars(root: Path, name: str) -> list[str]:
    return [str(root / name / "v2" / s["tar"]) for s in manifest(root, name)["splits"]["train"]["shards"]]


def train_sidecar(root: Path, name: str) -> list[dict]:
    rows = []
    for s in manifest(root, name)["splits"]["train"]["shards"]:
        rows += pq.read_table(root / name / "v2" / s["parquet"]).to_pylist()
    return rows


def is_image(obj) -> bool:
    if isinstance(obj, Image.Image):
        obj.load()
        return obj.size[0] > 0 and obj.size[1] > 0
    return False


def test_card_parses_as_a_hub_dataset_card(stock):
    from huggingface_hub import DatasetCard, DatasetCardData

    root, _ = stock
    card = DatasetCard.load(root / "README.md")
    data = card.data
    assert isinstance(data, DatasetCardData)
    DatasetCardData(**data.to_dict())  # round-trips through the hub's own card data class
    names = [c["config_name"] for c in data.configs]
    assert names == sorted(CONFIGS)
    assert data.license and data.task_categories and "image-to-image" in data.task_categories
    for c in data.configs:  # one output per config, only its train tars, its current generation
        paths = c["data_files"][0]["path"]
        assert c["data_files"][0]["split"] == "train"
        assert paths == [str(Path(p).relative_to(root)) for p in train_tars(root, c["config_name"])]
    infos = {i["config_name"]: i for i in data.dataset_info}
    for name in CONFIGS:
        assert infos[name]["splits"][0]["num_examples"] == manifest(root, name)["splits"]["train"]["rows"]
    text = card.text
    assert "2309.03895" in text and "geng2023instructdiffusion" in text
    assert "| `magicbrush` (MagicBrush) | `CC-BY-4.0` |" in text
    assert "osunlp/MagicBrush" in text and "cocodataset.org" in text


def test_datasets_loads_every_kept_row_with_its_images(stock, tmp_path):
    import datasets

    root, _ = stock
    for name in CONFIGS:
        ds = datasets.load_dataset(str(root), name, split="train", cache_dir=str(tmp_path / "hf"))
        side = {r["key"]: r for r in train_sidecar(root, name)}
        assert ds.num_rows == manifest(root, name)["splits"]["train"]["rows"] == len(side)
        assert sorted(ds["__key__"]) == sorted(side)
        for row in ds:
            s = side[row["__key__"]]
            for role in ("src", "tgt", "mask"):
                member = s[f"{role}_member"]
                if member is None:
                    assert all(row[c] is None for c in row if c.startswith(role + ".")), (name, role)
                    continue
                col = member.split(".", 1)[1]
                assert is_image(row[col]), (name, row["__key__"], col)
            assert row["txt"] == s["instruction"]
            assert row["json"]["keep"] is True and row["json"]["task"] == s["task"]
        if name in ("semseg_cocostuff", "edit_magicbrush", "ieiw_removal"):
            assert "mask.png" in ds.features
        assert ("src.png" in ds.features) == (name == "edit_magicbrush")


def test_datasets_streaming_reads_every_row(stock):
    import datasets

    root, _ = stock
    for name in ("edit_magicbrush", "semseg_cocostuff"):
        it = datasets.load_dataset(str(root), name, split="train", streaming=True)
        rows = list(it)
        assert len(rows) == manifest(root, name)["splits"]["train"]["rows"]
        assert all(is_image(r["mask.png"]) for r in rows)


def test_datasets_refuses_a_count_that_differs_from_the_card(stock, tmp_path):
    """The card's split sizes are checked: rows lost in reading are an error, never silent."""
    import datasets
    import shutil

    root, _ = stock
    copy = tmp_path / "copy"
    shutil.copytree(root / "edit_magicbrush", copy / "edit_magicbrush")
    text = (root / "README.md").read_text()
    n = manifest(root, "edit_magicbrush")["splits"]["train"]["rows"]
    head, body = text.split("\n---\n", 1)
    block = head.split("- config_name: edit_magicbrush\n  features:", 1)
    assert len(block) == 2
    tail = block[1].replace(f"num_examples: {n}\n", f"num_examples: {n + 1}\n", 1)
    (copy / "README.md").write_text(block[0] + "- config_name: edit_magicbrush\n  features:" + tail + "\n---\n" + body)
    with pytest.raises(datasets.exceptions.NonMatchingSplitsSizesError):
        datasets.load_dataset(str(copy), "edit_magicbrush", split="train", cache_dir=str(tmp_path / "hf"))


def test_webdataset_decodes_every_row(stock):
    import webdataset as wds

    root, _ = stock
    for name in CONFIGS:
        side = {r["key"]: r for r in train_sidecar(root, name)}
        seen = 0
        for sample in wds.WebDataset(train_tars(root, name), shardshuffle=False).decode("pil"):
            s = side[sample["__key__"]]
            for role in ("src", "tgt", "mask"):
                member = s[f"{role}_member"]
                if member is not None:
                    assert is_image(sample[member.split(".", 1)[1]]), (name, member)
            assert isinstance(sample["json"], dict) and sample["txt"] == s["instruction"]
            seen += 1
        assert seen == len(side) == manifest(root, name)["splits"]["train"]["rows"]


def test_duckdb_reads_every_row_and_image_by_offset(stock):
    import duckdb

    root, _ = stock
    for name in CONFIGS:
        files = [str(root / name / "v2" / s["parquet"]) for s in manifest(root, name)["splits"]["train"]["shards"]]
        rows = duckdb.sql(f"select key, tar, src_offset, src_size, tgt_offset, tgt_size, mask_offset, mask_size "
                          f"from read_parquet({files!r}) where keep order by key").fetchall()
        assert len(rows) == manifest(root, name)["splits"]["train"]["rows"]
        tar_dir = root / name / "v2" / "train"
        for key, tar, *offs in rows:
            data = (tar_dir / tar).read_bytes()
            for off, size in zip(offs[::2], offs[1::2]):
                if off is not None:
                    assert is_image(Image.open(io.BytesIO(data[off:off + size]))), (name, key)


def test_duckdb_score_query_of_the_docs(stock):
    """docs/shard-format.md: kept rows per task with aesthetic >= X and GIQA >= the reference's p10."""
    import duckdb

    root, _ = stock
    doc = (REPO / "docs" / "shard-format.md").read_text()
    assert "giqa_reference.percentiles.p10" in doc and "aesthetic_classical_tgt" in doc
    files = sorted(str(p) for p in root.glob("*/v2/train/*.parquet"))
    x = 5.0
    got = dict(duckdb.sql(f"""
        select task, count(*) from read_parquet({files!r})
        where keep
          and coalesce(aesthetic_laion_tgt, aesthetic_classical_tgt) >= {x}
          and giqa_tgt >= cast(json_extract(meta, '$.filter.giqa_reference.percentiles.p10') as double)
        group by task order by task""").fetchall())
    want: dict[str, int] = {}
    for f in files:
        for r in pq.read_table(f).to_pylist():
            meta = json.loads(r["meta"])
            p10 = (((meta.get("filter") or {}).get("giqa_reference") or {}).get("percentiles") or {}).get("p10")
            aes = r["aesthetic_laion_tgt"] if r["aesthetic_laion_tgt"] is not None else r["aesthetic_classical_tgt"]
            if r["keep"] and aes is not None and aes >= x and p10 is not None and r["giqa_tgt"] >= p10:
                want[r["task"]] = want.get(r["task"], 0) + 1
    assert got == want and set(got) <= {"edit_remove", "edit_add"} and sum(got.values()) > 0


def test_ray_read_webdataset_reads_every_row(stock, ray_local):
    import numpy as np
    import ray

    root, _ = stock
    for name in ("keypoints_coco", "edit_magicbrush"):
        rows = ray.data.read_webdataset(train_tars(root, name)).take_all()
        side = {r["key"]: r for r in train_sidecar(root, name)}
        assert len(rows) == len(side) == manifest(root, name)["splits"]["train"]["rows"]
        for r in rows:
            s = side[r["__key__"]]
            for role in ("src", "tgt", "mask"):
                member = s[f"{role}_member"]
                if member is not None:
                    img = r[member.split(".", 1)[1]]
                    assert isinstance(img, np.ndarray) and img.ndim >= 2 and img.size > 0, (name, member)


def test_no_absolute_path_of_the_checkout_or_the_inputs_in_the_files(stock):
    root, demo = stock
    needles = {str(REPO).encode(), str(demo.resolve()).encode(), str(demo).encode(), os.fsencode(root.parent)}
    bad = []
    for p in sorted(root.glob("*/v2/**/*")):
        if p.suffix in (".tar", ".parquet") and ".plan" not in p.parts:
            data = p.read_bytes()
            bad += [f"{p.relative_to(root)} holds {n.decode()}" for n in needles if n in data]
    assert not bad, "\n".join(bad)
