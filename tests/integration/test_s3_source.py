"""s3:// origins against a real S3-compatible server on loopback: moto's server (with its
signature checks on), a real nats-server, daemons in this loop and as child processes."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import boto3  # type: ignore[import-untyped]  # boto3 ships no type hints
import msgspec
import pytest
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from damselfly.events.tasks import PieceFinished, singles
from damselfly.services.peer.get import ApiClient
from damselfly.services.peer.origins import Sources
from damselfly.services.peer.request import DownloadRequest
from damselfly.services.peer.s3 import S3Source, s3_config
from damselfly.services.peer.sources import SourceError
from damselfly.services.runtime.natsconn import connect
from damselfly.services.runtime.procs import DAMSELFLY
from tests.support.swarm import Swarm, origin_daemon, read_events

pytestmark = pytest.mark.anyio
BUCKET = "models"
KEY = "llama/weights 00.safetensors"  # a space: the key is percent-encoded and signed so
PUBLIC = "public/readme.bin"
PIECE = 64 << 10
SIZE = 6 * PIECE + 4321


class _CountingApp:
    """Moto's WSGI app, counting the body bytes it answers object GETs with."""

    def __init__(self) -> None:
        self._app = DomainDispatcherApplication(create_backend_app)
        self.object_bytes = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        counted = environ["REQUEST_METHOD"] == "GET" and environ["PATH_INFO"].startswith(
            f"/{BUCKET}/")
        for chunk in self._app(environ, start_response):
            if counted:
                with self._lock:
                    self.object_bytes += len(chunk)
            yield chunk


