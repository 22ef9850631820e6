"""Editing datasets ingested as they are: InstructPix2Pix, MagicBrush, GIER, GQA-Inpaint, triplets,
and the ingest_edit stage."""

import base64
import json
import math

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instructdiffusion_data import imageio
from instructdiffusion_data.demo import gier as demo_gier
from instructdiffusion_data.demo import gqa_inpaint as demo_gqa
from instructdiffusion_data.demo import instructpix2pix as demo_ip2p
from instructdiffusion_data.demo import magicbrush as demo_mb
from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.readers.gier import GIERSource
from instructdiffusion_data.readers.gqa_inpaint import GQAInpaintSource
from instructdiffusion_data.readers.instructpix2pix import IP2PSource
from instructdiffusion_data.readers.magicbrush import MagicBrushSource
from instructdiffusion_data.readers.triplets import TripletsSource
from instructdiffusion_data.shard_tasks import run_stages_local
from instructdiffusion_data.schema import rows_to_table
from instructdiffusion_data.stages.ingest_edit import IngestEditStage

from .helpers_readers import rows_of


def img(value, h=24, w=32):
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = value
    a[: h // 2, :, 1] = 200
    return a


def jpg(path, value, h=24, w=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(imageio.encode_jpeg(img(value, h, w)))
    return path


def by_id(rows):
    return {r["meta"]["record_id"]: r for r in rows}


def ingest(rows, **cfg):
    return by_id(run_stages_local([IngestEditStage(cfg)], rows))


# -- InstructPix2Pix -------------------------------------------------------------------------------

def _ip2p_folder(root):
    """The released layout: prompt.json with input/edit/output, metadata.jsonl with the names
    generate_img_dataset.py writes (clip_sim_dir, not clip_sim_direction), seeds.json with text seeds."""
    d = root / "0000000"
    for s, v in ((1001, 10), (1002, 20)):
        jpg(d / f"{s}_0.jpg", v)
        jpg(d / f"{s}_1.jpg", v + 100)
    (d / "prompt.json").write_text(json.dumps({"input": "a cat on a sofa", "edit": "turn the cat into a dog",
                                               "output": "a dog on a sofa"}))
    (d / "metadata.jsonl").write_text(
        json.dumps({"seed": 1001, "p2p_threshold": 0.4, "cfg_scale": 9.1, "clip_sim_0": 0.3, "clip_sim_1": 0.31,
                    "clip_sim_dir": 0.25, "clip_sim_image": 0.9})
        + "\n" + json.dumps({"seed": 1002, "p2p_threshold": 0.6, "cfg_scale": 8.0, "clip_sim_0": 0.3, "clip_sim_1": 0.1,
                             "clip_sim_dir": 0.05, "clip_sim_image": 0.9}) + "\n")
    e = root / "0000001"
    jpg(e / "7_0.jpg", 5)
    (e / "prompt.json").write_text(json.dumps({"input": "x", "edit": "   ", "output": "y"}))
    (root / "seeds.json").write_text(json.dumps([["0000000", ["1001", "1002"]], ["0000001", ["7"]], ["0000002", ["9"]]]))


def test_ip2p_folder_real_key_names_scores_filter_and_bad_records(tmp_path):
    _ip2p_folder(tmp_path)
    src = IP2PSource({"root": str(tmp_path)})
    items = list(src.items())  # one item per prompt folder, listed by name
    assert [i[0].split("/")[-2:] for i in items] == [["0000000", "prompt.json"], ["0000001", "prompt.json"],
                                                     ["0000002", "prompt.json"]]
    assert [p.split("/")[-1] for p in items[0]] == ["prompt.json", "metadata.jsonl", "1001_0.jpg", "1001_1.jpg",
                                                    "1002_0.jpg", "1002_1.jpg"]
    recs = rows_of(src)
    assert [r["meta"]["record_id"] for r in recs] == ["0000000/1001", "0000000/1002", "0000001/7", "0000002/9"]
    r0 = recs[0]
    assert r0["task"] == "edit" and r0["instruction"] == "turn the cat into a dog"
    assert r0["meta"]["input_caption"] == "a cat on a sofa" and r0["meta"]["output_caption"] == "a dog on a sofa"
    assert r0["meta"]["scores"] == {"clip_sim_0": 0.3, "clip_sim_1": 0.31, "clip_sim_dir": 0.25, "clip_sim_image": 0.9}
    assert r0["meta"]["generation"] == {"p2p_threshold": 0.4, "cfg_scale": 9.1}
    assert recs[2]["drop_class"] == "instruction is empty"
    assert "missing pair half" in recs[2]["drop_reason"] and "field=tgt_ref" in recs[2]["drop_reason"]
    assert recs[3]["drop_class"] == "prompt.json missing"
    # the released key applies: clip_sim_dir 0.05 < 0.2 is dropped (it was silently kept before)
    out = ingest(recs, min_scores={"clip_sim_dir": 0.2, "clip_sim_1": 0.2, "clip_sim_image": 0.75})
    assert out["0000000/1001"]["keep"]
    assert out["0000000/1001"]["src"] == (tmp_path / "0000000" / "1001_0.jpg").read_bytes()  # passed through
    assert out["0000000/1001"]["tgt"] == (tmp_path / "0000000" / "1001_1.jpg").read_bytes()
    bad = out["0000000/1002"]
    assert bad["drop_class"] == "clip_sim_1<0.2"
    assert [json.loads(d)["class"] for d in bad["drop_detail"]] == ["clip_sim_1<0.2", "clip_sim_dir<0.2"]
    assert json.loads(bad["drop_detail"][1])["value"] == 0.05
    assert bad["src"] is not None  # the auditor still sees the filtered pair
    assert bad["meta"]["filter"]["clip_sim_dir"] == 0.2
    # the old name is an alias of the released one
    alias = ingest(recs, min_scores={"clip_sim_direction": 0.2})
    assert alias["0000000/1002"]["drop_class"] == "clip_sim_dir<0.2" and alias["0000000/1001"]["keep"]
    # without seeds.json: every prompt folder with images, every seed with either image
    ids = [r["meta"]["record_id"] for r in rows_of(IP2PSource({"root": str(tmp_path), "use_seeds_json": False}))]
    assert ids == ["0000000/1001", "0000000/1002", "0000001/7"]


def test_ip2p_old_score_name_in_metadata_and_bad_scores(tmp_path):
    d = tmp_path / "0000000"
    for s in (1, 2, 3, 4):
        jpg(d / f"{s}_0.jpg", 10)
        jpg(d / f"{s}_1.jpg", 90)
    (d / "prompt.json").write_text(json.dumps({"input": "a", "edit": "make it b", "output": "b"}))
    (d / "metadata.jsonl").write_text(
        '{"seed": 1, "clip_sim_direction": 0.3}\n{"seed": 2, "clip_sim_dir": NaN, "clip_sim_0": 0.3}\n'
        '{"seed": 3, "clip_sim_dir": "high"}\n{not json\n')
    recs = by_id(rows_of(IP2PSource({"root": str(tmp_path)})))
    assert recs["0000000/1"]["keep"] and recs["0000000/1"]["meta"]["scores"] == {"clip_sim_dir": 0.3}
    assert recs["0000000/2"]["drop_class"] == "not a finite number"
    assert "field=metadata.jsonl:clip_sim_dir" in recs["0000000/2"]["drop_reason"]
    assert recs["0000000/3"]["drop_class"] == "bad field"
    assert recs["0000000/4"]["keep"] and recs["0000000/4"]["meta"]["scores"] == {}  # no metadata line: unscored
    out = ingest([recs["0000000/1"], recs["0000000/4"]], min_scores={"clip_sim_dir": 0.2})
    assert out["0000000/1"]["keep"] and "filter_missing" not in out["0000000/1"]["meta"]
    assert out["0000000/4"]["keep"] and out["0000000/4"]["meta"]["filter_missing"] == ["clip_sim_dir"]


def test_ingest_min_scores_unknown_name_and_no_row_with_the_score(tmp_path, caplog):
    with pytest.raises(ConfigError, match="min_scores.clip_sim_directional"):
        IngestEditStage({"min_scores": {"clip_sim_directional": 0.2}})
    with pytest.raises(ConfigError, match="configured twice"):
        IngestEditStage({"min_scores": {"clip_sim_direction": 0.2, "clip_sim_dir": 0.3}})
    jpg(tmp_path / "a.jpg", 10)
    jpg(tmp_path / "b.jpg", 90)
    (tmp_path / "t.jsonl").write_text(json.dumps({"source": "a.jpg", "target": "b.jpg", "instruction": "go"}) + "\n")
    with caplog.at_level("WARNING"):
        out = ingest(rows_of(TripletsSource({"file": str(tmp_path / "t.jsonl")})), min_scores={"clip_sim_dir": 0.2})
    assert out["0"]["keep"] and out["0"]["meta"]["filter_missing"] == ["clip_sim_dir"]
    assert "min_scores.clip_sim_dir: no row of this batch has meta.scores.clip_sim_dir" in caplog.text


def _struct(b):
    return None if b is None else {"bytes": b, "path": None}


def test_ip2p_parquet_unreadable_row_and_missing_prompt(tmp_path):
    t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("original_prompt", pa.string()), ("original_image", t), ("edit_prompt", pa.string()),
                        ("edited_prompt", pa.string()), ("edited_image", t)])
    rows = [{"original_prompt": "a", "original_image": _struct(imageio.encode_jpeg(img(i))), "edit_prompt": p,
             "edited_prompt": "b", "edited_image": _struct(e)}
            for i, (p, e) in enumerate([("make it red", imageio.encode_png(img(99))), (None, imageio.encode_png(img(9))),
                                        ("add a hat", None), ("add snow", b"garbage bytes")])]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "data" / "train-00000-of-00002.parquet",
                   row_group_size=2)
    (tmp_path / "data" / "train-00001-of-00002.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ConfigError, match="train-00001-of-00002.parquet is not a readable parquet file"):
        IP2PSource({"parquet": str(tmp_path / "data")})  # bad file structure: one line before any work
    (tmp_path / "data" / "train-00001-of-00002.parquet").unlink()
    recs = rows_of(IP2PSource({"parquet": str(tmp_path / "data")}))
    assert len(recs) == 4
    out = ingest(recs)
    ok = out["train-00000-of-00002/0"]
    assert ok["keep"] and ok["instruction"] == "make it red"
    assert np.array_equal(imageio.decode(ok["tgt"]), img(99))
    assert out["train-00000-of-00002/1"]["drop_class"] == "instruction is missing"
    assert "unreadable parquet row: image cell is empty" in out["train-00000-of-00002/2"]["drop_reason"]
    assert "image is corrupt" in out["train-00000-of-00002/3"]["drop_reason"]
    with pytest.raises(ConfigError, match="no column 'edit'"):
        rows_of(IP2PSource({"parquet": str(tmp_path / "data" / "train-00000-of-00002.parquet"),
                         "instruction_column": "edit"}))


# -- MagicBrush ------------------------------------------------------------------------------------

def _rgba_mask(h, w, hole):
    bgra = np.full((h, w, 4), 255, np.uint8)
    bgra[hole] = (0, 0, 0, 0)
    return cv2.imencode(".png", bgra)[1].tobytes()


@pytest.mark.parametrize("names,struct", [(("source_img", "target_img"), True), (("input_img", "output_img"), False)])
def test_magicbrush_columns_sessions_and_mask(tmp_path, names, struct):
    h, w = 24, 32
    hole = np.zeros((h, w), bool)
    hole[5:10, 8:20] = True
    wrap = _struct if struct else (lambda b: b)
    rows = []
    for img_id, turn, instr in (("327726", 2, "put a hat on him"), ("327726", 1, "make the sky pink"),
                                ("242679", 1, "add a boat"), ("327726", 3, float("nan"))):
        rows.append({"img_id": img_id, "turn_index": turn, names[0]: wrap(imageio.encode_png(img(turn))),
                     "mask_img": wrap(_rgba_mask(h, w, hole)), "instruction": None if isinstance(instr, float) else instr,
                     names[1]: wrap(imageio.encode_png(img(turn + 1)))})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "dev.parquet")
    recs = rows_of(MagicBrushSource({"parquet": str(tmp_path / "dev.parquet")}))
    assert [r["meta"]["record_id"] for r in recs] == ["327726/2", "327726/1", "242679/1", "327726/3"]  # file order
    t2 = recs[0]["meta"]
    assert (t2["session"], t2["turn_index"], t2["session_turns"], t2["turn_position"]) == ("327726", 2, 3, 2)
    assert t2["previous_key"] == recs[1]["key"] and recs[1]["meta"]["previous_key"] is None
    out = ingest(recs)
    assert out["327726/3"]["drop_class"] == "instruction is missing"
    r = out["327726/2"]
    assert r["keep"] and r["instruction"] == "put a hat on him"
    assert np.array_equal(imageio.decode(r["src"]), img(2)) and np.array_equal(imageio.decode(r["tgt"]), img(3))
    m = imageio.decode_gray(r["mask"])
    assert m.shape == (h, w) and set(np.unique(m)) == {0, 255}
    assert np.array_equal(m > 0, hole)  # the transparent region is the edit


