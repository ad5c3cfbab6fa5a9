"""The proxy in a daemon run in-process. As a registry mirror, against an origin laid out like a
registry: blobs through the swarm (streamed while downloading, ranges, one task per
digest, digest checked before the last byte), everything else forwarded, and registry-style
errors when the upstream cannot answer. As a forward proxy: rules pick the swarm or the
origin."""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
import ssl
import subprocess
from pathlib import Path

import aiohttp
import anyio
import msgspec
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from damselfly.events.codec import encode
from damselfly.events.taskid import task_id
from damselfly.services.peer.oci import blob_task_id
from damselfly.services.peer.proxy import parse_rule
from damselfly.services.peer.proxy_intercept import InterceptCA
from damselfly.services.runtime.natsconn import connect
from damselfly.services.runtime.procs import DAMSELFLY
from tests.support.mirror import NAME, PIECE, SIZE, mirror, put_blob
from tests.support.registry import free_port
from tests.support.swarm import Origin, OriginFaults, read_events

pytestmark = pytest.mark.anyio


async def test_a_blob_streams_to_the_client_while_the_swarm_still_fetches_it(
        tmp_path: Path, nats_url: str) -> None:
    body = os.urandom(SIZE)
    # A slow origin: the whole blob takes seconds, one piece a fraction of that.
    async with mirror(tmp_path, nats_url, OriginFaults(rate=SIZE / 3)) as m, \
            aiohttp.ClientSession() as http:
        digest = put_blob(tmp_path / "www", body)
        async with http.get(f"{m.url}/v2/{NAME}/blobs/{digest}") as answer:
            assert answer.status == 200
            assert answer.headers["Docker-Content-Digest"] == digest
            assert answer.content_length == SIZE
            first = await answer.content.readexactly(PIECE)
            status_then = await m.status(http, blob_task_id(digest, PIECE))
            rest = await answer.read()
    assert first + rest == body
    assert status_then["completed_length"] < SIZE, status_then
    assert m.origin.bytes_served == SIZE


async def test_ranges_are_served_from_pieces_and_one_digest_is_one_task(
        tmp_path: Path, nats_url: str) -> None:
    body = os.urandom(SIZE)
    other = Origin(tmp_path / "www")  # a second registry holding the same blob
    async with mirror(tmp_path, nats_url) as m, aiohttp.ClientSession() as http:
        digest = put_blob(tmp_path / "www", body)
        await other.start()
        try:
            blob = f"{m.url}/v2/{NAME}/blobs/{digest}"
            async with http.get(blob, headers={"Range": f"bytes={PIECE - 10}-{3 * PIECE}"}) as a:
                ranged = (a.status, a.headers["Content-Range"], await a.read())
            async with http.get(blob, headers={"X-Dragonfly-Registry": other.url}) as a:
                whole = await a.read()
            async with http.get(blob, headers={"Range": "bytes=-100"}) as a:
                tail = (a.status, await a.read())
            async with http.get(blob, headers={"Range": f"bytes={SIZE}-"}) as a:
                outside = a.status
        finally:
            await other.stop()
    assert ranged == (206, f"bytes {PIECE - 10}-{3 * PIECE}/{SIZE}",
                      body[PIECE - 10:3 * PIECE + 1])
    assert whole == body and tail == (206, body[-100:]) and outside == 416
    assert other.bytes_served == 0 and m.origin.bytes_served == SIZE
    assert [p.name for p in (m.data_dir / "tasks").iterdir()] == [blob_task_id(digest, PIECE)]


async def test_a_blob_that_does_not_match_its_digest_never_reaches_the_client_whole(
        tmp_path: Path, nats_url: str) -> None:
    body = os.urandom(SIZE)
    claimed = f"sha256:{hashlib.sha256(b'something else').hexdigest()}"
    async with mirror(tmp_path, nats_url) as m, aiohttp.ClientSession() as http:
        put_blob(tmp_path / "www", body, digest=claimed)
        received, cut = b"", False
        try:
            async with http.get(f"{m.url}/v2/{NAME}/blobs/{claimed}") as answer:
                status = answer.status
                async for chunk in answer.content.iter_any():
                    received += chunk
        except aiohttp.ClientPayloadError:
            cut = True
        task = await m.status(http, blob_task_id(claimed, PIECE))
    # Either the answer had begun (a body cut short before its last piece) or the swarm
    # had already refused the blob (a registry-style error): never the whole blob.
    if status == 200:
        assert cut and len(received) < SIZE and body.startswith(received)
    else:
        assert status >= 500
        assert msgspec.json.decode(received)["errors"][0]["code"] == "UNAVAILABLE"
    assert task["state"] == "failed" and "digest mismatch" in task["error"]


