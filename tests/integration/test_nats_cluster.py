"""``damselfly up --nats-nodes 3``: a real 3-node JetStream cluster under a 10-peer swarm.
One NATS node is killed -9 in the middle of a download (the ``DF_TASKS`` leader, then a
follower together with the scheduler that owns the task): every download finishes with the
right bytes, no event is lost, no decision is made twice, and the node rejoins and catches
up."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from damselfly.events.log import LogRecord
from damselfly.events.sched import ParentsAssigned
from damselfly.events.streams import SCHED_STREAM, STREAM_NAMES, TASKS_STREAM
from damselfly.events.subjects import host_of, partition, sched_filter, task_filter
from damselfly.events.tasks import PeerSucceeded, PieceFinished, PiecesFinished
from damselfly.projections import store
from damselfly.projections.projector import replay as rebuild
from damselfly.services.launcher.broker import Broker
from damselfly.services.launcher.up import LocalCluster
from damselfly.services.manager.client import root_password_file
from damselfly.services.peer.get import ApiClient
from damselfly.services.peer.request import DownloadRequest
from damselfly.services.runtime.eventlog import dump
from damselfly.services.runtime.natsconn import CREDS_ENV, connect
from damselfly.services.runtime.procs import stop
from damselfly.services.scheduler.replay import replay
from tests.support.readmodel import rows
from tests.support.swarm import Origin, OriginFaults, read_events
from tests.support.wait import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
PIECE = 32 << 10
SIZE = 24 * PIECE + 77
PEERS = 10
Kill = Callable[[JetStreamContext, str], Awaitable[list[Broker]]]


def local_last_seqs(broker: Broker) -> dict[str, int]:
    """Each stream's last sequence in this node's own copy (its monitoring endpoint)."""
    with urllib.request.urlopen(broker.monitor_url + "/jsz?streams=true", timeout=5) as r:
        jsz = json.load(r)
    return {s["name"]: s["state"]["last_seq"]
            for account in jsz.get("account_details", []) for s in account["stream_detail"]}


async def caught_up(js: JetStreamContext, broker: Broker) -> bool:
    """Whether ``broker`` holds every stream up to its leader's last sequence."""
    try:
        have = local_last_seqs(broker)
        want = {name: (await js.stream_info(name)).state.last_seq for name in STREAM_NAMES}
    except (OSError, TimeoutError, NatsError):  # the cluster still electing, say
        return False
    return all(have.get(name) == seq for name, seq in want.items())


