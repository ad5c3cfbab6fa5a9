"""``damselfly daemon`` as a process: its secret, its ready file, its announcements, and a
clean stop on SIGTERM."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from pathlib import Path

import anyio
import pytest

from damselfly.events.hosts import HostAnnounced, HostLeft
from damselfly.services.runtime.natsconn import connect
from damselfly.services.runtime.procs import DAMSELFLY
from tests.support.swarm import ChildService, read_events

pytestmark = pytest.mark.anyio


def test_refuses_to_start_without_a_secret(tmp_path: Path, nats_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DAMSELFLY_CLUSTER_SECRET"}
    result = subprocess.run([*DAMSELFLY, "daemon", "--nats", nats_url,
                             "--data-dir", str(tmp_path / "d")], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "damselfly daemon: no cluster secret: set DAMSELFLY_CLUSTER_SECRET or pass --secret-file"]


async def test_announces_itself_and_leaves_cleanly_on_sigterm(
        tmp_path: Path, nats_url: str) -> None:
    cluster = f"c{secrets.token_hex(4)}"
    (tmp_path / "secret").write_text("from-a-file\n")
    daemon = ChildService("seed", ["daemon", "--nats", nats_url, "--data-dir",
                                   str(tmp_path / "d"), "--cluster", cluster, "--seed",
                                   "--api-port", "0", "--secret-file",
                                   str(tmp_path / "secret"), "--idc", "idc1"], tmp_path / "d", "")
    await anyio.to_thread.run_sync(daemon.start)
    endpoints = daemon.endpoints
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    returncode = await anyio.to_thread.run_sync(daemon.proc.wait, 30)
    nc = await connect(nats_url, "test")
    try:
        events = await read_events(nc.jetstream(), "DF_HOSTS", f"df.host.{cluster}.>")
    finally:
        await nc.close()
    assert returncode == 0
    assert set(endpoints) == {"host_id", "api_socket", "api_url", "upload_url"}
    assert endpoints["api_socket"] == str(tmp_path / "d" / "api.sock")
    announced = [e for e in events if isinstance(e, HostAnnounced)]
    assert len(announced) == 1 and announced[0].seed and announced[0].idc == "idc1"
    assert announced[0].upload_url == endpoints["upload_url"]
    assert announced[0].host_id == endpoints["host_id"]
    assert isinstance(events[-1], HostLeft) and events[-1].host_id == endpoints["host_id"]