# -- GIER ------------------------------------------------------------------------------------------

GIER_TEXT = """[
 {"id": "g1", "input": "images/a_in.jpg", "output": "images/a_out.jpg", "request": "brighten the photo",
  "detailed_request": "increase the brightness", "operator": {"brightness": {"local": false, "val": 0.3}},
  "expert_summary": ["brightness up"], "amateur_summary": NaN},
 {"id": "g2", "input": "b_in.jpg", "output": "b_out.jpg", "request": NaN,
  "detailed_request": "remove the man on the left", "operator": {"inpaint_obj": NaN},
  "expert_summary": NaN, "amateur_summary": NaN},
 {"id": "g3", "input": "c_in.jpg", "output": "missing_out.jpg", "request": "", "detailed_request": NaN,
  "operator": NaN, "expert_summary": NaN, "amateur_summary": NaN}
]"""


def test_gier_bare_nan_tokens(tmp_path):
    for n in ("a_in", "a_out", "b_in", "b_out", "c_in"):
        jpg(tmp_path / "images" / f"{n}.jpg", len(n) * 20)
    (tmp_path / "GIER.json").write_text(GIER_TEXT)
    recs = by_id(rows_of(GIERSource({"annotations": str(tmp_path / "GIER.json")})))
    assert recs["g1"]["keep"] and recs["g1"]["instruction"] == "brighten the photo"
    assert recs["g1"]["meta"]["operator"] == {"brightness": {"local": False, "val": 0.3}}
    assert recs["g1"]["meta"]["summaries"] == {"expert_summary": ["brightness up"], "amateur_summary": None}
    assert recs["g2"]["drop_class"] == "instruction is NaN" and "field=request" in recs["g2"]["drop_reason"]
    g3 = [json.loads(d) for d in recs["g3"]["drop_detail"]]
    assert [(d["class"], d["field"]) for d in g3] == [("image file missing", "output"), ("instruction is empty", "request")]
    assert g3[0]["name"] == "missing_out.jpg"
    # meta is strict JSON on disk: no NaN survives
    for m in rows_to_table(list(recs.values())).column("meta").to_pylist():
        json.loads(m, parse_constant=lambda c: pytest.fail(f"{c} in meta"))
    fb = by_id(rows_of(GIERSource({"annotations": str(tmp_path / "GIER.json"), "fallback_fields": ["detailed_request"]})))
    assert fb["g2"]["keep"] and fb["g2"]["instruction"] == "remove the man on the left"
    out = ingest(list(recs.values()))
    assert out["g1"]["keep"] and np.array_equal(imageio.decode(out["g1"]["src"]).shape, (24, 32, 3))


