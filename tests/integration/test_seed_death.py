"""The only seed peer dies (kill -9) while children wait for its first pieces: the scheduler
hears of it within seconds (a seed keeps alive every 2 s and is declared dead after six
silent intervals), sends a waiting child back to source, and every download succeeds. A
daemon a scheduler declares dead while it runs announces itself again."""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from damselfly.events.bus import Publisher
from damselfly.events.hosts import KEEPALIVE_MISSES, HostAnnounced, HostLeft
from damselfly.events.ids import new_id
from damselfly.events.sched import BackToSourceOrdered
from damselfly.events.streams import HOSTS_STREAM, SCHED_STREAM
from damselfly.events.subjects import host_filter, sched_filter
from damselfly.services.peer.get import ApiClient
from damselfly.services.peer.request import DownloadRequest
from damselfly.services.runtime.natsconn import connect
from tests.support.swarm import Origin, OriginFaults, Swarm, read_events
from tests.support.wait import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
PIECE = 32 << 10
SIZE = 16 * PIECE + 5
SEED_INTERVAL = 2.0  # services/peer/daemon.py: a seed's keepalive


async def test_children_waiting_for_a_dead_seed_are_sent_to_the_origin_within_seconds(
        tmp_path: Path, nats_url: str) -> None:
    www = tmp_path / "www"
    www.mkdir()
    body = os.urandom(SIZE)
    (www / "blob.bin").write_bytes(body)
    origin = Origin(www, OriginFaults(rate=SIZE / 60))  # the seed would take a minute
    await origin.start()
    cluster = f"d{secrets.token_hex(4)}"
    request = DownloadRequest(url=f"{origin.url}/blob.bin", piece_length=PIECE)
    nc = await connect(nats_url, "test-seed-death")
    js = nc.jetstream()
    results: dict[int, dict[str, Any]] = {}
    clients: list[ApiClient] = []
    try:
        with Swarm(nats_url, tmp_path / "swarm", 2, cluster=cluster) as swarm:
            seed = next(s for s in swarm.services if s.name == "seed-peer")
            seed_host = str(seed.endpoints["host_id"])
            clients = [ApiClient(str(p.endpoints["api_url"])) for p in swarm.peer_services]

            async def finish(i: int) -> None:
                status = await clients[i].start(request)
                results[i] = await clients[i].finish(status["task_id"])
                await clients[i].export(status["task_id"], tmp_path / f"{i}.out")

            with anyio.fail_after(90):
                async with anyio.create_task_group() as tg:
                    for i in range(len(clients)):
                        tg.start_soon(finish, i)

                    async def seed_fetching() -> bool:
                        return origin.bytes_served > 0

                    await eventually(seed_fetching, timeout=30)
                    seed.kill()
                    killed = time.time()
                    origin.faults.rate = 0  # whoever fetches next gets it at once

            # Declared dead by the keepalive rule, not by the 30 s timeout.
            (left,) = await read_events(js, HOSTS_STREAM, host_filter(cluster, seed_host, "left"))
            assert isinstance(left, HostLeft) and left.reason == "keepalive timeout"
            assert left.at - killed < KEEPALIVE_MISSES * SEED_INTERVAL + 4, left.at - killed
            decisions = await read_events(js, SCHED_STREAM, sched_filter(cluster))
            sent_back = [d for d in decisions if isinstance(d, BackToSourceOrdered)
                         and d.at >= killed]
            assert sent_back and sent_back[0].at - left.at < 3, sent_back

            # A running daemon declared dead says it is alive again.
            peer = swarm.peer_services[0]
            host = str(peer.endpoints["host_id"])
            before = len(await read_events(js, HOSTS_STREAM, host_filter(cluster, host,
                                                                         "announced")))
            await Publisher(js).publish(HostLeft(id=new_id(), at=time.time(), cluster=cluster,
                                                 host_id=host, reason="keepalive timeout"))

            async def announced_again() -> bool:
                got = await read_events(js, HOSTS_STREAM, host_filter(cluster, host,
                                                                      "announced"))
                return len(got) > before and isinstance(got[-1], HostAnnounced)

            await eventually(announced_again, timeout=15)
    finally:
        for client in clients:
            await client.close()
        await nc.drain()
        await origin.stop()

    assert sorted(results) == [0, 1]
    assert all(r["state"] == "succeeded" for r in results.values()), results
    want = hashlib.sha256(body).hexdigest()
    assert {hashlib.sha256((tmp_path / f"{i}.out").read_bytes()).hexdigest()
            for i in results} == {want}
