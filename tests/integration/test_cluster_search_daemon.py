"""``damselfly daemon --cluster auto`` as a process against a real nats-server: it announces
into the cluster a real manager's cluster search answers, into ``default`` when no manager
answers, and an explicit ``--cluster`` is never asked about."""

from __future__ import annotations

import re
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from nats.aio.msg import Msg

from damselfly.events.clustersearch import ClusterQuery, ask_cluster
from damselfly.events.hosts import HostAnnounced
from damselfly.events.subjects import CLUSTER_SEARCH
from damselfly.services.runtime.natsconn import connect, subscribed
from tests.support.control import (
    ROOT_PASSWORD,
    SECRET,
    running_manager,
)
from tests.support.swarm import ChildService, read_events
from tests.support.wait import eventually

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def daemon(nats_url: str, data_dir: Path, cluster: str) -> AsyncIterator[ChildService]:
    """A daemon process, started off the event loop so that this loop's manager answers it."""
    service = ChildService(data_dir.name, ["daemon", "--nats", nats_url, "--data-dir",
                                           str(data_dir), "--cluster", cluster], data_dir,
                           SECRET)
    try:
        await anyio.to_thread.run_sync(service.start)
        yield service
    finally:
        await anyio.to_thread.run_sync(service.stop)


async def announced_clusters(nats_url: str, host_id: object) -> list[str]:
    nc = await connect(nats_url, "test")
    try:
        events = await read_events(nc.jetstream(), "DF_HOSTS", "df.host.>")
    finally:
        await nc.close()
    return [e.cluster for e in events if isinstance(e, HostAnnounced) and e.host_id == host_id]


@pytest.mark.parametrize(("scopes", "why"), [
    ({"scopes": {"hostnames": [f"^{re.escape(socket.gethostname())}$"]}},
     "its scopes match this host"),
    ({"scopes": {"cidrs": ["127.0.0.0/8"]}}, "its scopes match this host"),
    ({"scopes": {"cidrs": ["10.99.0.0/16"]}, "is_default": True}, "the manager's default"),
], ids=["hostname", "cidr", "default-cluster"])
async def test_auto_announces_into_the_cluster_the_manager_answers(
        nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scopes: dict[str, Any],
        why: str) -> None:
    cluster = f"c{secrets.token_hex(4)}"
    async with running_manager(nats_url, tmp_path, monkeypatch) as m:
        root = await eventually(lambda: m.try_sign_in("root", ROOT_PASSWORD))
        status, body = await m.call("POST", "/api/v1/scheduler-clusters",
                                    {"id": cluster, **scopes}, root)
        assert status == 201, body
        try:
            async def searched() -> bool:  # the cluster is projected, so searches find it
                query = ClusterQuery(hostname=socket.gethostname(), ip="127.0.0.1")
                return (await ask_cluster(m.nc, query)).cluster == cluster

            await eventually(searched)
            async with daemon(nats_url, tmp_path / "auto", "auto") as auto, \
                    daemon(nats_url, tmp_path / "pinned", "pinned") as pinned:
                auto_id, pinned_id = auto.endpoints["host_id"], pinned.endpoints["host_id"]
        finally:  # the next test's manager reads the same log: leave no scope matching us
            await m.call("DELETE", f"/api/v1/scheduler-clusters/{cluster}", token=root)
    assert await announced_clusters(nats_url, auto_id) == [cluster]
    assert await announced_clusters(nats_url, pinned_id) == ["pinned"]
    assert f"cluster {cluster}: {why}" in auto.log_path.read_text()
    assert "cluster search" not in pinned.log_path.read_text()


@pytest.mark.parametrize("manager", ["none", "silent"])
async def test_auto_falls_back_to_default_when_no_manager_answers(
        nats_url: str, tmp_path: Path, manager: str) -> None:
    nc = await connect(nats_url, "silent-manager")
    asked: list[bytes] = []

    async def never_answer(msg: Msg) -> None:
        asked.append(msg.data)

    if manager == "silent":
        await nc.subscribe(CLUSTER_SEARCH, cb=never_answer)
        await subscribed(nc)  # the SUB reaches the server before the daemon asks
    try:
        async with daemon(nats_url, tmp_path / "d", "auto") as d:
            host_id = d.endpoints["host_id"]
    finally:
        await nc.drain()
    assert await announced_clusters(nats_url, host_id) == ["default"]
    assert len(asked) == (manager == "silent")
    assert "cluster default: no manager answered the cluster search within 2 s" \
        in d.log_path.read_text()
