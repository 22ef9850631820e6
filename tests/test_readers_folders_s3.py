"""The file-group readers list and read their inputs through storage: the same demo folders on an
S3-compatible server (moto on loopback) give the same records as on the local disk (ids, verdicts,
reason classes), with URIs in place of paths."""

from __future__ import annotations

from pathlib import Path

import pytest


from .helpers_readers import rows_of
from .helpers_s3 import moto_s3

BUCKET = "idd-readers"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from instructdiffusion_data.demo import generate_all

    with moto_s3(BUCKET) as server:
        local = tmp_path_factory.mktemp("demo")
        generate_all(local, n=8, seed=0, only=["gopro", "sidd", "clwd", "sa1b", "instructpix2pix"])
        for p in local.rglob("*"):
            if p.is_file():
                with server["fs"].open_output_stream(f"{BUCKET}/{p.relative_to(local).as_posix()}") as fh:
                    fh.write(p.read_bytes())
        yield local


def _verdicts(rows):
    return [(r["meta"]["record_id"], r["keep"], r["drop_class"]) for r in rows]


@pytest.mark.parametrize("make,sub", [
    ("gopro", "gopro/GOPRO_Large"), ("sidd", "sidd/SIDD_Medium_Srgb"), ("clwd", "clwd"), ("sa1b", "sa1b"),
    ("instructpix2pix", "instructpix2pix/clip-filtered-dataset"),
])
def test_folder_readers_on_s3_equal_local(s3, make, sub):
    from instructdiffusion_data.stage import make_source

    local = rows_of(make_source({"type": make, "root": str(Path(s3) / sub)}, 0))
    remote = rows_of(make_source({"type": make, "root": f"s3://{BUCKET}/{sub}"}, 0))
    assert _verdicts(remote) == _verdicts(local) and len(local) >= 3
    files = [r["meta"].get("file") for r in remote if r["keep"]]
    assert files and all(f.startswith(f"s3://{BUCKET}/{sub}/") for f in files)
