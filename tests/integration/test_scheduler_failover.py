"""Failover and scaling with real daemons: two schedulers share the partitions, the one
owning the task's is killed in the middle of a swarm download, the other takes its
partitions over by replaying them, and no download fails; nor does one when a scheduler joins
or leaves under load."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from damselfly.events.log import LogRecord
from damselfly.events.subjects import partition
from damselfly.services.peer.get import ApiClient
from damselfly.services.peer.request import DownloadRequest
from damselfly.services.runtime.eventlog import dump
from damselfly.services.scheduler.replay import Replay, replay
from tests.support.swarm import ChildService, Origin, OriginFaults, Swarm
from tests.support.wait import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
PIECE = 32 << 10
SIZE = 16 * PIECE + 123
PEERS = 4


def decode_record(line: str) -> LogRecord:
    return msgspec.json.decode(line, type=LogRecord)


def another_scheduler(swarm: Swarm, nats_url: str, cluster: str, data_dir: Path
                      ) -> ChildService:
    """A second scheduler of the swarm's cluster, stopped with the swarm (not yet started)."""
    second = ChildService("scheduler-2", ["scheduler", "--nats", nats_url, "--cluster",
                                          cluster, "--data-dir", str(data_dir)],
                          data_dir, swarm.secret, swarm.scheduler_env)
    swarm.services.append(second)
    return second


def same_bytes(tmp_path: Path, results: dict[str, dict[str, Any]], body: bytes) -> bool:
    """Whether every peer in ``results`` exported exactly ``body``."""
    want = hashlib.sha256(body).hexdigest()
    return {hashlib.sha256((tmp_path / f"{n}.out").read_bytes()).hexdigest()
            for n in results} == {want}


async def replayed(nats_url: str, cluster: str) -> Replay:
    """An offline replay of everything the log holds for ``cluster``."""
    dumped = io.StringIO()
    await dump(nats_url, None, dumped)
    return replay([decode_record(line) for line in dumped.getvalue().splitlines()], cluster)


def owned(service: ChildService) -> list[int]:
    status = json.loads((service.data_dir / "partitions.json").read_text())
    return list(status["partitions"])


async def test_killing_the_owning_scheduler_mid_download_fails_no_download(
        tmp_path: Path, nats_url: str) -> None:
    www = tmp_path / "www"
    www.mkdir()
    body = os.urandom(SIZE)
    (www / "blob.bin").write_bytes(body)
    origin = Origin(www, OriginFaults(rate=SIZE / 2))  # the origin fetch takes ~2 s
    await origin.start()
    request = DownloadRequest(url=f"{origin.url}/blob.bin", piece_length=PIECE)
    cluster = f"f{secrets.token_hex(4)}"
    results: dict[str, dict[str, Any]] = {}
    clients: list[ApiClient] = []
    try:
        with Swarm(nats_url, tmp_path / "swarm", PEERS, cluster=cluster) as swarm:
            first_scheduler = swarm.services[0]
            assert first_scheduler.name == "scheduler" and len(owned(first_scheduler)) == 16
            second = another_scheduler(swarm, nats_url, cluster, tmp_path / "s2")
            second.start()
            schedulers = [first_scheduler, second]

            async def halved() -> bool:  # the first hands half of the partitions over
                return sorted(len(owned(s)) for s in schedulers) == [8, 8]

            await eventually(halved, timeout=30)
            peers = swarm.peer_services
            clients = [ApiClient(str(p.endpoints["api_url"])) for p in peers]

            async def finish(i: int, task_id: str) -> None:
                results[peers[i].name] = await clients[i].finish(task_id)
                await clients[i].export(task_id, tmp_path / f"{peers[i].name}.out")

            with anyio.fail_after(90):
                async with anyio.create_task_group() as tg:
                    first = [await clients[i].start(request) for i in range(PEERS // 2)]
                    for i, status in enumerate(first):
                        tg.start_soon(finish, i, status["task_id"])
                    task_id = str(first[0]["task_id"])
                    owner = next(s for s in schedulers if partition(task_id) in owned(s))
                    survivor = next(s for s in schedulers if s is not owner)

                    async def mid_download() -> bool:  # the seed fetches from the slow origin
                        return 0 < origin.bytes_served < SIZE

                    await eventually(mid_download, timeout=30)
                    owner.kill()
                    for i in range(PEERS // 2, PEERS):  # these register while nobody owns it
                        status = await clients[i].start(request)
                        tg.start_soon(finish, i, status["task_id"])
            assert partition(task_id) in owned(survivor)
    finally:
        for client in clients:
            await client.close()
        await origin.stop()

    assert sorted(results) == [f"peer-{i}" for i in range(1, PEERS + 1)]
    assert all(r["state"] == "succeeded" for r in results.values()), results
    assert same_bytes(tmp_path, results, body)
    # The late peers were scheduled onto parents by the standby, not left to time out and
    # fetch from the origin themselves.
    late = [results[f"peer-{i}"] for i in range(PEERS // 2 + 1, PEERS + 1)]
    assert all(r["bytes_from_peers"] > 0 for r in late), late

    # Both schedulers' decisions come out of an offline replay of the log, exactly.
    result = await replayed(nats_url, cluster)
    assert len(result.recorded) >= PEERS + 1
    assert result.mismatches() == ([], [])


async def test_adding_and_removing_a_scheduler_under_load_fails_no_download(
        tmp_path: Path, nats_url: str) -> None:
    www = tmp_path / "www"
    www.mkdir()
    body = os.urandom(SIZE)
    (www / "blob.bin").write_bytes(body)
    origin = Origin(www, OriginFaults(rate=SIZE / 30))  # slow until the schedulers changed
    await origin.start()
    request = DownloadRequest(url=f"{origin.url}/blob.bin", piece_length=PIECE)
    cluster = f"s{secrets.token_hex(4)}"
    results: dict[str, dict[str, Any]] = {}
    clients: list[ApiClient] = []
    try:
        with Swarm(nats_url, tmp_path / "swarm", PEERS, cluster=cluster) as swarm:
            first = swarm.services[0]
            peers = swarm.peer_services
            clients = [ApiClient(str(p.endpoints["api_url"])) for p in peers]

            async def finish(i: int, task_id: str) -> None:
                results[peers[i].name] = await clients[i].finish(task_id)
                await clients[i].export(task_id, tmp_path / f"{peers[i].name}.out")

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    async def register(i: int) -> None:
                        tg.start_soon(finish, i, (await clients[i].start(request))["task_id"])

                    await register(0)

                    async def fetching() -> bool:
                        return origin.bytes_served > 0

                    await eventually(fetching, timeout=30)
                    # Scale up: a second scheduler joins and takes half the partitions over.
                    second = another_scheduler(swarm, nats_url, cluster, tmp_path / "s2")
                    second.start()

                    async def shared() -> bool:
                        return sorted(len(owned(s)) for s in (first, second)) == [8, 8]

                    await eventually(shared, timeout=30)
                    await register(1)
                    # Scale down: the first stops cleanly and its partitions move to the second.
                    first.stop()

                    async def moved() -> bool:
                        return len(owned(second)) == 16

                    await eventually(moved, timeout=30)
                    await register(2)
                    assert origin.bytes_served < SIZE  # all of it happened mid-download
                    origin.faults.rate = 0
                    await register(3)
    finally:
        for client in clients:
            await client.close()
        await origin.stop()

    assert all(r["state"] == "succeeded" for r in results.values()) and len(results) == PEERS
    assert same_bytes(tmp_path, results, body)
    assert (await replayed(nats_url, cluster)).mismatches() == ([], [])
