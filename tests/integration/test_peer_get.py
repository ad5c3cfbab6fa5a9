"""``damselfly get`` driven like a user: flags, atomic output, one-line errors, recursive
listings, and starting a daemon when none answers."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from nats.aio.msg import Msg

from damselfly.events.bus import Publisher
from damselfly.events.codec import decode
from damselfly.events.ids import derived_id
from damselfly.events.sched import BackToSourceOrdered
from damselfly.events.taskid import task_id
from damselfly.events.tasks import PeerRegistered
from damselfly.services.peer.daemon import DaemonConfig
from damselfly.services.peer.fetchbook import Settings
from damselfly.services.runtime.natsconn import connect, subscribed
from damselfly.services.runtime.procs import DAMSELFLY
from tests.support.swarm import Origin, daemon_in_process
from tests.support.wait import eventually

pytestmark = pytest.mark.anyio
SIZE = 300_000


@asynccontextmanager
async def world(tmp_path: Path, nats_url: str) -> AsyncIterator[tuple[str, str]]:
    www = tmp_path / "www"
    (www / "tree" / "sub").mkdir(parents=True)
    (www / "f.bin").write_bytes(os.urandom(SIZE))
    (www / "tree" / "a.txt").write_text("alpha")
    (www / "tree" / "sub" / "b.txt").write_text("beta")
    origin = Origin(www)
    await origin.start()
    cfg = DaemonConfig(nats_url=nats_url, data_dir=tmp_path / "d", secret="s",
                       cluster=f"c{secrets.token_hex(4)}", api_port=0,
                       ready_file=tmp_path / "ready.json",
                       settings=Settings(schedule_timeout=0.3))
    try:
        async with daemon_in_process(cfg) as endpoints:
            yield origin.url, str(endpoints["api_url"])
    finally:
        await origin.stop()


async def get(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = await anyio.run_process([*DAMSELFLY, "get", *args],
                                     check=False, env={**os.environ, **(env or {})})
    return result.returncode, result.stderr.decode()


async def test_get_writes_the_verified_file(tmp_path: Path, nats_url: str) -> None:
    async with world(tmp_path, nats_url) as (origin, api):
        want = hashlib.sha256((tmp_path / "www" / "f.bin").read_bytes()).hexdigest()
        out = tmp_path / "out" / "f.bin"
        out.parent.mkdir()
        rc, err = await get(f"{origin}/f.bin", "-O", str(out), "--endpoint", api,
                            "--digest", f"sha256:{want}", "-H", "X-Test: 1", "--tag", "t",
                            "--piece-length", "65536", "--no-progress")
    assert rc == 0, err
    assert hashlib.sha256(out.read_bytes()).hexdigest() == want
    assert os.listdir(out.parent) == ["f.bin"]  # no temporary file left beside it


async def test_failures_are_one_line_and_leave_no_output(tmp_path: Path, nats_url: str) -> None:
    async with world(tmp_path, nats_url) as (origin, api):
        out = tmp_path / "out.bin"
        cases = {
            "digest mismatch": ["--digest", "sha256:" + "0" * 64],
            "404 Not Found": [],
            "bad digest": ["--digest", "md5:00"],
            "bad header": ["-H", "nocolon"],
            "timed out": ["--timeout", "0.001"],
        }
        results = {}
        for reason, flags in cases.items():
            url = f"{origin}/missing" if reason.startswith("404") else f"{origin}/f.bin"
            results[reason] = await get(url, "-O", str(out), "--endpoint", api, "--no-progress",
                                        *flags)
        results["no daemon"] = await get(f"{origin}/f.bin", "-O", str(out), "--endpoint",
                                         str(tmp_path / "nobody.sock"))
    for reason, (rc, err) in results.items():
        lines = err.strip().splitlines()
        assert rc == 1 and len(lines) == 1 and lines[0].startswith("damselfly get: "), (reason, err)
    assert "digest mismatch" in results["digest mismatch"][1]
    assert "404 Not Found" in results["404 Not Found"][1]
    assert "no daemon answers at" in results["no daemon"][1]
    assert "timed out after 0.001s" in results["timed out"][1]
    assert not out.exists()


async def test_recursive_get_mirrors_a_listing(tmp_path: Path, nats_url: str) -> None:
    async with world(tmp_path, nats_url) as (origin, api):
        rc, err = await get(f"{origin}/tree/", "-O", str(tmp_path / "mirror"), "-r",
                            "--endpoint", api, "--no-progress")
    assert rc == 0, err
    assert (tmp_path / "mirror" / "a.txt").read_text() == "alpha"
    assert (tmp_path / "mirror" / "sub" / "b.txt").read_text() == "beta"


async def test_get_starts_a_daemon_when_none_answers(tmp_path: Path, nats_url: str) -> None:
    cluster = "default"
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "f.bin").write_bytes(b"z" * 5000)
    origin = Origin(tmp_path / "www")
    await origin.start()
    nc = await connect(nats_url, "test")
    publisher = Publisher(nc.jetstream())

    async def order_source(msg: Msg) -> None:  # a scripted scheduler: straight to the origin
        e = decode(msg.data)
        assert isinstance(e, PeerRegistered)
        await publisher.publish(BackToSourceOrdered(
            id=derived_id(e.id, "test"), cluster=cluster, task_id=e.task_id, peer_id=e.peer_id,
            trigger_id=e.id, reason="scripted"))

    await nc.subscribe(f"df.task.{cluster}.*.*.*.*.registered", cb=order_source)
    await subscribed(nc)  # the SUB reaches the server before the daemon registers
    home = tmp_path / "home"
    pid_file = home / "daemon" / "daemon.pid"
    try:
        rc, err = await get(f"{origin.url}/f.bin", "-O", str(tmp_path / "out.bin"),
                            "--no-progress",
                            env={"DAMSELFLY_HOME": str(home), "DAMSELFLY_NATS_URL": nats_url,
                                 "DAMSELFLY_CLUSTER_SECRET": "s"})
        ready = json.loads((home / "daemon" / "ready.json").read_text())
    finally:
        if pid_file.exists():
            await stop_pid(int(pid_file.read_text()))
        await nc.close()
        await origin.stop()
    assert rc == 0, err
    assert (tmp_path / "out.bin").read_bytes() == b"z" * 5000
    assert ready["api_socket"] == str(home / "daemon" / "api.sock")


async def stop_pid(pid: int) -> None:
    """SIGTERM a process this test did not spawn directly and wait until it is gone."""
    os.kill(pid, signal.SIGTERM)

    async def gone() -> bool:
        return not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)

    await eventually(gone, timeout=15)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return "Z"


async def test_dfget_flags_overwrite_globs_limits_links_and_task_ids(
        tmp_path: Path, nats_url: str) -> None:
    async with world(tmp_path, nats_url) as (origin, api):
        out = tmp_path / "out.bin"
        out.write_text("precious")
        refused = await get(f"{origin}/f.bin", "-O", str(out), "-e", api)
        kept = out.read_text()
        replaced = await get(f"{origin}/f.bin", "-O", str(out), "-e", api,
                             env={"DFGET_OVERWRITE": "true"})
        mirror = tmp_path / "mirror"
        globbed = await get(f"{origin}/tree/", "-O", str(mirror), "-r", "-I", "sub/*",
                            "-e", api, "--max-concurrent-requests", "2")
        too_many = await get(f"{origin}/tree/", "-O", str(tmp_path / "m2"), "-r",
                             "--max-files", "1", "-e", api)
        linked = tmp_path / "linked.bin"
        link = await get(f"{origin}/f.bin", "-O", str(linked), "-e", api, "--force-hard-link")
        named = tmp_path / "named.bin"
        by_content = await get(f"{origin}/f.bin", "-O", str(named), "-e", api,
                               "--content-for-calculating-task-id", "model-v1", "-p", "3")
        tasks = list((tmp_path / "d" / "tasks").iterdir())
    rc, err = refused
    assert rc == 1 and "exists: give --overwrite" in err and kept == "precious"
    assert replaced[0] == 0, replaced[1]
    assert out.read_bytes() == (tmp_path / "www" / "f.bin").read_bytes()
    assert globbed[0] == 0, globbed[1]
    assert (mirror / "sub" / "b.txt").read_text() == "beta" and not (mirror / "a.txt").exists()
    assert too_many[0] == 1 and "more than --max-files 1" in too_many[1]
    assert link[0] == 0, link[1]
    assert linked.stat().st_nlink == 2  # the daemon's stored copy and this one
    assert by_content[0] == 0, by_content[1]
    assert named.read_bytes() == out.read_bytes()
    assert task_id("model-v1") in {t.name for t in tasks}