# -- GQA-Inpaint -----------------------------------------------------------------------------------

def test_gqa_inpaint_scene_graph(tmp_path):
    jpg(tmp_path / "images" / "2354786.jpg", 10)
    jpg(tmp_path / "images_inpainted" / "2354786" / "3942.jpg", 60)
    mask = np.zeros((24, 32, 3), np.uint8)
    mask[4:12, 2:10] = 255
    (tmp_path / "masks" / "2354786").mkdir(parents=True)
    (tmp_path / "masks" / "2354786" / "3942.jpg").write_bytes(imageio.encode_jpeg(mask))
    scenes = {"2354786": {"width": 32, "height": 24, "objects": {
        "3942": {"name": "cup", "attributes": ["white"], "relations": [{"name": "to the left of", "object": "3950"}],
                 "bbox": [2, 4, 10, 12], "bidirected": True},
        "3950": {"name": "plate", "attributes": [], "relations": [], "bbox": [12, 4, 30, 20], "bidirected": False},
        "3951": {"name": "cup", "attributes": ["red"], "relations": [], "bbox": [20, 4, 30, 20], "bidirected": False}},
        "image_relative_positions": {"3942": "to the left", "3950": "to the right", "3951": "to the right"}}}
    (tmp_path / "train_scenes.json").write_text(json.dumps(scenes))
    src = GQAInpaintSource({"root": str(tmp_path)})
    rec, = src.records()
    assert src.stats["objects_not_inpainted"] == 2
    assert rec["meta"]["record_id"] == "i2354786-o3942"
    assert rec["instruction"] == "remove the white cup at the left of the plate"  # not unique: the relation is kept
    assert rec["meta"]["src_ref"]["path"].endswith("images/2354786.jpg")
    assert rec["meta"]["tgt_ref"]["path"].endswith("images_inpainted/2354786/3942.jpg")
    out, = run_stages_local([IngestEditStage({})], [rec])
    m = imageio.decode_gray(out["mask"])
    assert out["keep"] and m[8, 5] == 255 and m[20, 25] == 0
    add, = GQAInpaintSource({"root": str(tmp_path), "direction": "add"}).records()
    assert add["instruction"] == "add a white cup to the left of the plate"
    assert add["meta"]["src_ref"] == rec["meta"]["tgt_ref"]
    (tmp_path / "fixed.json").write_text(json.dumps({"i2354786-o3942": "Remove the cup"}))
    fixed, = GQAInpaintSource({"root": str(tmp_path), "instructions": "fixed.json"}).records()
    assert fixed["instruction"] == "Remove the cup"


