"""Fetching from parents, driven by decisions this test publishes itself (a scripted
scheduler): the happy path, a parent serving corrupt bytes, a parent killed mid-transfer."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg

from damselfly.events.bus import Publisher
from damselfly.events.codec import AnyEvent, decode
from damselfly.events.ids import derived_id
from damselfly.events.sched import ParentInfo, ParentsAssigned, PeerQueued
from damselfly.events.tasks import (
    PeerRegistered,
    PieceFailed,
    PieceFinished,
    PiecesFinished,
    RescheduleRequested,
    singles,
)
from damselfly.services.peer.daemon import DaemonConfig
from damselfly.services.peer.fetchbook import Settings
from damselfly.services.peer.get import ApiClient
from damselfly.services.peer.request import DownloadRequest
from damselfly.services.runtime.natsconn import connect, subscribed
from tests.support.swarm import (
    ChildService,
    Origin,
    daemon_in_process,
    daemon_service,
    read_events,
)

pytestmark = pytest.mark.anyio
PIECE = 32 << 10
SIZE = 20 * PIECE + 99
EVERYTHING = b"\xff" * 3  # the bitmap of a parent that holds all 21 pieces


class ScriptedScheduler:
    """Answers every registration (and reschedule request) of a peer on a host in
    ``rules`` with the parents that rule returns for it, with ``digests`` (as the real
    scheduler gives a parent's bitmap and the source's digests; it relays nothing)."""

    def __init__(self, nc: Client, cluster: str) -> None:
        self.nc, self.cluster = nc, cluster
        self.publisher = Publisher(nc.jetstream())
        self.rules: dict[str, Callable[[PeerRegistered | RescheduleRequested],
                                       list[ParentInfo]]] = {}
        self.hosts: dict[str, str] = {}  # peer → host, learnt from registrations
        self.digests: list[str] = []
        self.source_peers: list[str] = []

    async def start(self) -> None:
        for name in ("registered", "reschedule_requested"):
            await self.nc.subscribe(f"df.task.{self.cluster}.*.*.*.*.{name}", cb=self._on)
        # Unless the server holds the SUBs first, a child's registration, published on its own
        # connection, can reach the server first and is never seen (a flush is not enough).
        await subscribed(self.nc)

    async def _on(self, msg: Msg) -> None:
        event = decode(msg.data)
        assert isinstance(event, PeerRegistered | RescheduleRequested)
        if isinstance(event, PeerRegistered):
            self.hosts[event.peer_id] = event.host_id
        if (rule := self.rules.get(self.hosts.get(event.peer_id, ""))) is None:
            return
        await self.publisher.publish(ParentsAssigned(
            id=derived_id(event.id, "test"), cluster=self.cluster, task_id=event.task_id,
            peer_id=event.peer_id, trigger_id=event.id, parents=rule(event),
            content_length=SIZE, piece_length=PIECE, piece_digests=self.digests,
            source_peers=self.source_peers))


class QueueingScheduler(ScriptedScheduler):
    """Says "keep waiting" at once and assigns parents only ``hold`` seconds later, as the
    real scheduler does while a seed peer fetches the first piece from a slow origin."""

    hold = 2.0

    async def _on(self, msg: Msg) -> None:
        event = decode(msg.data)
        assert isinstance(event, PeerRegistered | RescheduleRequested)
        await self.publisher.publish(PeerQueued(
            id=derived_id(event.id, "queue"), cluster=self.cluster, task_id=event.task_id,
            peer_id=event.peer_id, trigger_id=event.id, reason="waiting for the seed peer"))
        await anyio.sleep(self.hold)
        await super()._on(msg)


def piece_digests(body: bytes) -> list[str]:
    return [f"sha256:{hashlib.sha256(body[i:i + PIECE]).hexdigest()}"
            for i in range(0, len(body), PIECE)]


async def download(api: str, request: DownloadRequest, out: Path | None = None) -> dict[str, Any]:
    client = ApiClient(api)
    try:
        status = await client.download(request)
        if out is not None and status["state"] == "succeeded":
            await client.export(status["task_id"], out)
        return status
    finally:
        await client.close()


async def task_events(nc: Client, cluster: str) -> list[AnyEvent]:
    return list(singles(await read_events(nc.jetstream(), "DF_TASKS", f"df.task.{cluster}.>")))


def config(tmp_path: Path, name: str, nats_url: str, cluster: str) -> DaemonConfig:
    """A child waits long for the scripted scheduler (which answers at once, but a loaded
    machine may be slow, and a timeout would mean back to source); the others have no rule,
    so they go to the origin after a short wait."""
    timeout = 10.0 if name == "child" else 0.5
    return DaemonConfig(nats_url=nats_url, data_dir=tmp_path / name, secret="s", cluster=cluster,
                        api_port=0, ready_file=tmp_path / f"{name}.json",
                        settings=Settings(schedule_timeout=timeout, stall_timeout=2.0))


@pytest.fixture
def body(tmp_path: Path) -> bytes:
    (tmp_path / "www").mkdir()
    data = os.urandom(SIZE)
    (tmp_path / "www" / "f.bin").write_bytes(data)
    return data


@pytest.mark.parametrize("queued", [False, True], ids=["answered", "queued-first"])
async def test_child_fetches_every_piece_from_its_parent(
        tmp_path: Path, nats_url: str, body: bytes, queued: bool) -> None:
    """Queued first: the scheduler says "keep waiting" and assigns parents only after the
    child's (short) schedule timeout; the child must wait, not go to the origin."""
    cluster = f"c{secrets.token_hex(4)}"
    origin = Origin(tmp_path / "www")
    await origin.start()
    request = DownloadRequest(url=f"{origin.url}/f.bin", piece_length=PIECE)
    child_cfg = config(tmp_path, "child", nats_url, cluster)
    if queued:
        child_cfg = replace(child_cfg, settings=Settings(schedule_timeout=0.5, queue_timeout=30.0))
    nc = await connect(nats_url, "test")
    try:
        async with daemon_in_process(config(tmp_path, "parent", nats_url, cluster)) as parent, \
                daemon_in_process(child_cfg) as child:
            source = await download(str(parent["api_url"]), request)
            scheduler = (QueueingScheduler if queued else ScriptedScheduler)(nc, cluster)
            scheduler.digests, scheduler.source_peers = piece_digests(body), [source["peer_id"]]
            scheduler.rules[str(child["host_id"])] = lambda e: [ParentInfo(
                peer_id=source["peer_id"], host_id=str(parent["host_id"]),
                upload_url=str(parent["upload_url"]), bitmap=EVERYTHING)]
            await scheduler.start()
            status = await download(str(child["api_url"]), request, tmp_path / "out.bin")
        events = await task_events(nc, cluster)
    finally:
        await nc.close()
        await origin.stop()
    assert status["state"] == "succeeded", status
    assert (tmp_path / "out.bin").read_bytes() == body
    assert origin.bytes_served == SIZE
    assert status["bytes_from_peers"] == SIZE and status["bytes_from_origin"] == 0
    from_parent = [e for e in events if isinstance(e, PieceFinished)
                   and e.peer_id == status["peer_id"]]
    assert sorted(e.piece for e in from_parent) == list(range(21))
    assert {e.parent_id for e in from_parent} == {source["peer_id"]}
    assert {e.digest for e in from_parent} == {""}  # only a source peer's digests count