async def test_a_nats_node_killed_mid_swarm_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    www = tmp_path / "www"
    www.mkdir()
    bodies = {name: os.urandom(SIZE) for name in ("first.bin", "second.bin")}
    for name, body in bodies.items():
        (www / name).write_bytes(body)
    origin = Origin(www, OriginFaults(rate=SIZE / 3))  # each seed fetch takes ~3 s
    await origin.start()
    cluster = LocalCluster(tmp_path / "c", peers=PEERS, nats_nodes=3, schedulers=2)
    await anyio.to_thread.run_sync(cluster.__enter__)
    clients: list[ApiClient] = []
    try:
        creds = cluster.endpoints["nats_creds"]
        assert isinstance(creds, dict)
        url = str(cluster.endpoints["nats"])
        assert len(url.split(",")) == 3
        nc = await connect(url, "test-cluster", creds=creds["admin"])
        js = nc.jetstream(timeout=2)
        info = await js.stream_info(TASKS_STREAM)
        assert info.config.num_replicas == 3
        services = cluster.endpoints["services"]
        assert isinstance(services, dict)
        names = [f"peer-{i}" for i in range(1, PEERS + 1)]
        clients = [ApiClient(str(services[n]["api_url"])) for n in names]
        brokers = {b.name: b for b in cluster.brokers}

        def owner(task_id: str) -> str:
            """The scheduler whose lease holds the task's partition."""
            for name in ("scheduler", "scheduler-2"):
                status = json.loads((cluster.data_dir / name / "partitions.json").read_text())
                if partition(task_id) in status["partitions"]:
                    return name
            raise AssertionError("no scheduler owns the task's partition")

        async def swarm(name: str, kill: Kill) -> list[Broker]:
            """All peers download ``name``; ``kill`` strikes once the seed is mid-origin."""
            request = DownloadRequest(url=f"{origin.url}/{name}", piece_length=PIECE)
            before = origin.bytes_served
            results: dict[str, dict[str, Any]] = {}
            out = tmp_path / "out" / name
            out.mkdir(parents=True)

            async def finish(i: int, task_id: str) -> None:
                results[names[i]] = await clients[i].finish(task_id)
                await clients[i].export(task_id, out / names[i])

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for i, client in enumerate(clients):
                        tg.start_soon(finish, i, (await client.start(request))["task_id"])

                    async def mid_download() -> bool:
                        return before < origin.bytes_served < before + SIZE

                    await eventually(mid_download, timeout=30)
                    killed = await kill(js, request.task_id())
            assert sorted(results) == sorted(names)
            assert all(r["state"] == "succeeded" for r in results.values()), results
            want = hashlib.sha256(bodies[name]).hexdigest()
            assert {hashlib.sha256((out / n).read_bytes()).hexdigest() for n in names} == {want}
            return killed

        async def leader(js: JetStreamContext, task_id: str) -> list[Broker]:
            info = await js.stream_info(TASKS_STREAM)
            assert info.cluster is not None and info.cluster.leader
            brokers[info.cluster.leader].kill()
            return [brokers[info.cluster.leader]]

        async def follower_and_scheduler(js: JetStreamContext, task_id: str) -> list[Broker]:
            info = await js.stream_info(TASKS_STREAM)
            assert info.cluster is not None and info.cluster.replicas
            follower = brokers[str(info.cluster.replicas[0].name)]
            scheduler = cluster.processes[owner(task_id)]
            follower.kill()
            scheduler.kill()
            scheduler.wait()
            return [follower]

        for name, kill in (("first.bin", leader), ("second.bin", follower_and_scheduler)):
            for broker in await swarm(name, kill):
                broker.restart()

                async def rejoined(broker: Broker = broker) -> bool:
                    return await caught_up(js, broker)

                await eventually(rejoined, timeout=30)

        # No event lost: every peer's success and every one of its pieces are in the log.
        pieces = -(-SIZE // PIECE)
        for name in bodies:
            task_id = DownloadRequest(url=f"{origin.url}/{name}", piece_length=PIECE).task_id()
            log = await read_events(js, TASKS_STREAM, task_filter("default", task_id=task_id))
            held: dict[str, set[int]] = {}
            for event in log:
                if isinstance(event, PiecesFinished | PieceFinished):
                    for single in (event.singles() if isinstance(event, PiecesFinished)
                                   else [event]):
                        held.setdefault(single.peer_id, set()).add(single.piece)
            done = {e.peer_id for e in log if isinstance(e, PeerSucceeded)}
            hosts = collections.Counter(host_of(p) for p in done)
            assert len(hosts) == PEERS + 1 and set(hosts.values()) == {1}, (name, hosts, log)
            assert all(held.get(peer) == set(range(pieces)) for peer in done), held
        # No decision twice: each decision is stored once, and the recorded ones are exactly
        # those an offline replay of the log makes.
        decisions = await read_events(js, SCHED_STREAM, sched_filter("default"))
        assigned = [e.id for e in decisions if isinstance(e, ParentsAssigned)]
        assert assigned and len(assigned) == len(set(assigned))
        monkeypatch.setenv(CREDS_ENV, str(creds["observer"]))
        dumped = io.StringIO()
        await dump(url, None, dumped)
        records = [msgspec.json.decode(line, type=LogRecord)
                   for line in dumped.getvalue().splitlines()]
        assert replay(records, "default").mismatches() == ([], [])

        # The manager's projections equal a rebuild from the log, once nothing else writes.
        stop([p for n, p in cluster.processes.items() if n != "manager"])
        manager = str(services["manager"]["url"])
        password = root_password_file(cluster.data_dir).read_text().strip()
        async with aiohttp.ClientSession() as session:
            async with session.post(manager + "/api/v1/users/signin",
                                    json={"name": "root", "password": password}) as r:
                token = (await r.json())["token"]

            async def projected() -> bool:
                async with session.get(manager + "/api/v1/projections",
                                       headers={"Authorization": f"Bearer {token}"}) as r:
                    return all(m["lag"] == 0 for m in await r.json())

            await eventually(projected, timeout=30)
        stop([cluster.processes["manager"]])
        con = store.connect(Path(str(services["manager"]["db"])))
        try:
            projected_rows = rows(con)
        finally:
            con.close()
        con = store.connect(tmp_path / "rebuilt.duckdb")
        try:
            await rebuild(js, con)
            rebuilt = rows(con)
            for table, want in rebuilt.items():
                have = projected_rows[table]
                assert have == want, (table, [r for r in have if r not in want],
                                      [r for r in want if r not in have])
        finally:
            con.close()
        await nc.drain()
    finally:
        for client in clients:
            await client.close()
        await anyio.to_thread.run_sync(cluster.stop)
        await origin.stop()