# -- triplets --------------------------------------------------------------------------------------

def test_triplets_jsonl_paths_uris_bytes_and_bad_rows(tmp_path):
    a, b = jpg(tmp_path / "imgs" / "a.jpg", 10), jpg(tmp_path / "imgs" / "b.jpg", 200)
    data_uri = "data:image/png;base64," + base64.b64encode(imageio.encode_png(img(77))).decode()
    lines = [
        {"id": "r1", "before": "imgs/a.jpg", "after": f"file://{b}", "request": "make it brighter", "source_site": "ps"},
        {"id": "r2", "before": data_uri, "after": "imgs/b.jpg", "request": "darken"},
        {"id": "r3", "before": "https://example.com/x.jpg", "after": "imgs/b.jpg", "request": "x"},
        {"id": "r4", "before": "imgs/a.jpg", "after": "imgs/nope.jpg", "request": "y"},
        {"id": "r5", "before": "imgs/a.jpg", "after": "imgs/b.jpg", "request": math.nan},
    ]
    text = "".join(json.dumps(x) + "\n" for x in lines) + "{broken\n"
    (tmp_path / "t.jsonl").write_text(text)
    cfg = {"file": str(tmp_path / "t.jsonl"), "dataset": "photoshop", "source_column": "before", "target_column": "after",
           "instruction_column": "request", "id_column": "id"}
    recs = rows_of(TripletsSource(cfg))
    assert [r["dataset"] for r in recs] == ["photoshop"] * 6 and recs[0]["meta"]["columns"] == {"id": "r1", "source_site": "ps"}
    out = ingest(recs)
    assert out["r1"]["keep"] and out["r1"]["src"] == a.read_bytes() and out["r1"]["tgt"] == b.read_bytes()
    assert out["r2"]["keep"] and np.array_equal(imageio.decode(out["r2"]["src"]), img(77))
    assert out["r3"]["drop_class"] == "remote image URI (download the images first)"
    assert out["r4"]["drop_class"] == "image file missing" and "field=after" in out["r4"]["drop_reason"]
    assert out["r5"]["drop_class"] == "instruction is NaN"
    assert out["5"]["drop_class"] == "unreadable JSON line"


