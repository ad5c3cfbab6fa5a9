"""The scheduler against a real nats-server, with scripted peers publishing their events."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import signal
import socket
import subprocess
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict
from urllib.parse import urlparse

import anyio
import msgspec
import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from damselfly.events.base import Event
from damselfly.events.bus import DEAD_REASON, DEAD_SEQ, Publisher
from damselfly.events.codec import decode
from damselfly.events.config import ClusterConfig, ClusterConfigSet
from damselfly.events.hosts import HostAnnounced, HostKeepalive, HostLeft
from damselfly.events.ids import new_id
from damselfly.events.log import read_log
from damselfly.events.sched import BackToSourceOrdered, ParentsAssigned, PeerQueued
from damselfly.events.streams import SNAPSHOT_BUCKET, ensure_streams
from damselfly.events.subjects import dlq_subject, partition
from damselfly.events.tasks import (
    BackToSourceStarted,
    PeerRegistered,
    PeerSucceeded,
    PieceFinished,
    TaskMetadataReported,
)
from damselfly.services.launcher.broker import Broker, nats_server_binary, start_broker
from damselfly.services.runtime.eventlog import dump
from damselfly.services.runtime.natsconn import connect
from damselfly.services.runtime.procs import DAMSELFLY, spawn, stop, wait_ready
from damselfly.services.scheduler.lease import lease_key, open_bucket
from damselfly.services.scheduler.replay import replay
from damselfly.services.scheduler.shell import Scheduler, Snapshot
from tests.support.metrics import samples, scrape
from tests.support.wait import eventually, eventually_sync

if TYPE_CHECKING:
    from typing_extensions import Unpack

PIECES = 6
TIMEOUT = 20.0


class Meta(TypedDict):
    id: str
    at: float
    cluster: str


class Swarm:
    """Scripted peers of one task in one cluster: they publish what a daemon would."""

    def __init__(self, nc: Client, cluster: str) -> None:
        self.nc = nc
        self.cluster = cluster
        self.pub = Publisher(nc.jetstream())
        self.task = hashlib.sha256(f"{cluster}-{new_id()}".encode()).hexdigest()
        self.n = itertools.count()
        self.queued: list[PeerQueued] = []

    def meta(self) -> Meta:
        return {"id": new_id(), "at": float(next(self.n)), "cluster": self.cluster}

    async def hosts(self, *names: str, idc: dict[str, str] | None = None) -> None:
        await self.pub.publish_many(
            HostAnnounced(**self.meta(), host_id=h, hostname=h, ip="127.0.0.1",
                          upload_url=f"http://127.0.0.1:9/{h}", idc=(idc or {}).get(h, ""))
            for h in names)

    async def register(self, peer: str, host: str) -> Event:
        """Subscribe to the peer's decisions first (as the protocol says), then register;
        return the first decision that is not "keep waiting" (those are kept in ``queued``)."""
        sub = await self.nc.subscribe(f"df.sched.{self.cluster}.{partition(self.task)}.{peer}")
        try:
            await self.pub.publish(PeerRegistered(**self.meta(), task_id=self.task, peer_id=peer,
                                                  host_id=host, url="https://origin/blob"))
            while isinstance(decision := decode((await sub.next_msg(timeout=TIMEOUT)).data),
                             PeerQueued):
                self.queued.append(decision)
            return decision
        finally:
            await sub.unsubscribe()

    async def fetch_from_origin(self, peer: str, pieces: range) -> None:
        events: list[Event] = []
        if pieces.start == 0:
            events += [BackToSourceStarted(**self.meta(), task_id=self.task, peer_id=peer),
                       TaskMetadataReported(**self.meta(), task_id=self.task, peer_id=peer,
                                            content_length=PIECES * 4, piece_length=4,
                                            piece_count=PIECES)]
        events += [self.piece(peer, i) for i in pieces]
        await self.pub.publish_many(events)

    def piece(self, peer: str, i: int, parent: str = "") -> Event:
        return PieceFinished(**self.meta(), task_id=self.task, peer_id=peer, piece=i,
                             length=4, digest=f"sha256:{i:064x}", parent_id=parent, cost_ms=1.0)

    async def fetch_from_parents(self, peer: str, decision: ParentsAssigned) -> None:
        assert decision.piece_digests == [f"sha256:{i:064x}" for i in range(PIECES)]
        parents = [p.peer_id for p in decision.parents]
        await self.pub.publish_many(
            [self.piece(peer, i, parents[i % len(parents)]) for i in range(PIECES)]
            + [self.succeeded(peer)])

    def succeeded(self, peer: str) -> Event:
        return PeerSucceeded(**self.meta(), task_id=self.task, peer_id=peer,
                             content_length=PIECES * 4, piece_count=PIECES)


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(nats_url, "test-scheduler")
    await ensure_streams(client.jetstream())
    yield client
    await client.drain()


class Tunables(TypedDict, total=False):
    """The scheduler settings a test may shorten."""

    keepalive_timeout: float
    snapshot_every: float


@asynccontextmanager
async def running(nc: Client, cluster: str, **kw: Unpack[Tunables]) -> AsyncIterator[Scheduler]:
    stop_event = asyncio.Event()
    ready = asyncio.Event()
    scheduler = Scheduler(nc, cluster=cluster, scheduler_id=f"test-{new_id()[:6]}",
                          poll=0.2, **kw)
    task = asyncio.create_task(scheduler.run(stop_event, ready.set))
    try:
        await asyncio.wait_for(ready.wait(), TIMEOUT)
        yield scheduler
    finally:
        stop_event.set()
        await asyncio.wait_for(task, TIMEOUT)


async def decisions_in_log(nc: Client, cluster: str) -> list[Event]:
    js = nc.jetstream()
    sub = await js.pull_subscribe(f"df.sched.{cluster}.>", stream="DF_SCHED")
    out: list[Event] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(100, timeout=0.5)
            except Exception:  # noqa: BLE001 - nats' fetch timeout: nothing more stored
                break
            for m in msgs:
                await m.ack()
                out.append(decode(m.data))
    finally:
        await sub.unsubscribe()
    return out


async def snapshot_covers_the_log(nc: Client, cluster: str, task: str) -> bool:
    """The snapshot of ``task``'s partition has folded every task event stored so far."""
    js = nc.jetstream()
    last = (await js.stream_info("DF_TASKS")).state.last_seq
    try:
        entry = await (await open_bucket(js, SNAPSHOT_BUCKET)).get(
            lease_key(cluster, partition(task)))
    except KeyNotFoundError:
        return False
    if not entry.value:
        return False
    snap = msgspec.msgpack.decode(zlib.decompress(entry.value), type=Snapshot)
    return snap.seqs["DF_TASKS"] >= last


