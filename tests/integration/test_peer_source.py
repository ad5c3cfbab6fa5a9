"""A daemon going back to source: no scheduler, a flaky origin, a full disk, imports and
exports — a real nats-server, a real origin on loopback, the daemon in this event loop."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from damselfly.events.bus import Publisher
from damselfly.events.codec import AnyEvent, decode
from damselfly.events.ids import new_id
from damselfly.events.jobs import DeleteTaskRequested, JobProgressed
from damselfly.events.taskid import geometry_error
from damselfly.events.tasks import (
    BackToSourceStarted,
    PeerFailed,
    PeerLeft,
    PeerRegistered,
    PeerSucceeded,
    PieceFinished,
    TaskMetadataReported,
    singles,
)
from damselfly.services.peer.daemon import DaemonConfig
from damselfly.services.peer.fetchbook import Settings
from damselfly.services.peer.get import ApiClient
from damselfly.services.peer.request import DownloadRequest
from damselfly.services.peer.sources import HttpSource
from damselfly.services.runtime.natsconn import connect
from tests.support.metrics import samples
from tests.support.swarm import Origin, OriginFaults, daemon_in_process, read_events

pytestmark = pytest.mark.anyio
PIECE = 16 << 10
SIZE = 10 * PIECE + 1234


@asynccontextmanager
async def setup(tmp_path: Path, nats_url: str, faults: OriginFaults | None = None,
                **config: Any) -> AsyncIterator[tuple[Origin, ApiClient, str]]:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "f.bin").write_bytes(os.urandom(SIZE))
    origin = Origin(tmp_path / "www", faults or OriginFaults())
    await origin.start()
    cluster = f"c{secrets.token_hex(4)}"
    cfg = DaemonConfig(nats_url=nats_url, data_dir=tmp_path / "d", secret="s", cluster=cluster,
                       api_port=0, ready_file=tmp_path / "ready.json",
                       settings=Settings(schedule_timeout=0.5, source_backoff=0.05), **config)
    try:
        async with daemon_in_process(cfg) as endpoints:
            client = ApiClient(str(endpoints["api_url"]))
            try:
                yield origin, client, cluster
            finally:
                await client.close()
    finally:
        await origin.stop()


async def download(client: ApiClient, request: DownloadRequest) -> dict[str, Any]:
    return await client.download(request)


async def task_events(nats_url: str, cluster: str) -> list[AnyEvent]:
    nc = await connect(nats_url, "test")
    try:
        return list(singles(await read_events(nc.jetstream(), "DF_TASKS",
                                              f"df.task.{cluster}.>")))
    finally:
        await nc.close()


async def test_no_scheduler_means_back_to_source_after_the_timeout(
        tmp_path: Path, nats_url: str) -> None:
    async with setup(tmp_path, nats_url) as (origin, client, cluster):
        url = f"{origin.url}/f.bin"
        headers = {"Authorization": "Bearer origin-secret", "X-Trace": "t1"}
        status = await download(client, DownloadRequest(url=url, piece_length=PIECE,
                                                        headers=headers))
        assert status["state"] == "succeeded", status
        out = tmp_path / "out.bin"
        await client.export(status["task_id"], out)
    body = (tmp_path / "www" / "f.bin").read_bytes()
    assert out.read_bytes() == body
    assert origin.bytes_served == SIZE and status["bytes_from_origin"] == SIZE
    events = await task_events(nats_url, cluster)
    kinds = [type(e) for e in events]
    assert kinds[:3] == [PeerRegistered, BackToSourceStarted, TaskMetadataReported]
    assert kinds[-2:] == [TaskMetadataReported, PeerSucceeded]
    assert origin.headers[0]["Authorization"] == "Bearer origin-secret"
    registered = events[0]
    assert isinstance(registered, PeerRegistered) and registered.headers == {"X-Trace": "t1"}
    meta = next((tmp_path / "d" / "tasks").glob("*/meta.json"))
    assert meta.stat().st_mode & 0o077 == 0  # the credential on disk is for this user only
    started = next(e for e in events if isinstance(e, BackToSourceStarted))
    assert "no scheduler answered" in started.reason
    pieces = [e for e in events if isinstance(e, PieceFinished)]
    assert [p.piece for p in pieces] == list(range(11))
    for p in pieces:
        chunk = body[p.piece * PIECE:(p.piece + 1) * PIECE]
        assert p.digest == f"sha256:{hashlib.sha256(chunk).hexdigest()}" and p.parent_id == ""
    final = events[-2]
    assert isinstance(final, TaskMetadataReported)
    assert final.piece_digests == [p.digest for p in pieces] and final.content_length == SIZE


async def test_origin_5xx_is_retried(tmp_path: Path, nats_url: str) -> None:
    async with setup(tmp_path, nats_url, OriginFaults(fail_first=2)) as (origin, client, _):
        status = await download(client, DownloadRequest(url=f"{origin.url}/f.bin",
                                                        piece_length=PIECE))
    assert status["state"] == "succeeded", status
    assert len(origin.requests) == 3 and origin.bytes_served == SIZE


async def test_origin_reset_resumes_from_the_first_missing_piece(
        tmp_path: Path, nats_url: str) -> None:
    faults = OriginFaults(reset_after=4 * PIECE + 100)
    async with setup(tmp_path, nats_url, faults) as (origin, client, _):
        status = await download(client, DownloadRequest(url=f"{origin.url}/f.bin",
                                                        piece_length=PIECE))
        out = tmp_path / "out.bin"
        await client.export(status["task_id"], out)
    assert status["state"] == "succeeded", status
    assert out.read_bytes() == (tmp_path / "www" / "f.bin").read_bytes()
    assert len(origin.requests) == 2
    assert origin.requests[1].startswith(f"bytes={4 * PIECE}-")


async def test_origin_failing_for_good_is_a_clear_error(tmp_path: Path, nats_url: str) -> None:
    faults = OriginFaults(fail_always=True, fail_status=500)
    async with setup(tmp_path, nats_url, faults) as (origin, client, cluster):
        status = await download(client, DownloadRequest(url=f"{origin.url}/f.bin"))
    assert status["state"] == "failed"
    assert status["error"].startswith("back-to-source failed after 5 attempts: origin answered "
                                      "500 Internal Server Error")
    assert len(origin.requests) == 5
    failed = [e for e in await task_events(nats_url, cluster) if isinstance(e, PeerFailed)]
    assert [f.reason for f in failed] == [status["error"]]


async def test_origin_404_fails_at_once(tmp_path: Path, nats_url: str) -> None:
    async with setup(tmp_path, nats_url) as (origin, client, _):
        status = await download(client, DownloadRequest(url=f"{origin.url}/missing"))
    assert status["state"] == "failed" and "404" in status["error"]
    assert len(origin.requests) == 1


async def test_disabled_back_to_source_without_scheduler_fails(
        tmp_path: Path, nats_url: str) -> None:
    async with setup(tmp_path, nats_url) as (origin, client, _):
        status = await download(client, DownloadRequest(url=f"{origin.url}/f.bin",
                                                        disable_back_to_source=True))
    assert status["state"] == "failed"
    assert status["error"] == "back-to-source is disabled and no scheduler answered within 0.5s"
    assert origin.bytes_served == 0


async def test_a_piece_length_giving_too_many_pieces_is_one_line_and_the_next_works(
        tmp_path: Path, nats_url: str) -> None:
    tiny = SIZE // 10_001  # more pieces than one message carries digests for
    async with setup(tmp_path, nats_url) as (origin, client, _):
        status = await download(client, DownloadRequest(url=f"{origin.url}/f.bin",
                                                        piece_length=tiny))
        fine = await download(client, DownloadRequest(url=f"{origin.url}/f.bin"))
    assert status["state"] == "failed", status
    assert status["error"] == geometry_error(SIZE, tiny)
    assert "more than the 10000 a task may have" in status["error"]
    assert fine["state"] == "succeeded", fine


async def test_a_full_disk_fails_that_task_only(tmp_path: Path, nats_url: str) -> None:
    async with setup(tmp_path, nats_url, quota=SIZE + 1000) as (origin, client, _):
        (tmp_path / "www" / "small.bin").write_bytes(b"s" * 1000)
        first = await download(client, DownloadRequest(url=f"{origin.url}/f.bin"))
        second = await download(client, DownloadRequest(url=f"{origin.url}/f.bin", tag="again"))
        small = await download(client, DownloadRequest(url=f"{origin.url}/small.bin"))
    assert first["state"] == "succeeded"
    assert second["state"] == "failed" and second["error"].startswith("disk full: task ")
    assert small["state"] == "succeeded"


async def test_digest_mismatch_retries_the_origin_once_then_fails_and_keeps_nothing(
        tmp_path: Path, nats_url: str) -> None:
    async with setup(tmp_path, nats_url) as (origin, client, _):
        status = await download(client, DownloadRequest(url=f"{origin.url}/f.bin",
                                                        digest="sha256:" + "0" * 64))
        assert status["state"] == "failed" and status["error"].startswith("digest mismatch")
        assert status["error"].endswith("from the origin too")
        assert origin.bytes_served == 2 * SIZE
        with pytest.raises(RuntimeError, match="unknown task"):
            await client.export(status["task_id"], tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


async def test_import_then_export_a_local_file(tmp_path: Path, nats_url: str) -> None:
    async with setup(tmp_path, nats_url) as (_, client, cluster):
        local = tmp_path / "www" / "f.bin"
        status = await client._json("POST", "/v1/imports", {"path": str(local),
                                                           "piece_length": PIECE})
        status = await client.finish(status["task_id"])
        assert status["state"] == "succeeded", status
        out = tmp_path / "exported.bin"
        await client.export(status["task_id"], out)
        cancelled = await client._json("DELETE", f"/v1/tasks/{status['task_id']}")
        with pytest.raises(RuntimeError, match="unknown task"):
            await client._json("GET", f"/v1/tasks/{status['task_id']}")
    assert out.read_bytes() == local.read_bytes() and cancelled["state"] == "cancelled"
    events = await task_events(nats_url, cluster)
    assert any(isinstance(e, PeerSucceeded) and e.content_length == SIZE for e in events)


NOBODY = 65534


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """``curl`` run as user nobody (it is the caller the daemon sees)."""
    return subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *argv], user=NOBODY,
                          group=NOBODY, extra_groups=[], capture_output=True, text=True,
                          timeout=30, check=False)


def answer(ran: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    assert ran.returncode == 0, ran.stderr
    body, _, code = ran.stdout.rpartition("\n")
    return int(code), body


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to call as another user")
async def test_another_user_cannot_make_the_daemon_read_or_write_files(
        tmp_path: Path, nats_url: str) -> None:
    """Issue 12: a root daemon imported any file and exported to any path for any caller."""
    drop = Path(tempfile.mkdtemp(prefix="damselfly-nobody-"))
    drop.chmod(0o777)
    try:
        async with setup(tmp_path, nats_url) as (origin, client, _):
            status = await download(client, DownloadRequest(url=f"{origin.url}/f.bin"))
            api, task, out = client.endpoint, status["task_id"], drop / "mine.bin"
            json_post = ["-X", "POST", "-H", "Content-Type: application/json", "-d"]
            imported = answer(await anyio.to_thread.run_sync(lambda: as_nobody(
                *json_post, json.dumps({"path": "/etc/shadow"}), f"{api}/v1/imports")))
            exported = answer(await anyio.to_thread.run_sync(lambda: as_nobody(
                *json_post, json.dumps({"path": f"{drop}/root.bin"}),
                f"{api}/v1/tasks/{task}/export")))
            saved = answer(await anyio.to_thread.run_sync(lambda: as_nobody(
                "-o", str(out), f"{api}/v1/tasks/{task}/data")))
    finally:
        written = {p.name: p.stat().st_uid for p in drop.iterdir()}
        body = out.read_bytes() if out.exists() else b""
        shutil.rmtree(drop, ignore_errors=True)
    assert imported[0] == exported[0] == 403
    assert json.loads(imported[1])["error"].startswith(
        "import reads and writes files as the daemon's user")
    assert f"uid {NOBODY} may not ask for it" in json.loads(exported[1])["error"]
    assert saved[0] == 200 and body == (tmp_path / "www" / "f.bin").read_bytes()
    assert written == {"mine.bin": NOBODY}  # written by the caller; nothing by the daemon


async def test_api_describes_itself_and_rejects_bad_requests(
        tmp_path: Path, nats_url: str) -> None:
    async with setup(tmp_path, nats_url) as (_, client, _):
        doc = await client._json("GET", "/openapi.json")
        with pytest.raises(RuntimeError, match="unsupported URL scheme 'ftp'"):
            await client._json("POST", "/v1/tasks", {"url": "ftp://x/y"})
        with pytest.raises(RuntimeError, match="Object missing required field `url`"):
            await client._json("POST", "/v1/tasks", {})
        # The daemon reads files its caller may not: a local file comes in by import only.
        with pytest.raises(RuntimeError, match="is a local file: import it"):
            await client._json("POST", "/v1/tasks", {"url": "file:///etc/shadow"})
        # What a web page may send a loopback port without a CORS preflight is refused.
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{client.endpoint}/v1/tasks", data='{"url": "http://x/y"}',
                                 headers={"Content-Type": "text/plain"}) as answer:
                assert answer.status == 415
                assert "must be application/json, not text/plain" in await answer.text()
            async with http.options(f"{client.endpoint}/v1/tasks") as answer:
                assert answer.status == 405 and "Access-Control-Allow-Origin" not in answer.headers
    assert {"/v1/tasks", "/v1/tasks/{task_id}/progress", "/v1/imports"} <= set(doc["paths"])


async def test_cancel_stops_a_running_download_and_drops_its_files(
        tmp_path: Path, nats_url: str) -> None:
    async with setup(tmp_path, nats_url, OriginFaults(rate=50_000)) as (origin, client, cluster):
        started = await client.start(DownloadRequest(url=f"{origin.url}/f.bin",
                                                     piece_length=PIECE))
        task_id = started["task_id"]
        async for status in client.progress(task_id):
            if status["completed_length"] > 0:
                break
        cancelled = await client._json("DELETE", f"/v1/tasks/{task_id}")
        served_at_cancel = origin.bytes_served
        with pytest.raises(RuntimeError, match="unknown task"):
            await client._json("GET", f"/v1/tasks/{task_id}")
    assert cancelled == {"task_id": task_id, "state": "cancelled"}
    assert not (tmp_path / "d" / "tasks" / task_id).exists()
    assert served_at_cancel < SIZE
    left = [e for e in await task_events(nats_url, cluster) if isinstance(e, PeerLeft)]
    assert [e.task_id for e in left] == [task_id]


async def test_a_delete_job_drops_the_task_on_this_cluster_only(
        tmp_path: Path, nats_url: str) -> None:
    async with setup(tmp_path, nats_url) as (origin, client, cluster):
        status = await client.download(DownloadRequest(url=f"{origin.url}/f.bin"))
        task_id = status["task_id"]
        nc = await connect(nats_url, "test")
        try:
            progressed = await nc.subscribe("df.job.*.progressed.*")
            publisher = Publisher(nc.jetstream())
            await publisher.publish(DeleteTaskRequested(
                id=new_id(), job_id="other", task_id=task_id, scheduler_cluster_ids=["elsewhere"]))
            await publisher.publish(DeleteTaskRequested(
                id=new_id(), job_id="job1", task_id=task_id, scheduler_cluster_ids=[cluster]))
            reply = decode((await progressed.next_msg(timeout=10)).data)
        finally:
            await nc.close()
        with pytest.raises(RuntimeError, match="unknown task"):
            await client._json("GET", f"/v1/tasks/{task_id}")
    assert isinstance(reply, JobProgressed)
    assert (reply.job_id, reply.task_id, reply.state) == ("job1", task_id, "succeeded")
    assert not (tmp_path / "d" / "tasks" / task_id).exists()


async def test_gc_makes_room_by_dropping_the_least_recently_used_task(
        tmp_path: Path, nats_url: str) -> None:
    # Room for two files: the third download collects the one used least recently.
    async with setup(tmp_path, nats_url, gc_high=2 * SIZE + 10, gc_low=2 * SIZE + 10) as (
            origin, client, cluster):
        for name in ("a", "b", "c"):
            (tmp_path / "www" / f"{name}.bin").write_bytes(os.urandom(SIZE))
        first = await client.download(DownloadRequest(url=f"{origin.url}/a.bin"))
        second = await client.download(DownloadRequest(url=f"{origin.url}/b.bin"))
        await client.export(first["task_id"], tmp_path / "a.out")  # a is now the fresher one
        third = await client.download(DownloadRequest(url=f"{origin.url}/c.bin"))
        with pytest.raises(RuntimeError, match="unknown task"):
            await client._json("GET", f"/v1/tasks/{second['task_id']}")
        kept = await client._json("GET", f"/v1/tasks/{first['task_id']}")
        async with aiohttp.ClientSession() as s, s.get(f"{client.endpoint}/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=")
            scraped = samples(await r.text())
    assert third["state"] == "succeeded" and kept["state"] == "succeeded"
    left = [e for e in await task_events(nats_url, cluster) if isinstance(e, PeerLeft)]
    assert [(e.task_id, e.reason) for e in left] == [(second["task_id"], "garbage-collected")]
    # what the daemon's metrics say of it: three files from the http origin, one collected
    assert scraped[("damselfly_download_bytes_total", (("source", "http"),))] == 3 * SIZE
    assert scraped[("damselfly_pieces_fetched_total", (("source", "http"),))] == 3
    assert scraped[("damselfly_gc_tasks_removed_total", ())] == 1
    assert scraped[("damselfly_gc_freed_bytes_total", ())] == SIZE
    assert scraped[("damselfly_gc_runs_total", ())] >= 1
    assert scraped[("damselfly_tasks", ())] == 2
    assert scraped[("damselfly_events_published_total", (("stream", "DF_TASKS"),))] >= 3 * 4


async def test_https_origin_with_a_trusted_certificate(
        tmp_path: Path, nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await anyio.run_process(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                             "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
                             "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                             str(cert)])
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    (tmp_path / "www").mkdir()
    body = os.urandom(SIZE)
    (tmp_path / "www" / "f.bin").write_bytes(body)
    origin = Origin(tmp_path / "www", ssl_context=server_side)
    await origin.start()
    cfg = DaemonConfig(nats_url=nats_url, data_dir=tmp_path / "d", secret="s",
                       cluster=f"c{secrets.token_hex(4)}", api_port=0,
                       ready_file=tmp_path / "ready.json", settings=Settings(schedule_timeout=0.3))
    try:
        async with daemon_in_process(cfg) as endpoints:
            client = ApiClient(str(endpoints["api_url"]))
            try:
                untrusted = await client.download(DownloadRequest(url=f"{origin.url}/f.bin"))
                monkeypatch.setenv("SSL_CERT_FILE", str(cert))
                trusted = await client.download(DownloadRequest(url=f"{origin.url}/f.bin"))
                await client.export(trusted["task_id"], tmp_path / "out.bin")
            finally:
                await client.close()
    finally:
        await origin.stop()
    assert origin.url.startswith("https://")
    assert untrusted["state"] == "failed"
    assert untrusted["error"] == (f"back-to-source failed: origin {origin.url[8:]}: "
                                  "self-signed certificate")
    assert trusted["state"] == "succeeded"
    assert (tmp_path / "out.bin").read_bytes() == body


def test_a_redirect_to_another_origin_drops_the_credentials() -> None:
    """A registry sends blob GETs to object storage with a presigned URL: the client's
    Authorization and cookies must not follow it there (S3 refuses a second credential);
    on the same origin they do."""
    seen: dict[str, dict[str, str]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            address = self.server.server_address
            assert isinstance(address, tuple)  # an AF_INET server: (host, port)
            seen[f"{address[1]}{self.path}"] = dict(self.headers)
            if self.path.startswith("/hop"):
                self.send_response(302)
                self.send_header("Location", self.path.removeprefix("/hop"))
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    registry, storage = (s.server_address[1] for s in servers)
    headers = {"Authorization": "Bearer registry-token", "Cookie": "s=1", "X-Trace": "t"}
    try:
        for path in ("/hop/blob", f"/hophttp://127.0.0.1:{storage}/blob?sig=presigned"):
            stream = HttpSource(timeout=10).open(f"http://127.0.0.1:{registry}{path}", headers)
            buf = bytearray(2)
            assert stream.readinto(memoryview(buf)) == 2 and bytes(buf) == b"ok"
            stream.close()
    finally:
        for s, t in zip(servers, threads, strict=True):
            s.shutdown()
            s.server_close()
            t.join()
    same, moved = seen[f"{registry}/blob"], seen[f"{storage}/blob?sig=presigned"]
    assert same["Authorization"] == "Bearer registry-token" and same["Cookie"] == "s=1"
    assert "Authorization" not in moved and "Cookie" not in moved and moved["X-Trace"] == "t"