def test_triplets_csv_and_parquet(tmp_path):
    jpg(tmp_path / "a.jpg", 10)
    jpg(tmp_path / "b.jpg", 90)
    (tmp_path / "t.csv").write_text("source,target,instruction\na.jpg,b.jpg,add a moon\na.jpg,b.jpg,\n")
    out = ingest(rows_of(TripletsSource({"file": str(tmp_path / "t.csv")})))
    assert out["0"]["keep"] and out["0"]["instruction"] == "add a moon"
    assert out["1"]["drop_class"] == "instruction is empty"
    table = pa.table({"source": [imageio.encode_png(img(1)), imageio.encode_png(img(2))],
                      "target": [imageio.encode_png(img(3)), imageio.encode_png(img(4, 20, 20))],
                      "instruction": ["x", "y"]})
    pq.write_table(table, tmp_path / "t.parquet")
    out = ingest(rows_of(TripletsSource({"file": str(tmp_path / "t.parquet")})))
    assert out["0"]["keep"] and np.array_equal(imageio.decode(out["0"]["tgt"]), img(3))
    assert out["1"]["drop_class"] == "ingest_edit: size mismatch between source and target"  # sizes: details
    assert "source=32x24" in out["1"]["drop_reason"] and "target=20x20" in out["1"]["drop_reason"]
    fixed = ingest(rows_of(TripletsSource({"file": str(tmp_path / "t.parquet")})), mismatch="resize")
    assert fixed["1"]["keep"] and imageio.decode(fixed["1"]["tgt"]).shape == (24, 32, 3)
    with pytest.raises(ConfigError, match="source.task"):
        TripletsSource({"file": str(tmp_path / "t.csv"), "task": "paint"})