async def damselfly(*argv: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [*DAMSELFLY, *argv],
                                   check=False, capture_output=True, text=True, timeout=60)


@pytest.mark.anyio
async def test_a_swarm_download_is_scheduled_and_a_restart_decides_nothing_twice(
        nc: Client, nats_url: str, tmp_path: Path) -> None:
    cluster = "c1"
    swarm = Swarm(nc, cluster)
    await swarm.hosts("h0", "h1", "h2", idc={"h1": "x", "h2": "x"})
    async with running(nc, cluster, snapshot_every=0.2):
        first = await swarm.register("p0", "h0")
        assert isinstance(first, BackToSourceOrdered)
        await swarm.fetch_from_origin("p0", range(PIECES))
        d1 = await swarm.register("p1", "h1")
        assert isinstance(d1, ParentsAssigned) and [p.peer_id for p in d1.parents] == ["p0"]
        assert d1.parents[0].bitmap == bytes([0b11111100])
        await swarm.fetch_from_parents("p1", d1)
        await eventually(lambda: snapshot_covers_the_log(nc, cluster, swarm.task))
    # A new scheduler replays from the snapshot and from the stream: nothing is decided twice.
    async with running(nc, cluster):
        d2 = await swarm.register("p2", "h2")
        assert isinstance(d2, ParentsAssigned)
        assert [p.peer_id for p in d2.parents] == ["p1", "p0"]  # p1 shares p2's IDC
    recorded = await decisions_in_log(nc, cluster)
    assert sorted(type(e).__name__ for e in recorded) == [
        "BackToSourceOrdered", "ParentsAssigned", "ParentsAssigned"]

    log_file = tmp_path / "log.jsonl"
    dumped = io.StringIO()
    await dump(nats_url, None, dumped)
    log_file.write_text(dumped.getvalue())
    result = replay(read_log(log_file), cluster)
    differ, missing = result.mismatches()
    assert (differ, missing) == ([], [])
    assert sorted(d.decision.id for d in result.decided) == sorted(e.id for e in recorded)
    assert all(e.at > 1e9 for e in recorded)  # the wall clock when made, not the trigger's `at`
    cli = await damselfly("replay", str(log_file), "--cluster", cluster)
    assert cli.returncode == 0, cli.stderr
    assert "3 of 3 recorded decisions reproduced" in cli.stdout
    assert "p2 <- " in cli.stdout and "upload_success" in cli.stdout
    live = await damselfly("replay", "--from-stream", "--nats", nats_url, "--cluster", cluster)
    assert live.returncode == 0, live.stderr
    assert "3 of 3 recorded decisions reproduced" in live.stdout
    changed = await damselfly("replay", str(log_file), "--cluster", cluster, "--weights", "idc=0")
    assert changed.returncode == 0, changed.stderr
    assert "p2 <- p1, p0  =>  p2 <- p0, p1" in changed.stdout
    assert "1 of 3 decisions change" in changed.stdout