async def test_a_corrupt_parent_is_detected_reported_and_avoided(
        tmp_path: Path, nats_url: str, body: bytes) -> None:
    cluster = f"c{secrets.token_hex(4)}"

    async def garbage(request: web.Request) -> web.Response:
        rng = request.http_range
        return web.Response(status=206, body=os.urandom(rng.stop - rng.start))

    liar = web.AppRunner(web.Application())
    liar.app.router.add_get("/v1/tasks/{task}/content", garbage)
    await liar.setup()
    site = web.TCPSite(liar, "127.0.0.1", 0)
    await site.start()
    liar_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    origin = Origin(tmp_path / "www")
    await origin.start()
    request = DownloadRequest(url=f"{origin.url}/f.bin", piece_length=PIECE)
    nc = await connect(nats_url, "test")
    try:
        async with daemon_in_process(config(tmp_path, "parent", nats_url, cluster)) as parent, \
                daemon_in_process(config(tmp_path, "child", nats_url, cluster)) as child:
            source = await download(str(parent["api_url"]), request)
            scheduler = ScriptedScheduler(nc, cluster)
            scheduler.digests, scheduler.source_peers = piece_digests(body), [source["peer_id"]]
            scheduler.rules[str(child["host_id"])] = lambda e: [
                ParentInfo(peer_id="liar-1", host_id="liar", upload_url=liar_url,
                           bitmap=EVERYTHING),
                ParentInfo(peer_id=source["peer_id"], host_id=str(parent["host_id"]),
                           upload_url=str(parent["upload_url"]), bitmap=EVERYTHING)]
            await scheduler.start()
            status = await download(str(child["api_url"]), request, tmp_path / "out.bin")
        events = await task_events(nc, cluster)
    finally:
        await nc.close()
        await origin.stop()
        await liar.cleanup()
    assert status["state"] == "succeeded", status
    assert (tmp_path / "out.bin").read_bytes() == body
    assert origin.bytes_served == SIZE  # the parent's fetch only: the child used peers
    corrupt = [e for e in events if isinstance(e, PieceFailed) and e.corrupt]
    assert corrupt and {e.parent_id for e in corrupt} == {"liar-1"}
    assert all("digest mismatch" in e.reason for e in corrupt)
    finished = [e for e in events
                if isinstance(e, PieceFinished) and e.peer_id == status["peer_id"]]
    assert {e.parent_id for e in finished} == {source["peer_id"]}
    assert len(corrupt) <= 8  # at most one batch in flight before the liar was dropped


