"""File preheat end to end in one process: the control API and coordinator, seed hosts
running the job worker over their own downloads, and a real HTTP origin on loopback that
demands a login — so the sealed credentials must reach the seed peer intact."""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from damselfly.events.bus import Publisher
from damselfly.events.ids import new_id
from damselfly.events.jobs import PreheatRequested
from damselfly.events.secrets import seal
from damselfly.events.taskid import task_id
from damselfly.services.manager import preheat
from damselfly.services.peer.storage import Storage
from tests.support.control import (
    ROOT_PASSWORD,
    SECRET,
    job_outcome,
    peer_host,
    running_manager,
)
from tests.support.wait import eventually

pytestmark = pytest.mark.anyio
LOGIN = ("puller", "origin-password-5d1e")


@contextlib.asynccontextmanager
async def origin(root: Path) -> AsyncIterator[str]:
    """Serves ``root`` with Range support, only to requests with the right basic login."""
    expected = "Basic " + base64.b64encode(":".join(LOGIN).encode()).decode()

    async def serve(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401, text="login required")
        path = root / request.match_info["name"]
        if not path.is_file():
            return web.Response(status=404, text="no such file")
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


async def test_preheat_a_file_through_the_api_and_from_outside(
        nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = tmp_path / "origin"
    files.mkdir()
    content = os.urandom(300_000)
    (files / "model.bin").write_bytes(content)
    (files / "other.bin").write_bytes(content[::-1])
    parts = {name: os.urandom(70_000) for name in ("part-1.bin", "part-2.bin")}
    for name, data in parts.items():
        (files / name).write_bytes(data)
    async with (origin(files) as base, running_manager(nats_url, tmp_path / "m", monkeypatch) as m,
                peer_host(nats_url, tmp_path / "seed-1", "seed-1") as one,
                peer_host(nats_url, tmp_path / "seed-2", "seed-2") as two):
        root = await eventually(lambda: m.try_sign_in("root", ROOT_PASSWORD))
        own = await m.nc.jetstream().consumer_info("DF_JOBS", "jobs-seed-1")
        assert own.config.inactive_threshold == 7 * 24 * 3600  # gone hosts leave no consumer

        async def both_seeds_alive() -> bool:  # an all_seed_peers job targets those it knows
            status, seeds = await m.call("GET", "/api/v1/seed-peers?state=active", token=root)
            return status == 200 and {s["host_id"] for s in seeds} >= {"seed-1", "seed-2"}

        await eventually(both_seeds_alive)
        args = {"url": f"{base}/model.bin", "scope": "all_seed_peers", "username": LOGIN[0],
                "password": LOGIN[1], "piece_length": 65536}
        body = {"type": "preheat", "args": args}
        status, created = await m.call("POST", "/api/v1/jobs", body, root)
        assert status == 201, created
        done = await eventually(lambda: job_outcome(m, root, created["id"]), timeout=60)
        assert done["job"]["state"] == "succeeded", done
        task = task_id(f"{base}/model.bin", piece_length=65536)
        assert {(h["host_id"], h["task_id"], h["state"]) for h in done["hosts"]} == {
            ("seed-1", task, "succeeded"), ("seed-2", task, "succeeded")}
        for host in (one, two):
            got = hashlib.sha256(_read(host.storage, task)).digest()
            assert got == hashlib.sha256(content).digest()

        # Any system may publish the request itself and gets the same result.
        outside = PreheatRequested(
            id=new_id(), at=time.time(), job_id=new_id(), url=f"{base}/other.bin",
            scope="single_seed_peer", sealed_credentials=seal(SECRET, {
                "username": LOGIN[0], "password": LOGIN[1]}))
        await Publisher(m.nc.jetstream()).publish(outside)
        done = await eventually(lambda: job_outcome(m, root, outside.job_id), timeout=60)
        assert done["job"]["state"] == "succeeded", done
        other = task_id(f"{base}/other.bin")
        holders = [h.storage for h in (one, two) if h.storage.get(other) is not None]
        assert len(holders) == 1 and _read(holders[0], other) == content[::-1]

        # A get_task job tells who holds a task.
        status, asked = await m.call("POST", "/api/v1/jobs", {
            "type": "get_task", "args": {"url": f"{base}/model.bin", "piece_length": 65536}},
            root)
        assert status == 201 and asked["task_id"] == task
        done = await eventually(lambda: job_outcome(m, root, asked["id"]), timeout=60)
        assert done["job"]["state"] == "succeeded"
        assert {(h["host_id"], h["reason"]) for h in done["hosts"]} == {
            ("seed-1", "held"), ("seed-2", "held")}

        # A sync_peers job (Dragonfly's body, no args) is a census: every task on every host.
        status, synced = await m.call("POST", "/api/v1/jobs", {
            "type": "sync_peers", "scheduler_cluster_ids": None}, root)
        assert status == 201, synced
        done = await eventually(lambda: job_outcome(m, root, synced["id"]), timeout=60)
        assert done["job"]["state"] == "succeeded", done
        held = {(name, tf.task_id) for name, host in (("seed-1", one), ("seed-2", two))
                for tf in host.storage.tasks()}
        assert len(held) == 3  # model.bin on both seeds, other.bin on one
        assert {(h["host_id"], h["task_id"], h["reason"]) for h in done["hosts"]} == {
            (host, task, "held") for host, task in held}, done

        # Dragonfly's `urls` (combined with `url`): one job, each URL on every target.
        urls = [f"{base}/{name}" for name in parts]
        status, created = await m.call("POST", "/api/v1/jobs", {"type": "preheat", "args": {
            "url": urls[0], "urls": urls, "scope": "all_seed_peers", "username": LOGIN[0],
            "password": LOGIN[1]}}, root)
        assert status == 201 and created["urls"] == urls, created
        done = await eventually(lambda: job_outcome(m, root, created["id"]), timeout=60)
        assert done["job"]["state"] == "succeeded" and done["job"]["urls"] == urls, done
        tasks = {task_id(url): name for url, name in zip(urls, parts, strict=True)}
        assert {(h["host_id"], h["task_id"], h["state"]) for h in done["hosts"]} == {
            (host, t, "succeeded") for host in ("seed-1", "seed-2") for t in tasks}
        for host in (one, two):
            assert all(_read(host.storage, t) == parts[name] for t, name in tasks.items())
        for bad, why in (({"scope": "all_peers"}, "args: give url, or urls"),
                         ({"urls": [urls[0], "ftp://x/y"]}, "args.urls.1: String should")):
            status, refused = await m.call("POST", "/api/v1/jobs", {"type": "preheat",
                                                                    "args": bad}, root)
            assert status == 422 and refused["detail"].startswith(why), refused

        # A missing file fails the job with the origin's reason.
        args |= {"url": f"{base}/missing.bin", "scope": "single_seed_peer"}
        status, created = await m.call("POST", "/api/v1/jobs", body, root)
        done = await eventually(lambda: job_outcome(m, root, created["id"]), timeout=60)
        assert done["job"]["state"] == "failed" and "404" in str(done["job"]["reason"])


def _read(storage: Storage, task: str) -> bytes:
    tf = storage.get(task)
    assert tf is not None and tf.complete
    return tf.data_path.read_bytes()


async def test_the_preheat_command_follows_the_job_to_its_end(
        nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    files = tmp_path / "origin"
    files.mkdir()
    for name in ("tool.tar", "docs.tar"):
        (files / name).write_bytes(os.urandom(100_000))
    async with (origin(files) as base, running_manager(nats_url, tmp_path / "m", monkeypatch) as m,
                peer_host(nats_url, tmp_path / "seed", "seed-cli") as seed):
        await eventually(lambda: m.try_sign_in("root", ROOT_PASSWORD))
        monkeypatch.setenv("DAMSELFLY_PASSWORD", ROOT_PASSWORD)
        monkeypatch.setenv("DAMSELFLY_SOURCE_PASSWORD", LOGIN[1])

        def command(*argv: str) -> int:
            parser = argparse.ArgumentParser()
            preheat.register(parser.add_subparsers())
            args = parser.parse_args(["preheat", *argv, "--manager", m.url, "--user", "root",
                                      "--timeout", "60"])
            return int(args.run(args))

        assert await anyio.to_thread.run_sync(
            command, f"{base}/tool.tar", f"{base}/docs.tar", "--username", LOGIN[0]) == 0
        out = capsys.readouterr().out
        for name in ("tool.tar", "docs.tar"):  # several URLs make one job
            task = task_id(f"{base}/{name}")
            assert _read(seed.storage, task) == (files / name).read_bytes()
            assert f"seed-cli\t{task}\tsucceeded" in out

        with pytest.raises(RuntimeError, match="failed: .*401"):
            await anyio.to_thread.run_sync(command, f"{base}/tool.tar", "--tag", "no-login")