async def test_other_requests_are_forwarded_and_credentials_stay_out_of_the_log(
        tmp_path: Path, nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    body = os.urandom(SIZE)
    manifest = b'{"schemaVersion": 2}'
    token = f"Bearer {secrets.token_hex(8)}"
    async with mirror(tmp_path, nats_url) as m, aiohttp.ClientSession() as http:
        digest = put_blob(tmp_path / "www", body)
        (tmp_path / "www" / "v2" / NAME / "manifests").mkdir()
        (tmp_path / "www" / "v2" / NAME / "manifests" / "v1").write_bytes(manifest)
        host = m.origin.url.removeprefix("http://")
        async with http.get(f"{m.url}/v2/{NAME}/manifests/v1?ns={host}",
                            headers={"Authorization": token}) as answer:
            forwarded = (answer.status, await answer.read())
        async with http.get(f"{m.url}/v2/{NAME}/blobs/{digest}",
                            headers={"Authorization": token}) as answer:
            blob = await answer.read()
    assert forwarded == (200, manifest) and blob == body
    assert [h.get("Authorization") for h in m.origin.headers] == [token, token]
    nc = await connect(nats_url, "test")
    try:
        events = await read_events(nc.jetstream(), "DF_TASKS", f"df.task.{m.cluster}.>")
    finally:
        await nc.close()
    assert events and not any(token.encode() in encode(e) for e in events)
    assert token not in caplog.text


async def test_an_unreachable_upstream_is_a_registry_error_not_a_hang(
        tmp_path: Path, nats_url: str) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    digest = f"sha256:{hashlib.sha256(b'x').hexdigest()}"
    async with mirror(tmp_path, nats_url) as m, aiohttp.ClientSession() as http:
        answers = []
        with anyio.fail_after(60):
            for path in ("/v2/", f"/v2/{NAME}/manifests/v1", f"/v2/{NAME}/blobs/{digest}"):
                async with http.get(f"{m.url}{path}",
                                    headers={"X-Dragonfly-Registry": nowhere}) as answer:
                    answers.append((answer.status, (await answer.json())["errors"][0]["code"]))
            async with http.get(f"{m.url}/v2/{NAME}/blobs/{digest}") as answer:
                missing = (answer.status, (await answer.json())["errors"][0]["code"])
    assert answers == [(503, "UNAVAILABLE")] * 3
    assert missing == (404, "BLOB_UNKNOWN")


async def test_forward_proxy_rules_send_matching_urls_through_the_swarm(
        tmp_path: Path, nats_url: str) -> None:
    body = os.urandom(SIZE)
    rules = (parse_rule("/simple/=direct"), parse_rule(r"\.whl\b=swarm:sig"))
    async with mirror(tmp_path, nats_url, rules=rules) as m, aiohttp.ClientSession() as http:
        (tmp_path / "www" / "packages").mkdir()
        (tmp_path / "www" / "packages" / "app.whl").write_bytes(body)
        (tmp_path / "www" / "simple").mkdir()
        (tmp_path / "www" / "simple" / "index.html").write_text("<a>app.whl</a>")
        wheels = []
        for signature in ("1", "2"):
            async with http.get(f"{m.origin.url}/packages/app.whl?sig={signature}",
                                proxy=m.url) as answer:
                wheels.append(await answer.read())
        async with http.get(f"{m.origin.url}/simple/index.html", proxy=m.url) as answer:
            index = await answer.text()
        async with http.get(f"{m.origin.url}/packages/", proxy=m.url) as answer:
            listing = answer.status
        layer = os.urandom(PIECE + 1)
        digest = put_blob(tmp_path / "www", layer)
        async with http.get(f"{m.origin.url}/v2/{NAME}/blobs/{digest}", proxy=m.url) as answer:
            blob = (answer.headers["Docker-Content-Digest"], await answer.read())
    assert wheels == [body, body] and index == "<a>app.whl</a>" and listing == 200
    assert blob == (digest, layer)
    # The wheel once, through the swarm, the index directly; the blob as a registry blob.
    assert m.origin.bytes_served == SIZE + len(index) + len(layer)
    wheel_task = task_id(f"{m.origin.url}/packages/app.whl", piece_length=PIECE)
    assert sorted(p.name for p in (m.data_dir / "tasks").iterdir()) == sorted(
        [wheel_task, blob_task_id(digest, PIECE)])


async def connect_through(proxy_url: str, target: str, then: bytes = b"") -> bytes:
    """Everything the proxy sends back to a CONNECT to ``target``; ``then`` is sent once the
    proxy answered, as a TLS client would send its hello."""
    host, port = proxy_url.removeprefix("http://").split(":")
    received = b""
    with anyio.fail_after(20):
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            try:
                while b"\r\n\r\n" not in received:
                    received += await stream.receive()
                if then:
                    await stream.send(then)
                while True:
                    received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return received


async def test_connect_tunnels_bytes_both_ways_and_refuses_unreachable_targets(
        tmp_path: Path, nats_url: str) -> None:
    async with mirror(tmp_path, nats_url) as m:
        (tmp_path / "www" / "hello.txt").write_text("hello through a tunnel")
        target = m.origin.url.removeprefix("http://")
        tunnelled = await connect_through(m.url, target, (
            f"GET /hello.txt HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
        ).encode())
        refused = await connect_through(m.url, f"127.0.0.1:{free_port()}")
    head, _, rest = tunnelled.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 Connection established")
    assert rest.startswith(b"HTTP/1.1 200 OK") and rest.endswith(b"hello through a tunnel")
    assert refused.startswith(b"HTTP/1.1 502 ") and b'"UNAVAILABLE"' in refused


def write_ca(folder: Path) -> tuple[Path, Path]:
    """A throwaway CA: its certificate alone (to trust) and with its key (to intercept)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "damselfly test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (folder / "ca.crt").write_bytes(cert_pem)
    (folder / "ca.pem").write_bytes(cert_pem + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return folder / "ca.crt", folder / "ca.pem"


async def test_connect_with_a_ca_is_intercepted_and_its_requests_follow_the_rules(
        tmp_path: Path, nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    trust, ca_pem = write_ca(tmp_path)
    ca = InterceptCA.load(ca_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(trust))  # the daemon trusts the HTTPS origin
    body = os.urandom(SIZE)
    served: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.Response(body=body if request.path.endswith(".whl") else b"index")

    app = web.Application()
    app.router.add_get("/{name:.*}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ca.context_for("127.0.0.1")).start()
    https = f"https://127.0.0.1:{runner.addresses[0][1]}"
    client_tls = ssl.create_default_context(cafile=str(trust))
    try:
        async with mirror(tmp_path, nats_url, rules=(parse_rule(r"\.whl=swarm"),),
                          ca=ca) as m, aiohttp.ClientSession() as http:
            got = []
            for path in ("/app.whl", "/app.whl", "/simple/"):
                async with http.get(f"{https}{path}", proxy=m.url, ssl=client_tls) as answer:
                    got.append(await answer.read())
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(f"{https}/app.whl", proxy=m.url):
                    pass  # a client that does not trust the CA gets no bytes
    finally:
        await runner.cleanup()
    assert got == [body, body, b"index"]
    assert served == ["/app.whl", "/simple/"]  # the wheel once, through the swarm
    assert [p.name for p in (m.data_dir / "tasks").iterdir()] == [
        task_id(f"{https}/app.whl", piece_length=PIECE)]


@pytest.mark.parametrize(("flags", "error"), [
    (["--proxy-rule", "(=swarm"], "bad proxy rule '(=swarm'"),
    (["--registry-mirror", "ftp://registry"], "bad registry 'ftp://registry'"),
])
def test_bad_proxy_flags_stop_the_daemon_with_one_line(
        tmp_path: Path, nats_url: str, flags: list[str], error: str) -> None:
    result = subprocess.run(
        [*DAMSELFLY, "daemon", "--nats", nats_url, "--data-dir",
         str(tmp_path / "d"), "--proxy-port", "0", *flags], capture_output=True, text=True,
        timeout=60, check=False, env={**os.environ, "DAMSELFLY_CLUSTER_SECRET": "s"})
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"damselfly daemon: {error}")