def test_ingest_resizes_and_reencodes(tmp_path):
    jpg(tmp_path / "a.jpg", 10, 100, 200)
    jpg(tmp_path / "b.jpg", 50, 100, 200)
    (tmp_path / "t.jsonl").write_text(json.dumps({"source": "a.jpg", "target": "b.jpg", "instruction": "  go  "}) + "\n")
    r, = run_stages_local([IngestEditStage({"max_side": 64, "format": "png"})],
                          rows_of(TripletsSource({"file": str(tmp_path / "t.jsonl")})))
    assert r["keep"] and r["instruction"] == "go"
    assert imageio.sniff_ext(r["src"]) == "png" and imageio.decode(r["src"]).shape == (32, 64, 3)
    assert r["meta"]["source_size"] == [200, 100] and r["meta"]["width"] == 64


# -- generated demo layouts ------------------------------------------------------------------------

@pytest.mark.parametrize("demo,make,bad", [
    (demo_ip2p, lambda d: IP2PSource({"root": str(d / "instructpix2pix/clip-filtered-dataset")}), 3),
    (demo_ip2p, lambda d: IP2PSource({"parquet": str(d / "instructpix2pix/data")}), 2),
    (demo_mb, lambda d: MagicBrushSource({"parquet": str(d / "magicbrush/data")}), 1),
    (demo_gier, lambda d: GIERSource({"annotations": str(d / "gier/GIER.json")}), 2),
    (demo_gqa, lambda d: GQAInpaintSource({"root": str(d / "gqa_inpaint")}), 0),
])
def test_demo_editing_layouts(tmp_path, demo, make, bad):
    demo.generate(tmp_path, 12, 0)
    out = run_stages_local([IngestEditStage({"min_scores": {"clip_sim_direction": 0.2}})], rows_of(make(tmp_path)))
    dropped = [r for r in out if not r["keep"]]
    assert len(dropped) == bad, [r["drop_reason"] for r in dropped]
    kept = [r for r in out if r["keep"]]
    assert len(kept) >= 2
    for r in kept:
        s, t = imageio.decode(r["src"]), imageio.decode(r["tgt"])
        assert s.shape == t.shape and np.abs(s.astype(int) - t).max() > 30 and r["instruction"]


def test_damaged_row_group_is_one_rejected_record_per_row_and_the_rest_is_read(tmp_path):
    rows = [{"img_id": f"s{i:02d}", "turn_index": 1, "source_img": imageio.encode_png(img(i)),
             "target_img": imageio.encode_png(img(i + 50)), "instruction": f"edit number {i} " * 10} for i in range(40)]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=10, compression="none")
    data = bytearray(path.read_bytes())
    off = pq.ParquetFile(path).metadata.row_group(2).column(4).data_page_offset  # the instruction column of rows 20-29
    data[off:off + 60] = b"\xff" * 60
    path.write_bytes(bytes(data))
    recs = rows_of(MagicBrushSource({"parquet": str(path)}))
    bad = [r for r in recs if not r["keep"]]
    assert len(recs) == 40 and len(bad) == 10  # every row of the file appears once
    assert {r["drop_class"] for r in bad} == {"unreadable parquet rows"}
    assert sorted(r["meta"]["parquet_row"] for r in bad) == list(range(20, 30))
    good = {r["meta"]["session"] for r in recs if r["keep"]}
    assert good == {f"s{i:02d}" for i in range(40) if not 20 <= i <= 29}