async def test_a_parent_killed_mid_transfer_leaves_the_child_to_finish_from_others(
        tmp_path: Path, nats_url: str, body: bytes) -> None:
    cluster = f"c{secrets.token_hex(4)}"
    origin = Origin(tmp_path / "www")
    await origin.start()
    request = DownloadRequest(url=f"{origin.url}/f.bin", piece_length=PIECE)
    slow = ("--upload-rate", "150000", "--schedule-timeout", "1")
    parents: list[ChildService] = [
        daemon_service(name, nats_url, tmp_path / name, "s", *slow, cluster=cluster)
        for name in ("doomed", "steady")]
    nc = await connect(nats_url, "test")
    try:
        for p in parents:
            await anyio.to_thread.run_sync(p.start)
        sources = [await download(str(p.endpoints["api_url"]), request) for p in parents]
        scheduler = ScriptedScheduler(nc, cluster)
        scheduler.digests = piece_digests(body)
        scheduler.source_peers = [s["peer_id"] for s in sources]
        async with daemon_in_process(config(tmp_path, "child", nats_url, cluster)) as child:
            scheduler.rules[str(child["host_id"])] = lambda e: [
                ParentInfo(peer_id=s["peer_id"], host_id=str(p.endpoints["host_id"]),
                           upload_url=str(p.endpoints["upload_url"]), bitmap=EVERYTHING)
                for s, p in zip(sources, parents, strict=False)]
            await scheduler.start()
            doomed_peer = sources[0]["peer_id"]

            sub = await nc.subscribe(f"df.task.{cluster}.*.*.*.*.pieces_finished")
            await subscribed(nc)  # subscribed before the child's first piece, not after

            async def kill_after_first_piece_from_doomed() -> None:
                async for msg in sub.messages:
                    event = decode(msg.data)
                    if isinstance(event, PiecesFinished) and any(
                            p.parent_id == doomed_peer for p in event.pieces):
                        parents[0].kill()
                        break
                await sub.unsubscribe()

            async with anyio.create_task_group() as tg:
                tg.start_soon(kill_after_first_piece_from_doomed)
                status = await download(str(child["api_url"]), request, tmp_path / "out.bin")
                tg.cancel_scope.cancel()
        events = await task_events(nc, cluster)
    finally:
        for p in parents:
            p.stop()
        await nc.close()
        await origin.stop()
    assert parents[0].proc is not None and parents[0].proc.returncode == -9
    assert status["state"] == "succeeded", status
    assert (tmp_path / "out.bin").read_bytes() == body
    mine = [e for e in events if getattr(e, "peer_id", "") == status["peer_id"]]
    finished = {e.parent_id for e in mine if isinstance(e, PieceFinished)}
    assert finished == {doomed_peer, sources[1]["peer_id"]}
    assert any(isinstance(e, PieceFailed) and e.parent_id == doomed_peer for e in mine)


async def test_stalled_parents_lead_to_a_reschedule_and_new_parents(
        tmp_path: Path, nats_url: str, body: bytes) -> None:
    cluster = f"c{secrets.token_hex(4)}"
    origin = Origin(tmp_path / "www")
    await origin.start()
    request = DownloadRequest(url=f"{origin.url}/f.bin", piece_length=PIECE)
    nc = await connect(nats_url, "test")
    try:
        async with daemon_in_process(config(tmp_path, "parent", nats_url, cluster)) as parent, \
                daemon_in_process(config(tmp_path, "empty", nats_url, cluster)) as empty, \
                daemon_in_process(config(tmp_path, "child", nats_url, cluster)) as child:
            source = await download(str(parent["api_url"]), request)
            scheduler = ScriptedScheduler(nc, cluster)
            scheduler.digests, scheduler.source_peers = piece_digests(body), [source["peer_id"]]
            def rule(event: PeerRegistered | RescheduleRequested) -> list[ParentInfo]:
                if isinstance(event, PeerRegistered):
                    return [ParentInfo(peer_id="empty-1", host_id=str(empty["host_id"]),
                                       upload_url=str(empty["upload_url"]),
                                       bitmap=EVERYTHING)]  # it holds none (answers 404)
                return [ParentInfo(peer_id=source["peer_id"], host_id=str(parent["host_id"]),
                                   upload_url=str(parent["upload_url"]), bitmap=EVERYTHING)]

            scheduler.rules[str(child["host_id"])] = rule
            await scheduler.start()
            status = await download(str(child["api_url"]), request, tmp_path / "out.bin")
        events = await task_events(nc, cluster)
    finally:
        await nc.close()
        await origin.stop()
    assert status["state"] == "succeeded", status
    assert (tmp_path / "out.bin").read_bytes() == body
    mine = [e for e in events if getattr(e, "peer_id", "") == status["peer_id"]]
    asked = [e for e in mine if isinstance(e, RescheduleRequested)]
    assert len(asked) == 1 and asked[0].reason == "parents stalled"
    assert {e.parent_id for e in mine if isinstance(e, PieceFinished)} == {source["peer_id"]}
    assert origin.bytes_served == SIZE