@pytest.mark.anyio
async def test_a_forged_registration_is_dead_lettered_and_scheduling_goes_on(
        nc: Client) -> None:
    """Issue 12: a non-hex task id crash-looped a partition, again after every restart."""
    cluster = "c9"
    swarm = Swarm(nc, cluster)
    await swarm.hosts("h0")
    js = nc.jetstream()
    forged = {"type": "peer.registered.v1", "id": new_id(), "at": 1.0, "cluster": cluster,
              "task_id": "../not-hex", "peer_id": "p9", "host_id": "h0", "url": "https://o/f"}
    ack = await js.publish(f"df.task.{cluster}.{partition(swarm.task)}.x.h0.p9.registered",
                           msgspec.json.encode(forged))
    for restart in range(2):  # the replayed poison is stepped over again, not crashed on
        async with running(nc, cluster) as scheduler:
            decision = await Swarm(nc, cluster).register(f"p{restart}", "h0")
            assert isinstance(decision, BackToSourceOrdered)
            url, stop_serving = scheduler.metrics.serve("127.0.0.1", 0)
            try:
                scraped = samples(await anyio.to_thread.run_sync(scrape, url))
            finally:
                stop_serving()
        tasks = (("stream", "DF_TASKS"),)
        if restart == 0:  # (the first stop's snapshot lies past the poison)
            assert scraped[("damselfly_scheduler_events_dead_lettered_total", tasks)] == 1
        assert scraped[("damselfly_scheduler_events_folded_total", tasks)] >= 1
        assert scraped[("damselfly_scheduler_decisions_total", ())] >= 1
        assert scraped[("damselfly_scheduler_decision_latency_seconds_count", ())] >= 1
        assert scraped[("damselfly_scheduler_partitions_owned", ())] == 16
        assert ("damselfly_scheduler_consumer_lag",
                (("partition", str(partition(swarm.task))), *tasks)) in scraped
        dead = await js.get_last_msg("DF_DLQ", dlq_subject("DF_TASKS"))
        assert dead.headers is not None and dead.headers[DEAD_SEQ] == str(ack.seq)
        assert dead.headers[DEAD_REASON].startswith("undecodable: Expected `str` matching")
        assert "$.task_id" in dead.headers[DEAD_REASON]


@pytest.mark.anyio
async def test_an_unusable_snapshot_means_a_full_replay(nc: Client) -> None:
    cluster = "c5"
    swarm = Swarm(nc, cluster)
    await swarm.hosts("h0", "h1")
    async with running(nc, cluster):
        assert isinstance(await swarm.register("p0", "h0"), BackToSourceOrdered)
        await swarm.fetch_from_origin("p0", range(PIECES))
    snapshots = await open_bucket(nc.jetstream(), SNAPSHOT_BUCKET)
    await snapshots.put(lease_key(cluster, partition(swarm.task)), b"not a snapshot")
    async with running(nc, cluster):
        d = await swarm.register("p1", "h1")
    assert isinstance(d, ParentsAssigned) and [p.peer_id for p in d.parents] == ["p0"]


