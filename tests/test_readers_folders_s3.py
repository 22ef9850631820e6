"""The file-group readers list and read their inputs through storage: the same demo folders on an
S3-compatible server (moto on loopback) give the same records as on the local disk (ids, verdicts,
reason classes), with URIs in place of paths."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from instructdiffusion_data import storage

from .helpers_readers import rows_of

BUCKET = "idd-readers"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from moto.server import ThreadedMotoServer

    from instructdiffusion_data.demo import generate_all

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage._filesystem.cache_clear()
    admin = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="test",
                              secret_key="test", region="us-east-1", allow_bucket_creation=True)
    admin.create_dir(BUCKET)
    local = tmp_path_factory.mktemp("demo")
    generate_all(local, n=8, seed=0, only=["gopro", "sidd", "clwd", "sa1b", "instructpix2pix"])
    fs = storage.resolve(f"s3://{BUCKET}")[0]
    for p in local.rglob("*"):
        if p.is_file():
            with fs.open_output_stream(f"{BUCKET}/{p.relative_to(local).as_posix()}") as fh:
                fh.write(p.read_bytes())
    yield local
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    storage._filesystem.cache_clear()


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
