"""A local swarm's moving parts for tests and benchmarks: an origin HTTP server that counts
the bytes it serves and can misbehave on purpose, and daemons run as child processes of
``damselfly daemon`` or in this event loop."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import anyio
import pytest
from aiohttp import web
from nats.js import JetStreamContext

from damselfly.events.bus import Consumer
from damselfly.events.codec import AnyEvent
from damselfly.events.grants import KEY_ENV, PUBKEY_ENV
from damselfly.services.launcher.origin import Origin as LocalOrigin
from damselfly.services.launcher.up import write_grant_keys
from damselfly.services.peer.daemon import DaemonConfig, serve
from damselfly.services.peer.fetchbook import Settings
from damselfly.services.runtime.procs import DAMSELFLY, spawn, stop, wait_ready


@dataclass
class OriginFaults:
    """Misbehaviour on purpose: answer ``fail_status`` to the first ``fail_first`` requests
    (all of them when ``fail_always``), drop the connection once after ``reset_after`` bytes,
    serve at most ``rate`` bytes/s (0: unthrottled), and, when ``hang``, take requests and
    never answer (a stopped process: the kernel still accepts connections)."""

    fail_first: int = 0
    fail_always: bool = False
    fail_status: int = 503
    reset_after: int = 0
    rate: float = 0.0
    hang: bool = False


@dataclass
class Origin(LocalOrigin):
    """The demo's origin, with misbehaviour on purpose (``faults``)."""

    faults: OriginFaults = field(default_factory=OriginFaults)

    async def refuse(self, request: web.Request) -> web.StreamResponse | None:
        while self.faults.hang and request.transport and not request.transport.is_closing():
            await asyncio.sleep(0.05)  # until the client gives up (or the fault is lifted)
        if self.faults.fail_always or len(self.requests) <= self.faults.fail_first:
            return web.Response(status=self.faults.fail_status, text="injected failure\n")
        return None

    def sending(self, request: web.Request, chunk: bytes) -> bool:
        if self.faults.reset_after and self.bytes_served + len(chunk) > self.faults.reset_after:
            self.faults.reset_after = 0
            assert request.transport is not None
            request.transport.abort()
            return False
        return True

    async def sent(self, chunk: bytes) -> None:
        if self.faults.rate:
            await asyncio.sleep(len(chunk) / self.faults.rate)