@pytest.mark.anyio
async def test_limits_come_from_the_clusters_configuration_events(nc: Client) -> None:
    cluster = "c4"
    swarm = Swarm(nc, cluster)
    await swarm.hosts("h0", "h1", "h2")
    await swarm.pub.publish(ClusterConfigSet(id=new_id(), cluster=cluster,
                                             config=ClusterConfig(back_to_source_limit=1)))
    async with running(nc, cluster):
        assert isinstance(await swarm.register("p0", "h0"), BackToSourceOrdered)
        waiting = asyncio.create_task(swarm.register("p1", "h1"))  # over the limit: it waits

        async def told_to_wait() -> bool:
            return bool(swarm.queued)

        await eventually(told_to_wait)
        assert not waiting.done()
        await swarm.fetch_from_origin("p0", range(1))
        d = await waiting
        assert isinstance(d, ParentsAssigned) and [p.peer_id for p in d.parents] == ["p0"]
        # told once to keep waiting, and nothing but that until a holder appeared
        assert [(q.peer_id, q.reason) for q in swarm.queued] == [
            ("p1", "the task is at its back-to-source limit")]


@pytest.mark.anyio
async def test_a_scheduler_starting_after_keepalives_decides(nc: Client) -> None:
    """The host log waited for the stream's last message, a keepalive it never receives
    (the review of the shared host log): nothing was decided until a host announced."""
    cluster = "c8"
    swarm = Swarm(nc, cluster)
    await swarm.hosts("h0", "h1")
    await swarm.pub.publish(HostKeepalive(id=new_id(), cluster=cluster, host_id="h1",
                                          uploads_running=0, upload_limit=50))
    async with running(nc, cluster):
        assert isinstance(await swarm.register("p0", "h0"), BackToSourceOrdered)
        await swarm.fetch_from_origin("p0", range(PIECES))
        await swarm.pub.publish(HostKeepalive(id=new_id(), cluster=cluster, host_id="h0",
                                              uploads_running=0, upload_limit=50))
        assert isinstance(await swarm.register("p1", "h1"), ParentsAssigned)


@pytest.mark.anyio
async def test_a_silent_host_is_declared_dead_in_the_log(nc: Client) -> None:
    cluster = "c2"
    swarm = Swarm(nc, cluster)
    sub = await nc.subscribe(f"df.host.{cluster}.quiet.left")
    async with running(nc, cluster, keepalive_timeout=1.0):
        await swarm.hosts("quiet")
        left = decode((await sub.next_msg(timeout=TIMEOUT)).data)
    assert isinstance(left, HostLeft) and left.reason == "keepalive timeout"


def _restart_on_same_port(broker: Broker, data_dir: Path) -> subprocess.Popen[bytes]:
    """Stop the server and start it again on its port and store, as a restarted node would."""
    port = urlparse(broker.url).port
    broker.stop()
    with (data_dir / "restarted.log").open("wb") as log:
        proc = spawn([nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port),
                      "-sd", str(data_dir / "store")], log)

    def accepting() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        eventually_sync(accepting, timeout=10)
    except AssertionError:
        stop([proc])
        raise
    return proc


@pytest.mark.anyio
async def test_the_scheduler_rides_out_a_nats_restart(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "nats")
    restarted: subprocess.Popen[bytes] | None = None
    try:
        sched_nc = await connect(broker.url, "test-restart-scheduler")
        peers_nc = await connect(broker.url, "test-restart-peers")
        await ensure_streams(peers_nc.jetstream())
        swarm = Swarm(peers_nc, "r1")
        await swarm.hosts("h0", "h1")
        try:
            async with running(sched_nc, "r1"):
                assert isinstance(await swarm.register("p0", "h0"), BackToSourceOrdered)
                await swarm.fetch_from_origin("p0", range(PIECES))
                restarted = await asyncio.to_thread(_restart_on_same_port, broker,
                                                    tmp_path / "nats")

                async def reconnected() -> bool:
                    return sched_nc.is_connected and peers_nc.is_connected

                await eventually(reconnected)
                d = await swarm.register("p1", "h1")
                assert isinstance(d, ParentsAssigned) and [p.peer_id for p in d.parents] == ["p0"]
        finally:
            await sched_nc.close()
            await peers_nc.close()
    finally:
        broker.stop()
        if restarted is not None:
            stop([restarted])