@dataclass
class S3Server:
    endpoint: str
    app: _CountingApp
    key_id: str
    secret: str
    body: bytes

    def env(self, **overrides: str) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_REGION": "eu-central-1",
                **overrides}

    def check_signatures(self, on: bool) -> None:
        """Moto checks keys and signatures of every request once asked to."""
        urllib.request.urlopen(urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth", data=b"0" if on else b"inf",
            headers={"Content-Type": "text/plain"}), timeout=10).read()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    app = _CountingApp()
    server = make_server("127.0.0.1", 0, app, threaded=True,
                         request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    setup = {"endpoint_url": endpoint, "region_name": "eu-central-1",
             "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    iam, client = boto3.client("iam", **setup), boto3.client("s3", **setup)
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    keys = iam.create_access_key(UserName="reader")["AccessKey"]
    client.create_bucket(Bucket=BUCKET,
                         CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    body = os.urandom(SIZE)
    client.put_object(Bucket=BUCKET, Key=KEY, Body=body)
    client.put_object(Bucket=BUCKET, Key=PUBLIC, Body=body[:PIECE], ACL="public-read")
    s3 = S3Server(endpoint, app, keys["AccessKeyId"], keys["SecretAccessKey"], body)
    s3.check_signatures(True)
    try:
        yield s3
    finally:
        s3.check_signatures(False)
        server.shutdown()
        thread.join()


def url(key: str = KEY) -> str:
    return f"s3://{BUCKET}/{key}"


def read_all(source: S3Source, start: int = 0, end: int = -1, key: str = KEY
             ) -> tuple[int, int, bytes]:
    stream = source.open(url(key), {}, start, end)
    try:
        buf, out = memoryview(bytearray(1 << 16)), bytearray()
        while n := stream.readinto(buf):
            out += buf[:n]
        return stream.total_length, stream.start, bytes(out)
    finally:
        stream.close()


def test_signed_range_reads(s3: S3Server) -> None:
    source = S3Source(s3_config(s3.env()))
    assert read_all(source) == (SIZE, 0, s3.body)
    assert read_all(source, PIECE, 2 * PIECE + 7) == (SIZE, PIECE, s3.body[PIECE:2 * PIECE + 7])


def test_credential_errors_are_one_line_and_final(s3: S3Server) -> None:
    cases = {"SignatureDoesNotMatch": s3.env(AWS_SECRET_ACCESS_KEY="not-the-secret"),
             "InvalidAccessKeyId": s3.env(AWS_ACCESS_KEY_ID="AKIANOBODY")}
    for code, env in cases.items():
        with pytest.raises(SourceError) as caught:
            read_all(S3Source(s3_config(env)))
        assert str(caught.value) == f"{url()}: {code} (403)"
        assert not caught.value.transient


def test_anonymous_when_the_daemon_has_no_keys(s3: S3Server) -> None:
    anonymous = S3Source(s3_config({"AWS_ENDPOINT_URL": s3.endpoint}))
    s3.check_signatures(False)  # moto's checks answer 500 to a request without a signature
    try:
        assert read_all(anonymous, key=PUBLIC) == (PIECE, 0, s3.body[:PIECE])
        with pytest.raises(SourceError) as caught:
            read_all(anonymous)
    finally:
        s3.check_signatures(True)
    assert str(caught.value) == f"{url()}: Forbidden (403)"  # moto sends no XML for this one
    assert not caught.value.transient


def test_one_key_without_the_other_stops_the_daemon_at_start() -> None:
    with pytest.raises(ValueError, match="set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        Sources.default(environ={"AWS_ACCESS_KEY_ID": "AKIA"})


async def get(*args: str) -> tuple[int, str]:
    result = await anyio.run_process([*DAMSELFLY, "get",
                                      "--no-progress", *args], check=False)
    return result.returncode, result.stderr.decode()


async def test_damselfly_get_through_the_daemon(
        tmp_path: Path, nats_url: str, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.bin"
    async with origin_daemon(tmp_path, nats_url, monkeypatch, s3.env()) as api:
        rc, err = await get(url(), "-O", str(out), "--endpoint", api, "--piece-length",
                            str(PIECE))
        assert rc == 0, err
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(s3.body).digest()
        client = ApiClient(api)
        try:
            status = await client.start(DownloadRequest(url=url(), piece_length=PIECE))
        finally:
            await client.close()
        # the task id is that of the s3:// URL, as for http
        assert status["task_id"] == DownloadRequest(url=url(), piece_length=PIECE).task_id()

        rc, err = await get(url("missing"), "-O", str(tmp_path / "missing"), "--endpoint", api)
    assert rc == 1
    assert err == f"damselfly get: {url('missing')}: back-to-source failed: " \
                  f"{url('missing')}: NoSuchKey (404)\n"
    assert not (tmp_path / "missing").exists()


async def test_wrong_keys_in_the_daemon_fail_the_download_clearly(
        tmp_path: Path, nats_url: str, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    env = s3.env(AWS_SECRET_ACCESS_KEY="not-the-secret")
    async with origin_daemon(tmp_path, nats_url, monkeypatch, env) as api:
        rc, err = await get(url(), "-O", str(tmp_path / "out"), "--endpoint", api)
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert f"{url()}: SignatureDoesNotMatch (403)" in err
    assert "not-the-secret" not in err


@pytest.mark.slow
async def test_a_swarm_fetches_an_object_the_store_serves_about_once(
        tmp_path: Path, nats_url: str, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)  # the daemons inherit this environment
    before = s3.app.object_bytes
    cluster = f"c{secrets.token_hex(4)}"
    request = DownloadRequest(url=url(), piece_length=PIECE)
    results: dict[str, dict[str, Any]] = {}
    with Swarm(nats_url, tmp_path / "swarm", 2, cluster=cluster) as swarm:
        async def fetch(name: str, api: str) -> None:
            client = ApiClient(api)
            try:
                results[name] = await client.download(request)
                await client.export(results[name]["task_id"], tmp_path / f"{name}.out")
            finally:
                await client.close()

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for service in swarm.peer_services:
                    tg.start_soon(fetch, service.name, str(service.endpoints["api_url"]))
        logs = b"".join(s.log_path.read_bytes() for s in swarm.services)

    assert {name: r["state"] for name, r in results.items()} == {
        "peer-1": "succeeded", "peer-2": "succeeded"}, results
    want = hashlib.sha256(s3.body).hexdigest()
    assert {hashlib.sha256((tmp_path / f"{n}.out").read_bytes()).hexdigest()
            for n in results} == {want}
    assert (s3.app.object_bytes - before) / SIZE <= 1.1, s3.app.object_bytes - before
    assert sum(r["bytes_from_peers"] for r in results.values()) >= SIZE

    nc = await connect(nats_url, "test")
    try:
        events = list(singles(await read_events(nc.jetstream(), "DF_TASKS",
                                                f"df.task.{cluster}.>")))
    finally:
        await nc.close()
    assert sum(e.length for e in events if isinstance(e, PieceFinished) and not e.parent_id) \
        == SIZE  # the seed's pieces, from the store
    published = b"".join(msgspec.json.encode(e) for e in events)
    for secret in (s3.secret.encode(), b"Signature="):
        assert secret not in published and secret not in logs