class ChildService:
    """One ``damselfly`` subcommand as a child process; its endpoints come from its ready
    file. ``spawn`` then ``wait`` lets several start at once."""

    def __init__(self, name: str, argv: list[str], data_dir: Path, secret: str,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.data_dir, self.secret = name, data_dir, secret
        self.env = {"DAMSELFLY_CLUSTER_SECRET": secret, **(env or {})}
        self.argv = [*DAMSELFLY, *argv]
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoints: dict[str, object] = {}
        self._ready = data_dir / "ready.json"
        self.log_path = data_dir / "service.log"

    def spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._ready.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = spawn([*self.argv, "--ready-file", str(self._ready)], log, self.env)

    def wait(self, timeout: float = 30.0) -> dict[str, object]:
        """Raises ``RuntimeError`` naming the log when it exits or stays silent."""
        assert self.proc is not None
        try:
            self.endpoints = wait_ready(self._ready, self.proc, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{self.name}: {exc}; see {self.log_path}") from exc
        return self.endpoints

    def start(self) -> dict[str, object]:
        self.spawn()
        return self.wait()

    def kill(self) -> None:
        """SIGKILL: no goodbye, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop([self.proc])


def daemon_service(name: str, nats_url: str, data_dir: Path, secret: str, *extra: str,
                   cluster: str = "default", seed: bool = False,
                   grant_pub: Path | None = None) -> ChildService:
    """``grant_pub``: the schedulers' public key, so that it serves only granted children."""
    return ChildService(name, ["daemon", "--nats", nats_url, "--data-dir", str(data_dir),
                               "--cluster", cluster, "--api-port", "0",
                               *(["--seed"] if seed else []), *extra], data_dir, secret,
                        {PUBKEY_ENV: str(grant_pub)} if grant_pub else None)


def grant_keys(directory: Path) -> tuple[Path, Path]:
    """A key pair for upload grants, as ``damselfly up`` makes one: ``(key, public key)``."""
    directory.mkdir(parents=True, exist_ok=True)
    key, pub = directory / "grant.key", directory / "grant.pub"
    write_grant_keys(key, pub)
    return key, pub


@dataclass
class Swarm:
    """A scheduler, one seed peer and ``peers`` peers as child processes (NATS and the
    origin are the caller's). Use as a context manager: every child ends with it."""

    nats_url: str
    data_dir: Path
    peers: int
    cluster: str = "default"
    secret: str = "swarm-secret"
    daemon_args: tuple[str, ...] = ()
    services: list[ChildService] = field(default_factory=list)
    scheduler_env: dict[str, str] = field(default_factory=dict)
    """What another scheduler of this swarm needs in its environment (the grant key)."""

    def __enter__(self) -> Self:
        d = self.data_dir
        key, pub = grant_keys(d)
        self.scheduler_env = {KEY_ENV: str(key)}
        scheduler = ChildService("scheduler", ["scheduler", "--nats", self.nats_url,
                                               "--cluster", self.cluster, "--data-dir",
                                               str(d / "scheduler")], d / "scheduler",
                                 self.secret, self.scheduler_env)
        self.services = [scheduler, *(
            daemon_service(name, self.nats_url, d / name, self.secret, *self.daemon_args,
                           cluster=self.cluster, seed=name == "seed-peer", grant_pub=pub)
            for name in ["seed-peer", *(f"peer-{i}" for i in range(1, self.peers + 1))])]
        try:
            for service in self.services:
                service.spawn()
            for service in self.services:
                service.wait(60)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def peer_services(self) -> list[ChildService]:
        return [s for s in self.services if s.name.startswith("peer-")]

    def stop(self) -> None:
        stop([s.proc for s in reversed(self.services) if s.proc is not None])

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@asynccontextmanager
async def daemon_in_process(cfg: DaemonConfig) -> AsyncIterator[dict[str, object]]:
    """Run a daemon in this event loop (lighter than a process); yields its endpoints and
    stops it, HostLeft and all, on exit. ``cfg.ready_file`` must be set."""
    assert cfg.ready_file is not None
    cfg.ready_file.unlink(missing_ok=True)
    stopping = asyncio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve, cfg, stopping)
        with anyio.fail_after(20):
            while not cfg.ready_file.exists():
                await anyio.sleep(0.02)
        try:
            yield json.loads(cfg.ready_file.read_text())
        finally:
            stopping.set()


@asynccontextmanager
async def origin_daemon(tmp_path: Path, nats_url: str, monkeypatch: pytest.MonkeyPatch,
                        env: dict[str, str]) -> AsyncIterator[str]:
    """A daemon in this loop, with no scheduler to wait for, whose environment holds
    ``env`` (an origin's endpoint and keys); yields its API URL."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = DaemonConfig(nats_url=nats_url, data_dir=tmp_path / "d", secret="s",
                       cluster=f"c{secrets.token_hex(4)}", api_port=0,
                       ready_file=tmp_path / "ready.json",
                       settings=Settings(schedule_timeout=0.3, source_backoff=0.05))
    async with daemon_in_process(cfg) as endpoints:
        yield str(endpoints["api_url"])


async def read_events(js: JetStreamContext, stream: str, filter_subject: str) -> list[AnyEvent]:
    """Every event stored so far on ``filter_subject``, in order (a fetch returns only what
    is ready at once, so fetch until one comes back empty)."""
    consumer = Consumer(js, stream=stream, filter_subject=filter_subject, batch=1000)
    events: list[AnyEvent] = []
    try:
        while batch := await consumer.fetch(timeout=0.5):
            events.extend(d.event for d in batch)
    finally:
        await consumer.close()
    return events
