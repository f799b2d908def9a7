"""Fixtures every test reuses: a real local Ray, a real S3 endpoint (moto's server over HTTP) and
a factory of real H.264 clips with known ground truth. Nothing here reaches the network."""

from __future__ import annotations

import os
import socket
import sys
import uuid
from pathlib import Path

import pytest

# Never reach a model hub, never touch real AWS: set before anything imports transformers/boto3.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")
for _k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_k, None)

ROOT = Path(__file__).resolve().parents[1]
SHARED_MEDIA = ROOT.parent / "shared" / "media"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def shared_media() -> Path:
    """../shared/media (real third-party files); tests needing it skip when a fresh clone lacks it."""
    if not SHARED_MEDIA.is_dir():
        pytest.skip("../shared/media is absent (a fresh clone has no shared/): generated clips cover these paths")
    return SHARED_MEDIA


# ----------------------------------------------------------------------------- S3


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint: moto's HTTP server on 127.0.0.1 at a free port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from infra import storage

    storage.configure(endpoint=endpoint, region="us-east-1", retries=5, backoff_s=0.05)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh empty bucket on the test endpoint, as an s3:// URI."""
    import boto3

    name = f"rf-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


# ----------------------------------------------------------------------------- Ray


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """A real local Ray cluster with 2 CPUs; the S3 endpoint is in its workers' environment."""
    import ray

    from infra import storage

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": storage.storage_env()})
    yield ray
    ray.shutdown()


# ----------------------------------------------------------------------------- media


@pytest.fixture(scope="session")
def make_video(tmp_path_factory):
    """Factory: encode a real H.264 clip with known scenes; returns (path, ground truth dict)."""
    from infra.videogen import Scene, write_video

    root = tmp_path_factory.mktemp("videos")

    def _make(name: str, scenes: list, directory: Path | None = None, **kwargs):
        directory = directory or root
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        spec = [s if isinstance(s, Scene) else Scene(**s) for s in scenes]
        truth = write_video(str(path), spec, **kwargs)
        return path, truth

    return _make


@pytest.fixture
def cli_env() -> dict:
    """Environment for running `reelforge` in a subprocess with this interpreter's packages."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


# ----------------------------------------------------------------------------- S3 faults


class FaultProxy:
    """A TCP proxy in front of the S3 endpoint. Each of the next `fail_next` new connections gets
    its request answered with a 503 SlowDown (mode "503") or is dropped unanswered ("drop"); every
    other connection is piped to the real endpoint byte for byte."""

    _SLOWDOWN = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                 b"<Message>Please reduce your request rate.</Message></Error>")

    def __init__(self, upstream: str):
        import threading
        from urllib.parse import urlparse

        up = urlparse(upstream)
        self.upstream = (up.hostname, up.port)
        self.fail_next = 0
        self.mode = "503"
        self.connections = 0
        self.failed = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading

        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.fail_next > 0:
                self.fail_next -= 1
                self.failed += 1
                threading.Thread(target=self._fail, args=(conn,), daemon=True).start()
            else:
                threading.Thread(target=self._pipe_both, args=(conn,), daemon=True).start()

    def _fail(self, conn):
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            if self.mode == "503":
                conn.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                             + f"Content-Length: {len(self._SLOWDOWN)}\r\n\r\n".encode() + self._SLOWDOWN)
        except OSError:
            pass
        finally:
            conn.close()

    def _pipe_both(self, client):
        import threading

        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
            return

        def pipe(src, dst):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)

    def close(self):
        self._closed = True
        self._sock.close()


@pytest.fixture
def faulty_s3(s3_server):
    """A FaultProxy in front of the test endpoint, with infra.storage pointed at it for this test."""
    from infra import storage

    proxy = FaultProxy(s3_server)
    storage.configure(endpoint=proxy.endpoint, retries=5, backoff_s=0.01)
    yield proxy
    storage.configure(endpoint=s3_server, retries=5, backoff_s=0.05)
    proxy.close()
