"""An S3-compatible server (moto) on loopback for object-store tests; the AWS environment points at it."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Iterator

import pyarrow.fs as pafs

from instructdiffusion_data import storage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[dict]:
    """A running server with ``bucket`` created: ``{"fs": the engine's own filesystem, "env", "port"}``;
    the environment and the engine's filesystem cache are restored afterwards."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage._filesystem.cache_clear()
    try:
        admin = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="test",
                                  secret_key="test", region="us-east-1", allow_bucket_creation=True)
        admin.create_dir(bucket)  # creates the bucket
        yield {"fs": storage.resolve(f"s3://{bucket}")[0], "env": env, "port": port}
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        storage._filesystem.cache_clear()
