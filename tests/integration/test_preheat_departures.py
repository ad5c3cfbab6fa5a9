"""A daemon killed with SIGKILL in the middle of an ``all_peers`` preheat: a real scheduler
declares it dead on keepalive timeout, and the coordinator fails its part and the job with
that reason long before the job's 30-minute deadline — while the other daemon, throttled by
the origin, is still at its part."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from damselfly.services.runtime.procs import stop
from tests.support.control import (
    ROOT_PASSWORD,
    SECRET,
    job_outcome,
    running_manager,
)
from tests.support.swarm import ChildService, Origin, OriginFaults, daemon_service
from tests.support.wait import eventually

pytestmark = pytest.mark.anyio


@contextlib.contextmanager
def children(*services: ChildService) -> Iterator[None]:
    try:
        for service in services:
            service.spawn()
        for service in services:
            service.wait(60)
        yield
    finally:
        stop([s.proc for s in reversed(services) if s.proc is not None])


def _by_host(job: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """A job's state and reason on each host, from ``GET /oapi/v1/jobs/<id>``."""
    return {h["host_id"]: (h["state"], h["reason"]) for h in job.get("hosts", [])}


async def test_a_daemon_killed_mid_preheat_fails_the_job_with_its_reason(
        nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = tmp_path / "origin"
    files.mkdir()
    (files / "big.bin").write_bytes(os.urandom(16 << 20))
    origin = Origin(files, OriginFaults(rate=32 << 10))  # minutes for the whole file
    base = await origin.start()
    scheduler = ChildService("scheduler", ["scheduler", "--nats", nats_url, "--data-dir",
                                           str(tmp_path / "scheduler"), "--keepalive-timeout",
                                           "12"], tmp_path / "scheduler", SECRET)
    seed = daemon_service("seed", nats_url, tmp_path / "seed", SECRET, seed=True)
    peer = daemon_service("peer", nats_url, tmp_path / "peer", SECRET)
    try:
        with children(scheduler, seed, peer):
            async with running_manager(nats_url, tmp_path / "m", monkeypatch) as m:
                root = await eventually(lambda: m.try_sign_in("root", ROOT_PASSWORD))

                async def both_alive() -> bool:
                    _, hosts = await m.call("GET", "/api/v1/hosts", token=root)
                    return sum(h["state"] == "alive" for h in hosts) == 2

                await eventually(both_alive)  # all_peers targets the hosts known alive
                status, job = await m.call("POST", "/api/v1/jobs", {"type": "preheat", "args": {
                    "url": f"{base}/big.bin", "scope": "all_peers"}}, root)
                assert status == 201, job
                victim, survivor = str(peer.endpoints["host_id"]), str(seed.endpoints["host_id"])

                async def victim_running() -> bool:
                    _, status = await m.call("GET", f"/oapi/v1/jobs/{job['id']}", token=root)
                    return _by_host(status).get(victim, ("",))[0] == "running"

                await eventually(victim_running, timeout=30)
                peer.kill()

                done = await eventually(lambda: job_outcome(m, root, job["id"]), timeout=90)
                why = f"host {victim} left: keepalive timeout"
                assert done["job"]["state"] == "failed" and why in done["job"]["reason"], done
                hosts = _by_host(done)
                assert hosts[victim] == ("failed", why)
                assert hosts[survivor][0] == "running"  # the job waited for no one else
    finally:
        await origin.stop()
