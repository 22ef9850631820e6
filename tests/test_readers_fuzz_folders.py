"""Bad input is never a traceback (issue 14 items 5 and 7): the record structures of the SA-1B,
OpenImages, GoPro, REDS, SIDD, CLWD, InstructPix2Pix, MagicBrush, GIER, GQA-Inpaint and triplets
readers are fuzzed (wrong types, nulls, missing keys, NaN/Infinity, broken lines, missing files) and
read through the real reader, the way the engine reads it (``plan()`` + ``read(spec)`` for a
file-group source, ``records()`` for a record source). Each case asserts that no exception escapes,
that every input record appears exactly once among the rows (nothing silently lost), that a
dropped row names a reason class and its details, and that the rows are strict JSON (the sidecar
table can be written).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import random
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instructdiffusion_data import imageio
from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.schema import rows_to_table

from .helpers_readers import rows_of

SEEDS = range(int(__import__("os").environ.get("IDD_FUZZ_SEEDS", "6")))  # IDD_FUZZ_SEEDS=500 for a longer run
NAN, INF = float("nan"), float("inf")
# what a fuzzed field becomes: wrong types, nulls, NaN/Infinity, empty, odd numbers; DELETE removes the key
DELETE = object()
VALUES = [None, NAN, INF, -INF, "", "text", "nan", 0, -1, 1.5, 10**30, True, [], {}, [1, 2], {"a": NAN}, DELETE]


def _png(v=90, h=16, w=20):
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = v
    a[: h // 2, :, 1] = 200
    return imageio.encode_png(a)


def _jpg(path: Path, v=90, h=16, w=20):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 1] = v
    path.write_bytes(imageio.encode_jpeg(a))
    return path


def _mutate(rng: random.Random, doc: dict, keys: list[str]) -> str:
    """Replace (or delete) one of ``keys`` (dotted paths, ``a.b`` or ``a.0``) in ``doc``; returns the key."""
    key = rng.choice(keys)
    value = rng.choice(VALUES)
    value = value if value is DELETE else copy.deepcopy(value)  # never share a mutable value between fields
    *head, last = key.split(".")
    obj = doc
    for k in head:
        if isinstance(obj, list) and k.isdigit() and int(k) < len(obj):
            obj = obj[int(k)]
        elif isinstance(obj, dict):
            obj = obj.get(k)
        else:
            return key
        if not isinstance(obj, (dict, list)):
            return key
    if isinstance(obj, list) and not last.isdigit():
        return key
    if isinstance(obj, list):
        i = int(last)
        if i < len(obj):
            if value is DELETE:
                del obj[i]
            else:
                obj[i] = value
    elif value is DELETE:
        obj.pop(last, None)
    else:
        obj[last] = value
    return key


def _check_rows(rows: list[dict]) -> None:
    """Dropped rows carry a class and details naming the record; all rows are strict JSON."""
    for r in rows:
        if not r["keep"]:
            assert r["drop_class"] and r["drop_detail"], r
            first = json.loads(r["drop_detail"][0])
            assert first["class"] == r["drop_class"]
            assert "record" in first or r["drop_class"] == "input produced no records", first
            assert r["drop_class"] == r["drop_class"].strip() and "=" not in r["drop_class"]
    rows_to_table(rows)  # strict JSON meta: a NaN that reached meta would raise here


def _once(values, expected) -> None:
    c = Counter(values)
    assert sorted(c) == sorted(expected), (sorted(c), sorted(expected))
    assert all(n == 1 for n in c.values()), [k for k, n in c.items() if n > 1]


# -- SA-1B -----------------------------------------------------------------------------------------

SA1B_ANN_KEYS = ["id", "segmentation", "segmentation.size", "segmentation.size.0", "segmentation.counts", "bbox",
                 "bbox.0", "bbox.3", "area", "predicted_iou", "stability_score"]
SA1B_IMAGE_KEYS = ["image", "image.image_id", "image.width", "image.height", "image.file_name", "annotations"]


def _sa1b_doc(image_id: int, n: int) -> dict:
    from instructdiffusion_data.replace.regions import encode_rle

    h, w = 24, 32
    anns = []
    for i in range(n):
        m = np.zeros((h, w), np.uint8)
        m[2 + i:10 + i, 3:12 + 2 * i] = 1
        anns.append({"id": 100 * image_id + i, "segmentation": encode_rle(m), "area": int(m.sum()),
                     "bbox": [3.0, 2.0 + i, 9.0 + 2 * i, 8.0], "predicted_iou": 0.95, "stability_score": 0.96})
    return {"image": {"image_id": image_id, "width": w, "height": h, "file_name": f"sa_{image_id}.jpg"},
            "annotations": anns}


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_sa1b(tmp_path, seed):
    from instructdiffusion_data.readers.sa1b import SOURCE

    rng = random.Random(seed)
    folder = tmp_path / "sa_000000"
    expected: dict[str, int | None] = {}  # json stem -> annotations it holds (None: the document is broken)
    for image_id in range(1, 7):
        doc = _sa1b_doc(image_id, rng.randint(1, 4))
        stem = f"sa_{image_id}"
        kind = rng.random()
        if kind < 0.5:
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(doc["annotations"]))
                _mutate(rng, doc["annotations"][i], SA1B_ANN_KEYS)
            if rng.random() < 0.3:
                doc["annotations"].append(rng.choice([None, 5, "x", [], {"id": 1}]))
        elif kind < 0.75:
            _mutate(rng, doc, SA1B_IMAGE_KEYS)
        if rng.random() < 0.8:
            _jpg(folder / f"{stem}.jpg", h=24, w=32)
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps(doc)  # NaN / Infinity as bare tokens, as a damaged file would have them
        if rng.random() < 0.15:
            text = text[: rng.randrange(1, len(text))]  # truncated
        (folder / f"{stem}.json").write_text(text)
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        anns = parsed.get("annotations") if isinstance(parsed, dict) else None
        broken = not isinstance(anns, list)
        expected[stem] = None if broken else len(anns)
    _jpg(folder / "sa_99.jpg")  # an image without its json
    expected["sa_99"] = None
    src = SOURCE({"root": str(tmp_path), "select": {"min_area_frac": 0.0, "max_per_image": 2}})
    rows = rows_of(src, per_shard=3)
    _check_rows(rows)
    seen = Counter()
    for r in rows:
        m = r["meta"]
        stem = Path(m.get("annotation_file") or m["file"]).stem
        seen[(stem, m.get("annotation"))] += 1
        if not r["keep"]:
            assert "mask" not in (m.get("region") or {})  # no RLE on dropped rows
    # a broken document is one row named after the file; an image with no annotation is the engine's
    # "input produced no records" row (the item still appears)
    want = [(s, i) for s, n in expected.items() for i in ([None] if not n else range(n))]
    _once(list(seen.elements()), want)


# -- OpenImages ------------------------------------------------------------------------------------

OI_HEADER = ["MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax", "PredictedIoU",
             "Clicks"]
OI_BAD = ["", "nan", "inf", "-Infinity", "abc", "1e999", "../x", "-1", "0", "ÿ"]


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_openimages(tmp_path, seed):
    from instructdiffusion_data.readers.openimages import SOURCE

    rng = random.Random(seed)
    (tmp_path / "validation").mkdir()
    zips: dict[str, dict[str, bytes]] = {}
    lines = []
    for k in range(8):
        image_id = f"{rng.choice('0123456789abcdef')}{k:015x}"
        if rng.random() < 0.85:
            _jpg(tmp_path / "validation" / f"{image_id}.jpg", h=24, w=32)
        for b in range(rng.randint(1, 3)):
            box = f"{k:04x}{b:04x}"
            member = f"{image_id}_m0dog_{box}.png"
            m = np.zeros((12, 16), np.uint8)
            m[2:8, 3 + b:10 + b] = 255
            if rng.random() < 0.9:
                zips.setdefault(image_id[0], {})[member] = imageio.encode_png(m) if rng.random() < 0.9 else b"junk"
            row = [member, image_id, rng.choice(["/m/0dog", "/m/0dog", "/m/0cat", "/m/unknown"]), box,
                   "0.1", "0.5", "0.2", "0.6", "0.9", "0.1 0.2 1"]
            if rng.random() < 0.4:
                row[rng.randrange(len(row))] = rng.choice(OI_BAD)
            if rng.random() < 0.1:
                row = row[: rng.randrange(1, len(row))]  # a short line
            if rng.random() < 0.05:
                row = row + ["extra", "values"]
            lines.append(row)
    for h, members in zips.items():
        with zipfile.ZipFile(tmp_path / f"validation-masks-{h}.zip", "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
    if rng.random() < 0.3:
        (tmp_path / f"validation-masks-{lines[0][1][:1] if len(lines[0]) > 1 else '0'}.zip").write_bytes(b"not a zip")
    buf = io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(OI_HEADER)
    wr.writerows(lines)
    (tmp_path / "validation-annotations-object-segmentation.csv").write_text(buf.getvalue())
    (tmp_path / "class-descriptions-boxable.csv").write_text("/m/0dog,Dog\n/m/0cat,Cat\n")
    src = SOURCE({"root": str(tmp_path), "select": {"min_area_frac": 0.0}})
    rows = rows_of(src, per_shard=5)
    _check_rows(rows)
    per_line = [r["meta"]["csv_line"] for r in rows if r["drop_class"] != "input produced no records"]
    _once(per_line, range(2, len(lines) + 2))
    for r in rows:
        if not r["keep"]:
            assert "mask" not in (r["meta"].get("region") or {})


# -- enhancement pairs -----------------------------------------------------------------------------

def _scatter(rng, folders: dict[str, Path], stems: list[str], exts=(".png",)) -> set[str]:
    """Write each stem into a random non-empty subset of the role folders (plus noise); returns the
    stems written anywhere."""
    written = set()
    roles = list(folders)
    for s in stems:
        chosen = [r for r in roles if rng.random() < 0.75] or [rng.choice(roles)]
        for r in chosen:
            p = folders[r] / f"{s}{rng.choice(exts)}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(_png() if rng.random() < 0.9 else b"")  # an empty file is still a file of the pair
        written.add(s)
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
        (f / "notes.txt").write_text("not an image")
        (f / ".DS_Store").write_bytes(b"\0")
    return written


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_gopro_reds_sidd_clwd(tmp_path, seed):
    from instructdiffusion_data.readers.clwd import CLWDSource
    from instructdiffusion_data.readers.gopro import GoProSource
    from instructdiffusion_data.readers.reds import REDSSource
    from instructdiffusion_data.readers.sidd import SIDDSource

    rng = random.Random(seed)
    # GoPro: train/<seq>/{blur,sharp}
    g = tmp_path / "GOPRO_Large" / "train"
    want = set()
    for seq in ("GOPR0001_00_00", "GOPR0002_00_00"):
        stems = [f"{i:06d}" for i in range(rng.randint(1, 5))]
        want |= {f"train/{seq}/{s}" for s in _scatter(rng, {"b": g / seq / "blur", "s": g / seq / "sharp"}, stems)}
    (g / "GOPR0003_00_00").mkdir()  # an empty sequence
    rows = rows_of(GoProSource({"root": str(tmp_path)}), per_shard=2)
    _check_rows(rows)
    _once([r["meta"]["record_id"] for r in rows], want)
    # REDS: train/train_{blur,sharp}/<seq>
    r_root = tmp_path / "REDS"
    want = set()
    for seq in ("000", "001"):
        stems = [f"{i:08d}" for i in range(rng.randint(1, 5))]
        want |= {f"train/{seq}/{s}" for s in _scatter(rng, {"b": r_root / "train" / "train_blur" / seq,
                                                              "s": r_root / "train" / "train_sharp" / seq}, stems)}
    rows = rows_of(REDSSource({"root": str(r_root)}), per_shard=3)
    _check_rows(rows)
    _once([r["meta"]["record_id"] for r in rows], want)
    # SIDD: Data/<scene>/<n>_{NOISY,GT}_SRGB_<cap>
    scene = "0001_001_S6_00100_00060_3200_L"
    d = tmp_path / "SIDD" / "Data" / scene
    want = set()
    for n in range(rng.randint(1, 3)):
        for cap in ("010", "011"):
            kinds = [k for k in ("NOISY", "GT") if rng.random() < 0.75] or ["GT"]
            for k in kinds:
                _scatter(rng, {"x": d}, [f"{n + 1:04d}_{k}_SRGB_{cap}"], exts=(".PNG", ".png"))
            want.add(f"{scene}/{n + 1:04d}_SRGB_{cap}")
    (d / "0001_METADATA_RAW_010.MAT").write_bytes(b"x")
    rows = rows_of(SIDDSource({"root": str(tmp_path / "SIDD")}), per_shard=2)
    _check_rows(rows)
    _once([r["meta"]["record_id"] for r in rows], want)
    # CLWD: train/{Watermarked_image,Watermark_free_image,Mask}/<id>
    c = tmp_path / "CLWD" / "train"
    stems = [str(i) for i in range(1, rng.randint(2, 8))]
    written = _scatter(rng, {"w": c / "Watermarked_image", "f": c / "Watermark_free_image", "m": c / "Mask"}, stems,
                       exts=(".jpg", ".png"))
    rows = rows_of(CLWDSource({"root": str(tmp_path / "CLWD")}), per_shard=4)
    _check_rows(rows)
    _once([r["meta"]["record_id"] for r in rows], {f"train/{s}" for s in written})
    for r in rows:
        if r["keep"]:
            assert r["meta"]["file"] and r["meta"]["target_file"]
        else:
            assert r["drop_class"] == "missing pair half" and r["meta"]["missing"]


# -- InstructPix2Pix folders -----------------------------------------------------------------------

IP2P_META_KEYS = ["seed", "clip_sim_0", "clip_sim_1", "clip_sim_dir", "clip_sim_image", "p2p_threshold", "cfg_scale"]


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_instructpix2pix_folders(tmp_path, seed):
    from instructdiffusion_data.readers.instructpix2pix import IP2PSource

    rng = random.Random(seed)
    listing = []
    want = set()
    for p in range(5):
        name = f"{p:07d}"
        d = tmp_path / name
        seeds = [str(rng.randint(1, 10**6)) for _ in range(rng.randint(1, 3))]
        seeds = list(dict.fromkeys(seeds))
        lines = []
        for s in seeds:
            if rng.random() < 0.9:
                _jpg(d / f"{s}_0.jpg")
            if rng.random() < 0.9:
                _jpg(d / f"{s}_1.jpg")
            rec = {"seed": int(s), "p2p_threshold": 0.5, "cfg_scale": 7.5, "clip_sim_0": 0.3, "clip_sim_1": 0.3,
                   "clip_sim_dir": 0.3, "clip_sim_image": 0.9}
            if rng.random() < 0.5:
                _mutate(rng, rec, IP2P_META_KEYS)
            lines.append(json.dumps(rec))
            want.add(f"{name}/{s}")
        if rng.random() < 0.2:
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(["{broken", "[]", "null", '"x"']))
        if rng.random() < 0.9 and p != 4:
            d.mkdir(parents=True, exist_ok=True)
            (d / "metadata.jsonl").write_text("\n".join(lines) + "\n")
            prompt = {"input": "a", "edit": "make it b", "output": "b"}
            if rng.random() < 0.5:
                _mutate(rng, prompt, ["input", "edit", "output"])
            text = json.dumps(prompt) if rng.random() < 0.85 else rng.choice(["{oops", "[1, 2]", "", "null"])
            (d / "prompt.json").write_text(text)
        listing.append([name, seeds])
    (tmp_path / "seeds.json").write_text(json.dumps(listing))
    rows = rows_of(IP2PSource({"root": str(tmp_path)}), per_shard=2)
    _check_rows(rows)
    _once([r["meta"]["record_id"] for r in rows], want)
    for r in rows:
        scores = r["meta"].get("scores") or {}
        assert all(math.isfinite(v) for v in scores.values())
    # the seeds.json listing itself is the index: a malformed one is one config line
    (tmp_path / "seeds.json").write_text(json.dumps([["0000000", "not a list"]]))
    with pytest.raises(ConfigError, match="seeds.json: entry 0"):
        IP2PSource({"root": str(tmp_path)}).plan(None, 1)


# -- parquet-backed: InstructPix2Pix parquet, MagicBrush ---------------------------------------------

def _fuzz_column(rng, values: list, kinds: list):
    return [rng.choice(kinds) if rng.random() < 0.35 else v for v in values]


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_parquet_sets(tmp_path, seed):
    from instructdiffusion_data.readers.instructpix2pix import IP2PSource
    from instructdiffusion_data.readers.magicbrush import MagicBrushSource

    rng = random.Random(seed)
    n = 12
    img = {"bytes": _png(), "path": None}
    st = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    ip2p = pa.table({
        "original_prompt": pa.array(_fuzz_column(rng, ["a"] * n, [None, ""]), pa.string()),
        "original_image": pa.array([img] * n, st),
        "edit_prompt": pa.array(_fuzz_column(rng, [f"edit {i}" for i in range(n)], [None, "", "nan", "  "]), pa.string()),
        "edited_prompt": pa.array(["b"] * n, pa.string()),
        "edited_image": pa.array(_fuzz_column(rng, [img] * n, [None]), st),
        "clip_sim_dir": pa.array(_fuzz_column(rng, [0.3] * n, [None, NAN, INF, -INF]), pa.float64()),
    })
    pq.write_table(ip2p, tmp_path / "ip2p.parquet", row_group_size=5)
    rows = rows_of(IP2PSource({"parquet": str(tmp_path / "ip2p.parquet")}))
    _check_rows(rows)
    _once([r["meta"]["parquet_row"] for r in rows], range(n))
    mb = pa.table({
        "img_id": pa.array(_fuzz_column(rng, [str(100 + i // 2) for i in range(n)], [None, "", "1/2", "100"]), pa.string()),
        "turn_index": pa.array(_fuzz_column(rng, [float(1 + i % 2) for i in range(n)], [None, NAN, INF, 1.5, -1.0]),
                               pa.float64()),
        "source_img": pa.array([img] * n, st),
        "mask_img": pa.array(_fuzz_column(rng, [img] * n, [None]), st),
        "instruction": pa.array(_fuzz_column(rng, ["do it"] * n, [None, "", "NaN"]), pa.string()),
        "target_img": pa.array([img] * n, st),
    })
    pq.write_table(mb, tmp_path / "mb.parquet", row_group_size=4)
    rows = rows_of(MagicBrushSource({"parquet": str(tmp_path / "mb.parquet")}))
    _check_rows(rows)
    _once([r["meta"]["parquet_row"] for r in rows], range(n))
    assert len({r["key"] for r in rows}) == n  # repeated (session, turn) pairs get distinct keys
    # a file that is not parquet, or lacks the columns: one config line before any work
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(ConfigError, match="bad.parquet is not a readable parquet file"):
        MagicBrushSource({"parquet": str(tmp_path / "bad.parquet")})
    with pytest.raises(ConfigError, match="expected columns img_id"):
        MagicBrushSource({"parquet": str(tmp_path / "ip2p.parquet")})


# -- GIER ------------------------------------------------------------------------------------------

GIER_KEYS = ["id", "input", "output", "request", "detailed_request", "operator", "expert_summary", "amateur_summary"]


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_gier(tmp_path, seed):
    from instructdiffusion_data.readers.gier import GIERSource

    rng = random.Random(seed)
    entries = []
    for i in range(10):
        _jpg(tmp_path / "images" / f"{i}_in.jpg")
        _jpg(tmp_path / "images" / f"{i}_out.jpg")
        ent = {"id": f"g{i}" if rng.random() < 0.8 else "g0", "input": f"{i}_in.jpg", "output": f"{i}_out.jpg",
               "request": "brighten it", "detailed_request": "more light", "operator": {"brightness": {"val": 0.3}},
               "expert_summary": ["x"], "amateur_summary": NAN}
        for _ in range(rng.randint(0, 3)):
            _mutate(rng, ent, GIER_KEYS + ["operator.brightness"])
        entries.append(ent if rng.random() < 0.9 else rng.choice([None, 3, "entry", [1]]))
    (tmp_path / "GIER.json").write_text(json.dumps(entries))
    rows = rows_of(GIERSource({"annotations": str(tmp_path / "GIER.json"), "fallback_fields": ["detailed_request"]}))
    _check_rows(rows)
    _once([r["meta"]["entry"] for r in rows], range(len(entries)))
    assert len({r["key"] for r in rows}) == len(entries)
    (tmp_path / "bad.json").write_text('{"data": 5}')
    with pytest.raises(ConfigError, match="expected a list of entries"):
        rows_of(GIERSource({"annotations": str(tmp_path / "bad.json")}))


# -- GQA-Inpaint -----------------------------------------------------------------------------------

GQA_OBJ_KEYS = ["name", "attributes", "relations", "relations.0", "relations.0.object", "bbox", "bbox.1", "bidirected"]


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_gqa_inpaint(tmp_path, seed):
    from instructdiffusion_data.readers.gqa_inpaint import GQAInpaintSource

    rng = random.Random(seed)
    scenes = {}
    want = set()
    for k in range(5):
        image_id = str(2300000 + k)
        _jpg(tmp_path / "images" / f"{image_id}.jpg")
        objects = {}
        for j in range(3):
            oid = str(1000 + j)
            obj = {"name": "cup", "attributes": ["white"], "relations": [{"name": "to the left of", "object": "1001"}],
                   "bbox": [1, 2, 10, 12], "bidirected": j != 2}
            if rng.random() < 0.3:
                _mutate(rng, obj, GQA_OBJ_KEYS)
            if rng.random() < 0.8:
                _jpg(tmp_path / "images_inpainted" / image_id / f"{oid}.jpg")
            objects[oid] = obj if rng.random() < 0.95 else rng.choice([None, "x", 4])
        scene = {"width": 20, "height": 16, "objects": objects, "image_relative_positions": {"1000": "to the left"}}
        if rng.random() < 0.3:
            _mutate(rng, scene, ["width", "height", "objects", "image_relative_positions"])
        scenes[image_id] = scene if rng.random() < 0.9 else rng.choice([None, [], "scene"])
        sc = scenes[image_id]
        if not isinstance(sc, dict) or not isinstance(sc.get("objects"), dict):
            want.add(f"i{image_id}")
            continue
        for oid, obj in sc["objects"].items():
            if not isinstance(obj, dict) or (obj.get("bidirected") is not None and obj.get("bidirected") is not False):
                want.add(f"i{image_id}-o{oid}")
    (tmp_path / "train_scenes.json").write_text(json.dumps(scenes))
    rows = rows_of(GQAInpaintSource({"root": str(tmp_path)}))
    _check_rows(rows)
    _once([r["meta"]["record_id"] for r in rows], want)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="source.scenes"):
        rows_of(GQAInpaintSource({"root": str(tmp_path), "scenes": "list.json"}))


# -- triplets --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_fuzz_triplets(tmp_path, seed, fmt):
    from instructdiffusion_data.readers.triplets import TripletsSource

    rng = random.Random(seed)
    _jpg(tmp_path / "a.jpg")
    _jpg(tmp_path / "b.jpg")
    recs = []
    for i in range(10):
        rec = {"id": f"r{i}" if rng.random() < 0.85 else "r0", "source": "a.jpg", "target": "b.jpg",
               "instruction": "do it", "note": "x"}
        if rng.random() < 0.5:
            _mutate(rng, rec, ["id", "source", "target", "instruction", "note"])
        recs.append(rec)
    path = tmp_path / f"t.{fmt}"
    if fmt == "jsonl":
        lines = [json.dumps(r) for r in recs]
        for j in range(len(lines)):
            if rng.random() < 0.15:
                lines[j] = rng.choice(["{broken", "[1]", "7", "null"])
        path.write_text("\n".join(lines) + "\n")
        n = len(lines)
    elif fmt == "csv":
        buf = io.StringIO()
        wr = csv.writer(buf)
        wr.writerow(["id", "source", "target", "instruction", "note"])
        for r in recs:
            row = [r.get(k) for k in ("id", "source", "target", "instruction", "note")]
            if rng.random() < 0.15:
                row = row[: rng.randrange(1, 5)] if rng.random() < 0.5 else row + ["extra"]
            wr.writerow(row)
        path.write_text(buf.getvalue())
        n = len(recs)
    else:
        path.write_text(json.dumps([r if rng.random() < 0.9 else rng.choice([None, 1, "x"]) for r in recs]))
        n = len(recs)
    rows = rows_of(TripletsSource({"file": str(path), "id_column": "id"}))
    _check_rows(rows)
    _once([r["meta"]["row_number"] for r in rows], range(n))
    assert len({r["key"] for r in rows}) == n


# -- through the engine ----------------------------------------------------------------------------

def test_fuzzed_inputs_through_idd_run(tmp_path):
    """A tiny config per reader family through ``runner.run`` (no Ray): no failed shard, and every
    record is a row of the output (kept or rejected)."""
    from instructdiffusion_data.config import load_pipeline_config
    from instructdiffusion_data.runner import run

    rng = random.Random(0)
    g = tmp_path / "GOPRO_Large" / "train"
    want = {f"train/S/{s}" for s in _scatter(rng, {"b": g / "S" / "blur", "s": g / "S" / "sharp"},
                                                   [f"{i:06d}" for i in range(7)])}
    entries = []
    for i in range(6):
        _jpg(tmp_path / "images" / f"{i}_in.jpg")
        _jpg(tmp_path / "images" / f"{i}_out.jpg")
        entries.append({"id": f"g{i}", "input": f"{i}_in.jpg", "output": f"{i}_out.jpg",
                        "request": [NAN, None, 5, "", "add a hat", "add a cat"][i], "operator": {"x": INF}})
    entries.append("not an entry")
    (tmp_path / "GIER.json").write_text(json.dumps(entries))
    cases = [
        ({"name": "fz_gopro", "source": {"type": "gopro", "root": str(tmp_path)},
          "stages": [{"type": "enhance_pair", "crop_size": 8}], "writer": {"out": str(tmp_path / "out"),
                                                                           "records_per_shard": 3}}, len(want)),
        ({"name": "fz_gier", "source": {"type": "gier", "annotations": str(tmp_path / "GIER.json")},
          "stages": [{"type": "ingest_edit"}], "writer": {"out": str(tmp_path / "out"), "records_per_shard": 2}},
         len(entries)),
    ]
    import yaml

    for raw, n in cases:
        f = tmp_path / f"{raw['name']}.yaml"
        f.write_text(yaml.safe_dump(raw))
        summary = run(load_pipeline_config(f), use_ray=False)
        assert not summary.failed, summary.failed
        splits = summary.manifest["splits"]
        assert splits["train"]["rows"] + splits["rejected"]["rows"] == n, splits
