"""The benchmarks' laboratory: a scratch folder and every process started in it, ended
together on exit; the capped origin; a Damselfly cluster (NATS, scheduler, N daemons with
their own upload caps); and clients that time downloads through the daemons' local API.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import aiohttp
import anyio

from damselfly.events.bus import Publisher
from damselfly.events.config import ClusterConfig, ClusterConfigSet
from damselfly.events.ids import new_id
from damselfly.events.streams import ensure_streams
from damselfly.services.launcher.broker import start_broker
from damselfly.services.peer.get import ApiClient
from damselfly.services.peer.request import DownloadRequest
from damselfly.services.runtime.natsconn import connect
from damselfly.services.runtime.procs import spawn, stop, wait_ready

REPO: Final = Path(__file__).resolve().parent.parent
MiB: Final = 1 << 20
CLUSTER: Final = "default"
T = TypeVar("T")


class Lab:
    """A scratch folder plus the processes started in it; the context exit ends them all
    (children first, the broker last) and removes the folder."""

    def __init__(self, name: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=f"damselfly-bench-{name}-")
        self.root = Path(self._tmp.name)
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._brokers: list[subprocess.Popen[bytes]] = []
        self._stack = ExitStack()
        # Children import bench.* too, from wherever the benchmark was started.
        self.env = {"DAMSELFLY_CLUSTER_SECRET": secrets.token_hex(32), "PYTHONPATH": str(REPO)}

    def spawn(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start a child logging to ``logs/<name>.log``. Raises ``OSError``."""
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = spawn(list(argv), log, self.env)
        self._procs.append(proc)
        return proc

    def service(self, name: str, argv: Sequence[str], timeout: float = 60.0) -> dict[str, Any]:
        """Start a child given ``--ready-file`` and wait for its endpoints. Raises
        ``RuntimeError`` naming the log when it does not come up."""
        proc = self.spawn(name, [*argv, "--ready-file", str(self.ready_path(name))])
        return self.ready(name, proc, timeout)

    def ready_path(self, name: str) -> Path:
        return self.root / f"{name}.ready.json"

    def ready(self, name: str, proc: subprocess.Popen[bytes], timeout: float = 60.0
              ) -> dict[str, Any]:
        try:
            return wait_ready(self.ready_path(name), proc, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{name}: {exc}; see {self.logs / (name + '.log')}") from None

    def cpu_seconds(self) -> float:
        """User + system CPU time the children still running (and the broker) have used."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for proc in [*self._procs, *self._brokers]:
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue  # it has exited: nothing left to read
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def ended(self) -> None:
        """End every child started so far (SIGTERM, then SIGKILL after a grace)."""
        stop(list(reversed(self._procs)))
        self._procs.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.ended()
            self._stack.close()
        finally:
            self._tmp.cleanup()

    def broker_url(self, config: ClusterConfig) -> str:
        """A NATS server with the streams and the scheduler cluster's ``config`` in force."""
        broker = start_broker(self.root / "nats")
        self._stack.callback(broker.stop)
        self._brokers.append(broker.proc)
        asyncio.run(_prepare_cluster(broker.url, config))
        return broker.url


async def _prepare_cluster(url: str, config: ClusterConfig) -> None:
    nc = await connect(url, "damselfly-bench")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await Publisher(js).publish(ClusterConfigSet(id=new_id(), at=time.time(),
                                                     cluster=CLUSTER, config=config))
    finally:
        await nc.drain()


def python_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def write_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes; returns ``sha256:<hex>``."""
    data = os.urandom(size)
    path.write_bytes(data)
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def start_origin(lab: Lab, root: Path, rate: float) -> str:
    """The capped origin serving ``root`` under ``/files/``; returns its base URL."""
    argv = python_cli("bench.swarm_origin", "--root", str(root), "--rate", str(rate))
    return str(lab.service("origin", argv)["url"])


def origin_bytes_sent(origin_url: str) -> int:
    with urllib.request.urlopen(f"{origin_url}/stats", timeout=10) as response:
        return int(json.load(response)["bytes_sent"])


@dataclass(frozen=True)
class SwarmRun:
    """One swarm's outcome: each peer's completion seconds from the common start, what the
    origin sent, and the CPU seconds its processes used while the peers downloaded (None
    where the clients exit when done, so their CPU time cannot be read)."""

    times: list[float]
    origin_bytes: int
    cpu_s: float | None


@dataclass(frozen=True)
class DaemonCaps:
    """A daemon's rate settings: ``upload_rate`` bytes/s (0: none); ``upload_limit``
    concurrent uploads (beyond it children get 503 and try another parent; None: the
    daemon's default)."""

    upload_rate: float = 0.0
    upload_limit: int | None = None


def start_damselfly(lab: Lab, peers: int, caps: DaemonCaps,
                    config: ClusterConfig) -> list[dict[str, Any]]:
    """NATS, a scheduler under ``config`` and ``peers`` daemons (no seed peer: the origin
    is the only server, as in the bound); returns each daemon's ready endpoints."""
    nats = lab.broker_url(config)
    lab.service("scheduler", python_cli("damselfly.services.cli", "scheduler", "--nats", nats,
                                        "--data-dir", str(lab.root / "scheduler")))
    started = []
    for i in range(peers):
        argv = python_cli("damselfly.services.cli", "daemon", "--nats", nats,
                          "--data-dir", str(lab.root / f"peer{i}"),
                          "--upload-rate", str(caps.upload_rate),
                          "--ready-file", str(lab.ready_path(f"peer{i}")))
        if caps.upload_limit is not None:
            argv += ["--upload-limit", str(caps.upload_limit)]
        started.append((f"peer{i}", lab.spawn(f"peer{i}", argv)))
    return [lab.ready(name, proc, timeout=30.0 + 2.0 * peers) for name, proc in started]


async def _download(endpoint: str, request: DownloadRequest, t0: float) -> dict[str, Any]:
    client = ApiClient(endpoint)
    try:
        status = await client.start(request)
        async for update in client.progress(status["task_id"]):
            status = update
    finally:
        await client.close()
    if status.get("state") != "succeeded":
        raise RuntimeError(f"{endpoint}: {status.get('error') or status.get('state')}")
    return {**status, "seconds": time.monotonic() - t0}


async def run_all(jobs: Sequence[Callable[[], Awaitable[T]]], timeout: float,
                  in_flight: int = 0) -> list[T]:
    """Run the jobs concurrently (at most ``in_flight`` at a time; 0: all) and return their
    results in order. Raises ``RuntimeError`` naming the first failure once the others have
    ended, or when ``timeout`` seconds pass."""
    results: list[T | None] = [None] * len(jobs)
    errors: list[str] = []
    limiter = anyio.Semaphore(in_flight or max(len(jobs), 1))

    async def one(i: int) -> None:
        async with limiter:
            try:
                results[i] = await jobs[i]()
            except (RuntimeError, OSError, aiohttp.ClientError) as exc:
                errors.append(str(exc) or repr(exc))

    try:
        with anyio.fail_after(timeout):
            async with anyio.create_task_group() as tg:
                for i in range(len(jobs)):
                    tg.start_soon(one, i)
    except TimeoutError:
        done = sum(r is not None for r in results)
        raise RuntimeError(f"{done}/{len(jobs)} finished in {timeout:.0f}s") from None
    if errors:
        raise RuntimeError(f"{len(errors)}/{len(jobs)} failed; first: {errors[0]}")
    return [r for r in results if r is not None]


async def download_everywhere(endpoints: Sequence[str], request: DownloadRequest,
                              timeout: float) -> list[dict[str, Any]]:
    """Ask every daemon for the same download at once; each one's final status plus its
    completion ``seconds`` from the common start. Raises ``RuntimeError`` on a failure or
    after ``timeout`` seconds."""
    t0 = time.monotonic()
    return await run_all([partial(_download, e, request, t0) for e in endpoints], timeout)


def curl_everywhere(lab: Lab, url: str, clients: int, timeout: float) -> list[float]:
    """The client/server baseline: ``clients`` curl processes fetch ``url`` at once; each
    one's completion seconds from the common start. Raises ``RuntimeError`` when one fails
    or they do not all finish within ``timeout`` seconds."""
    out = lab.root / "curl"
    out.mkdir(exist_ok=True)
    t0 = time.monotonic()
    procs = [lab.spawn(f"curl{i}", ["curl", "-sS", "-f", "--max-time", str(int(timeout)),
                                    "-o", str(out / f"{i}"), url]) for i in range(clients)]
    times: list[float | None] = [None] * clients
    while None in times:
        for i, proc in enumerate(procs):
            if times[i] is None and proc.poll() is not None:
                if proc.returncode != 0:
                    raise RuntimeError(f"curl {url} exited with {proc.returncode}; "
                                       f"see {lab.logs / f'curl{i}.log'}")
                times[i] = time.monotonic() - t0
        if time.monotonic() - t0 > timeout + 10:
            raise RuntimeError(f"curl clients still running after {timeout:.0f}s")
        time.sleep(0.02)
    return [t for t in times if t is not None]
