"""Issue 14 item 6: a pixel limit read from the image header before any decode.

A JPEG whose header says 30000 x 30000 used to cost 2.6 GB and seconds per decode, in the pipeline and
per auditor thumbnail request. Now every decode entry point of ``imageio`` refuses it from the header
(``imageio.ImageTooLarge``, a RecordError: the row goes to rejected/ with the reason ``image too large``), and
the auditor answers an error tile that is cached.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from instructdiffusion_data import imageio
from instructdiffusion_data.errors import ConfigError, RecordError
from instructdiffusion_data.imageio import decode, decode_gray, encode_jpeg, encode_png
from instructdiffusion_data.schema import make_key, new_row
from instructdiffusion_data.stage import Source, SourceConfig, Stage, StageConfig, child


def small_rgb(h: int = 100, w: int = 200) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)


def huge_jpeg(width: int = 30000, height: int = 30000) -> bytes:
    """A small real JPEG whose SOF header claims ``width`` x ``height`` (what a hostile file looks like)."""
    b = bytearray(encode_jpeg(small_rgb()))
    i = b.find(b"\xff\xc0")
    assert i > 0
    b[i + 5:i + 7] = height.to_bytes(2, "big")
    b[i + 7:i + 9] = width.to_bytes(2, "big")
    return bytes(b)


def huge_png(width: int = 30000, height: int = 30000) -> bytes:
    b = bytearray(encode_png(small_rgb()[..., 0]))
    b[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return bytes(b)


@pytest.fixture(autouse=True)
def _no_env_limit(monkeypatch):
    monkeypatch.delenv("IDD_MAX_PIXELS", raising=False)


def test_size_comes_from_the_header_for_jpeg_png_webp():
    rgb = small_rgb()
    webp = cv2.imencode(".webp", rgb)[1].tobytes()
    for data in (encode_jpeg(rgb), encode_png(rgb), webp):
        assert imageio.image_size(data) == (200, 100)
    assert imageio.image_size(huge_jpeg(30000, 20000)) == (30000, 20000)
    assert imageio.image_size(huge_png(30000, 20000)) == (30000, 20000)
    assert imageio.image_size(b"not an image") is None


@pytest.mark.parametrize("make", [huge_jpeg, huge_png], ids=["jpeg", "png"])
def test_huge_header_is_refused_before_decoding(make):
    data = make()
    for fn in (decode, decode_gray, getattr(imageio, "decode_unchanged", decode),
               getattr(imageio, "check_pixels", decode)):
        t0 = time.perf_counter()
        with pytest.raises(RecordError) as err:
            fn(data, file="big.jpg", record="7")
        assert time.perf_counter() - t0 < 0.5  # no 2.6 GB allocation, no 8 s decode
        e = err.value
        assert isinstance(e, imageio.ImageTooLarge) and e.reason == "image too large"
        assert (e.width, e.height, e.limit) == (30000, 30000, imageio.MAX_PIXELS)
        msg = str(e)
        assert "30000x30000" in msg and str(imageio.MAX_PIXELS) in msg and "file=big.jpg" in msg
        assert "record=7" in msg


def test_limit_from_env_and_argument_and_pil_follows(monkeypatch):
    jpg, png = encode_jpeg(small_rgb()), encode_png(small_rgb())
    assert decode(jpg).shape == (100, 200, 3)  # 20 000 pixels: fine under the default
    monkeypatch.setenv("IDD_MAX_PIXELS", "10000")
    for data in (jpg, png):
        with pytest.raises(imageio.ImageTooLarge, match=r"200x100 = 20000 pixels > limit 10000"):
            decode(data)
    with pytest.raises(imageio.ImageTooLarge):
        decode_gray(png)
    assert Image.MAX_IMAGE_PIXELS == 10000  # PIL's own limit is the same one
    assert decode(jpg, max_pixels=20000).shape == (100, 200, 3)  # the argument wins over the variable
    with pytest.raises(imageio.ImageTooLarge):
        decode(jpg, max_pixels=19999)
    monkeypatch.setenv("IDD_MAX_PIXELS", "150x100")
    with pytest.raises(imageio.ImageTooLarge, match="limit 15000"):
        decode(jpg)
    monkeypatch.setenv("IDD_MAX_PIXELS", "0")  # 0 disables
    assert decode(jpg).shape == (100, 200, 3)
    assert imageio.pixel_limit() is None and Image.MAX_IMAGE_PIXELS is None
    monkeypatch.setenv("IDD_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="IDD_MAX_PIXELS"):
        decode(jpg)
    monkeypatch.delenv("IDD_MAX_PIXELS")
    assert imageio.pixel_limit() == imageio.MAX_PIXELS == 8000 * 8000
    assert Image.MAX_IMAGE_PIXELS == imageio.MAX_PIXELS


def test_formats_without_a_readable_header_are_checked_after_decoding(monkeypatch):
    bmp = cv2.imencode(".bmp", small_rgb())[1].tobytes()
    monkeypatch.setattr(imageio, "_header_size", lambda data: None)  # as if the header were unreadable
    with pytest.raises(imageio.ImageTooLarge):
        decode(bmp, max_pixels=100)
    assert decode(bmp).shape == (100, 200, 3)


# -- in a pipeline: the row lands in rejected/ with the reason ------------------------------------------
@dataclass
class HugeConfig(SourceConfig):
    n: int = 3


class HugeSource(Source):
    name = "huge"
    Config = HugeConfig

    def records(self):
        for i in range(self.config.n):
            data = huge_jpeg() if i == 1 else encode_jpeg(small_rgb())
            yield new_row(key=make_key("huge", i, "rec"), task="edit", dataset="huge", src=data,
                          meta={"record_id": i, "file": f"/data/{i}.jpg"})


@dataclass
class DecodeConfig(StageConfig):
    pass


class DecodeStage(Stage):
    name = "decode"
    Config = DecodeConfig

    def process(self, rows):
        out = []
        for r in rows:
            rgb = decode(r["src"], file=r["meta"]["file"], record=str(r["meta"]["record_id"]))
            out.append(child(r, key=r["key"], tgt=encode_jpeg(255 - rgb), instruction="invert"))
        return out


def test_pipeline_rejects_the_huge_image_with_its_reason(tmp_path):
    from instructdiffusion_data.config import PipelineConfig, build
    from instructdiffusion_data.runner import run

    cfg = build(PipelineConfig, {
        "name": "huge",
        "source": {"type": f"{__name__}:HugeSource", "n": 3},
        "stages": [{"type": f"{__name__}:DecodeStage", "batch_size": 4}],
        "writer": {"records_per_shard": 10},
    })
    t0 = time.perf_counter()
    run(cfg, out=str(tmp_path), use_ray=False)
    assert time.perf_counter() - t0 < 30
    root = tmp_path / "huge" / "v1"
    rejected = [r for p in sorted((root / "rejected").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(rejected) == 1
    row = rejected[0]
    assert row["drop_reason"].startswith("decode: image too large") and "file=/data/1.jpg" in row["drop_reason"]
    assert row["drop_class"] == "decode: image too large"
    detail = json.loads(row["drop_detail"][0])
    assert (detail["width"], detail["height"], detail["max_pixels"]) == (30000, 30000, 64000000)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["splits"]["train"]["rows"] == 2
    assert manifest["splits"]["rejected"]["drop_reasons"] == {"decode: image too large": 1}


# -- the auditor: an error tile, cached --------------------------------------------------------------------
def _write(root, rows):
    from instructdiffusion_data.writer import ShardWriter

    w = ShardWriter(root / "big" / "v1")
    w.write_shard(0, rows)
    w.write_manifest(config={"name": "big"}, extra={"name": "big", "version": "v1", "mixture_weight": 1.0})


def test_auditor_answers_a_cached_error_tile_for_a_too_large_image(tmp_path, monkeypatch):
    from instructdiffusion_data.audit import images
    from instructdiffusion_data.audit.app import create_app

    root = tmp_path / "root"
    big = new_row(key=make_key("big", 0, "x"), task="edit", dataset="big", src=huge_jpeg(),
                  tgt=encode_jpeg(small_rgb()), mask=huge_png(), instruction="x", meta={"record_id": 0})
    _write(root, [big])
    app = create_app(root, cache_dir=tmp_path / "cache", refresh_s=0)
    c = TestClient(app)
    rows = c.get("/api/samples", params={"output": "big/v1"}).json()["rows"]
    assert [r["key"] for r in rows] == [big["key"]]

    calls = []
    real = images.make_thumbnail
    monkeypatch.setattr(images, "make_thumbnail", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    q = {"output": "big/v1", "split": "train", "key": big["key"]}
    for kind, style in (("src", "image"), ("mask", "image"), ("mask", "overlay")):
        for attempt in range(3):
            t0 = time.perf_counter()
            res = c.get("/api/image", params={**q, "kind": kind, "thumb": 1, "style": style})
            assert time.perf_counter() - t0 < 1.0
            assert res.status_code == 200 and res.headers["content-type"] == "image/png"
            assert "too large" in res.headers["x-audit-error"] and "30000x30000" in res.headers["x-audit-error"]
            assert decode(res.content).shape == (160, 160, 3)  # the small error tile
    assert len(calls) == 3  # one decode attempt per thumbnail kind, the repeats come from the cache
    # full size: the same tile, never a 2.6 GB decode
    res = c.get("/api/image", params={**q, "kind": "src"})
    assert res.status_code == 200 and "too large" in res.headers["x-audit-error"]
    # a restarted server finds the verdict in the cache folder: still nothing decoded
    c2 = TestClient(create_app(root, cache_dir=tmp_path / "cache", refresh_s=0))
    res = c2.get("/api/image", params={**q, "kind": "src", "thumb": 1})
    assert "too large" in res.headers["x-audit-error"] and len(calls) == 3
    ok = c.get("/api/image", params={**q, "kind": "tgt", "thumb": 1})
    assert ok.status_code == 200 and "x-audit-error" not in ok.headers and ok.headers["content-type"] == "image/jpeg"


def test_auditor_caches_a_corrupt_thumbnail_too(tmp_path, monkeypatch):
    from instructdiffusion_data.audit import images
    from instructdiffusion_data.audit.app import create_app

    root = tmp_path / "root"
    real = images.make_thumbnail
    bad = bytearray(encode_jpeg(small_rgb()))
    bad[200:-2] = b"\x00" * (len(bad) - 202)
    row = new_row(key=make_key("big", 1, "x"), task="edit", dataset="big", src=bytes(bad),
                  tgt=encode_jpeg(small_rgb()), instruction="x", meta={"record_id": 1})
    _write(root, [row])
    for cache in (tmp_path / "cache", None):  # on disk, and in memory when the server runs without a cache
        app = create_app(root, cache_dir=cache, use_cache=cache is not None, refresh_s=0)
        c = TestClient(app)
        calls = []
        monkeypatch.setattr(images, "make_thumbnail", lambda *a, **k: calls.append(1) or real(*a, **k))
        q = {"output": "big/v1", "split": "train", "key": row["key"], "kind": "src", "thumb": 1}
        for _ in range(3):
            res = c.get("/api/image", params=q)
            assert res.status_code == 200 and "x-audit-error" in res.headers
        assert len(calls) == 1