def test_sigterm_ends_the_scheduler_cleanly_even_with_nats_gone(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "nats")
    ready = tmp_path / "ready.json"
    try:
        with (tmp_path / "log").open("wb") as log:
            proc = spawn([*DAMSELFLY, "--log-format", "json", "scheduler", "--nats",
                          broker.url, "--ready-file", str(ready), "--metrics-port", "0"], log)
        try:
            endpoints = wait_ready(ready, proc)
            assert endpoints["partitions"] == list(range(16))
            scraped = samples(scrape(str(endpoints["metrics_url"])))
            assert scraped[("damselfly_scheduler_partitions_owned", ())] == 16
        finally:
            broker.stop()
            stop([proc])  # SIGTERM, then SIGKILL after the grace period
    finally:
        broker.stop()
    assert proc.returncode == 0, (tmp_path / "log").read_text()[-2000:]
    lines = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    owned = [line for line in lines if line["message"].endswith("owns partition 3")]
    assert len(owned) == 1 and owned[0]["partition"] == 3 and owned[0]["level"] == "INFO"


def _owned(ready: Path) -> list[int]:
    status = json.loads((ready.parent / "scheduler" / "partitions.json").read_text())
    return list(status["partitions"])


async def _shared_evenly(ready: list[Path]) -> None:
    """Wait until the schedulers split the 16 partitions evenly between them."""
    def owned() -> list[list[int]]:
        return [_owned(r) if (r.parent / "scheduler" / "partitions.json").exists() else []
                for r in ready]

    async def even() -> bool:
        split = owned()
        return sorted(p for o in split for p in o) == list(range(16)) and \
            {len(o) for o in split} == {16 // len(ready)}

    try:
        await eventually(even)
    except AssertionError:
        raise AssertionError(f"partitions not shared evenly: {owned()}") from None


def _owner(ready: list[Path], part: int) -> int:
    owners = [i for i, path in enumerate(ready) if part in _owned(path)]
    assert len(owners) == 1, owners
    return owners[0]


@pytest.mark.anyio
async def test_killing_the_owner_mid_download_fails_no_download(
        nc: Client, nats_url: str, tmp_path: Path) -> None:
    cluster = "c3"
    swarm = Swarm(nc, cluster)
    await swarm.hosts(*(f"h{i}" for i in range(6)))
    procs: list[subprocess.Popen[bytes]] = []
    ready: list[Path] = []
    try:
        for i in range(2):
            home = tmp_path / f"s{i}"
            home.mkdir()
            ready.append(home / "ready.json")
            with (home / "log").open("wb") as log:
                procs.append(spawn([*DAMSELFLY, "scheduler",
                                    "--nats", nats_url, "--cluster", cluster,
                                    "--data-dir", str(home / "scheduler"), "--lease-ttl", "2",
                                    "--snapshot-every", "0.3", "--ready-file", str(ready[-1])],
                                   log))
            wait_ready(ready[-1], procs[-1])
        await _shared_evenly(ready)
        owner = _owner(ready, partition(swarm.task))
        assert isinstance(await swarm.register("p0", "h0"), BackToSourceOrdered)
        await swarm.fetch_from_origin("p0", range(PIECES // 2))
        d1 = await swarm.register("p1", "h1")
        assert isinstance(d1, ParentsAssigned)
        # the owner snapshots what it folded, so the survivor's takeover starts from there
        await eventually(lambda: snapshot_covers_the_log(nc, cluster, swarm.task))
        procs[owner].send_signal(signal.SIGKILL)
        procs[owner].wait()
        # While nobody owns the partition the download goes on; decisions resume on takeover.
        await swarm.fetch_from_origin("p0", range(PIECES // 2, PIECES))
        await swarm.pub.publish(swarm.succeeded("p0"))
        late = await asyncio.gather(*(swarm.register(f"p{i}", f"h{i}") for i in range(2, 6)))
        assert all(isinstance(d, ParentsAssigned) for d in late), late
        for i, d in enumerate(late, 2):
            assert isinstance(d, ParentsAssigned)
            await swarm.fetch_from_parents(f"p{i}", d)
        assert partition(swarm.task) in _owned(ready[1 - owner])
    finally:
        stop(procs)
    assert procs[1 - owner].returncode == 0  # the survivor ended cleanly on SIGTERM
