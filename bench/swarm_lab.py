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

import anyio

from bench.netlab import Host
from damselfly.events.bus import Publisher
from damselfly.events.config import ClusterConfig, ClusterConfigSet
from damselfly.events.grants import KEY_ENV, PUBKEY_ENV, GrantSigner
from damselfly.events.ids import new_id
from damselfly.events.streams import ensure_streams
from damselfly.services.launcher.broker import start_broker
from damselfly.services.launcher.up import write_grant_keys
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
        self._named: dict[str, subprocess.Popen[bytes]] = {}
        self._brokers: list[subprocess.Popen[bytes]] = []
        self._stack = ExitStack()
        # Children import bench.* too, from wherever the benchmark was started. Upload
        # grants as ``damselfly up`` has them (a daemon reads only the public key).
        key, pub = self.root / "grant.key", self.root / "grant.pub"
        write_grant_keys(key, pub)
        self.env = {"DAMSELFLY_CLUSTER_SECRET": secrets.token_hex(32), "PYTHONPATH": str(REPO),
                    KEY_ENV: str(key), PUBKEY_ENV: str(pub)}
        self.grants = GrantSigner.from_file(key)

    def spawn(self, name: str, argv: Sequence[str], host: Host | None = None
              ) -> subprocess.Popen[bytes]:
        """Start a child logging to ``logs/<name>.log``, inside ``host``'s network namespace
        when given. Raises ``OSError``."""
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = spawn(host.exec(argv) if host else list(argv), log, self.env)
        self._procs.append(proc)
        self._named[name] = proc
        return proc

    def named(self, names: Sequence[str]) -> list[subprocess.Popen[bytes]]:
        """The children started under ``names``."""
        return [self._named[n] for n in names]

    def service(self, name: str, argv: Sequence[str], host: Host | None = None,
                timeout: float = 60.0) -> dict[str, Any]:
        """Start a child given ``--ready-file`` and wait for its endpoints. Raises
        ``RuntimeError`` naming the log when it does not come up."""
        proc = self.spawn(name, [*argv, "--ready-file", str(self.ready_path(name))], host)
        return self.ready(name, proc, timeout)

    def ready_path(self, name: str) -> Path:
        return self.root / f"{name}.ready.json"

    def ready(self, name: str, proc: subprocess.Popen[bytes], timeout: float = 60.0
              ) -> dict[str, Any]:
        try:
            return wait_ready(self.ready_path(name), proc, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{name}: {exc}; see {self.logs / (name + '.log')}") from None

    def cpu_seconds(self, names: Sequence[str] | None = None) -> float:
        """User + system CPU time the children still running (and the broker) have used;
        only those started under ``names`` when given."""
        procs = [*self._procs, *self._brokers] if names is None else self.named(names)
        return sum(map(_cpu_seconds, procs))

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

    def broker_url(self, config: ClusterConfig | None, host: Host | None = None) -> str:
        """A NATS server (in ``host``'s namespace when given) with the streams and the
        scheduler cluster's ``config`` in force (None: the defaults, and the scheduler makes
        the streams)."""
        broker = start_broker(self.root / "nats", host=host.ip if host else "127.0.0.1",
                              wrap=host.exec([]) if host else ())
        self._stack.callback(broker.stop)
        self._brokers.append(broker.proc)
        if config is not None:
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


def _cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0  # it has exited: nothing left to read
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


DAMSELFLY: Final = str(Path(sys.executable).with_name("damselfly"))
"""The installed ``damselfly`` command, as a user runs it."""


def python_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def write_random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes; returns ``sha256:<hex>``."""
    data = os.urandom(size)
    path.write_bytes(data)
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def dump_events(lab: Lab, nats: str, core: Host) -> Path:
    """The run's event log, as ``damselfly events dump`` (run in ``core``'s namespace,
    next to NATS) writes it. Raises ``RuntimeError``."""
    out = lab.root / "events.jsonl"
    with out.open("wb") as f:
        done = subprocess.run(core.exec(python_cli("damselfly.services.cli", "events", "dump",
                                                   "--nats", nats)),
                              stdout=f, stderr=subprocess.PIPE, env={**os.environ, **lab.env},
                              check=False, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"events dump failed: {done.stderr.decode().strip()}")
    return out


def start_origin(lab: Lab, root: Path, rate: float, host: Host | None = None) -> str:
    """The origin serving ``root`` under ``/files/`` (capped at ``rate`` bytes/s; 0: none),
    in ``host``'s namespace when given; returns its base URL."""
    argv = python_cli("bench.swarm_origin", "--root", str(root), "--rate", str(rate),
                      "--host", host.ip if host else "127.0.0.1")
    return str(lab.service("origin", argv, host)["url"])


def origin_bytes_sent(origin_url: str, host: Host | None = None) -> int:
    """What the origin has sent so far (asked from inside ``host``'s namespace when given)."""
    if host is None:
        with urllib.request.urlopen(f"{origin_url}/stats", timeout=10) as response:
            return int(json.load(response)["bytes_sent"])
    return int(json.loads(fetch_in(host, f"{origin_url}/stats"))["bytes_sent"])


def fetch_in(host: Host, url: str, body: str = "") -> str:
    """GET (or POST ``body`` to) ``url`` from inside ``host``'s network namespace. Raises
    ``RuntimeError``."""
    argv = ["curl", "-sS", "-f", "--max-time", "10", url]
    if body:
        argv += ["--data-binary", body]
    done = subprocess.run(host.exec(argv), capture_output=True, text=True, check=False,
                          timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{url} from {host.name}: {done.stderr.strip() or done.returncode}")
    return done.stdout


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
    daemon's default); ``args``: more of its flags."""

    upload_rate: float = 0.0
    upload_limit: int | None = None
    args: tuple[str, ...] = ()


def start_scheduler(lab: Lab, nats: str, host: Host | None = None) -> None:
    lab.service("scheduler", python_cli("damselfly.services.cli", "scheduler", "--nats", nats,
                                        "--data-dir", str(lab.root / "scheduler")), host)


def start_daemons(lab: Lab, nats: str, names: Sequence[str], caps: DaemonCaps | None = None,
                  hosts: dict[str, Host] | None = None, seeds: Sequence[str] = ()
                  ) -> dict[str, dict[str, Any]]:
    """One daemon per name (a seed peer for those in ``seeds``), each in its host's network
    namespace when ``hosts`` has it, started at once; returns each one's ready endpoints."""
    caps = caps or DaemonCaps()
    started = []
    for name in names:
        host = (hosts or {}).get(name)
        argv = python_cli("damselfly.services.cli", "daemon", "--nats", nats,
                          "--data-dir", str(lab.root / name),
                          "--ready-file", str(lab.ready_path(name)))
        if host is not None:
            argv += ["--advertise-host", host.ip]
        if caps.upload_rate:
            argv += ["--upload-rate", str(caps.upload_rate)]
        if caps.upload_limit is not None:
            argv += ["--upload-limit", str(caps.upload_limit)]
        if name in seeds:
            argv.append("--seed")
        argv += caps.args
        started.append((name, lab.spawn(name, argv, host)))
    return {name: lab.ready(name, proc, timeout=30.0 + 2.0 * len(names))
            for name, proc in started}


def start_damselfly(lab: Lab, peers: int, caps: DaemonCaps,
                    config: ClusterConfig) -> list[dict[str, Any]]:
    """On loopback: NATS, a scheduler under ``config`` and ``peers`` daemons (no seed peer);
    returns each daemon's ready endpoints."""
    nats = lab.broker_url(config)
    start_scheduler(lab, nats)
    return list(start_daemons(lab, nats, [f"peer{i}" for i in range(peers)], caps).values())


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
            except (RuntimeError, OSError) as exc:
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


def curl_everywhere(lab: Lab, url: str, clients: int, timeout: float,
                    hosts: Sequence[Host] = ()) -> list[float]:
    """The client/server baseline: ``clients`` curl processes (client ``i`` in ``hosts[i]``'s
    namespace when given) fetch ``url`` at once; each one's completion seconds from the
    common start. Raises ``RuntimeError`` when one fails or they do not all finish within
    ``timeout`` seconds."""
    out = lab.root / "curl"
    out.mkdir(exist_ok=True)
    argvs = [["curl", "-sS", "-f", "--max-time", str(int(timeout)), "-o", str(out / f"{i}"),
              url] for i in range(clients)]
    return processes_everywhere(lab, "curl", argvs, timeout, hosts)


def processes_everywhere(lab: Lab, name: str, argvs: Sequence[Sequence[str]], timeout: float,
                         hosts: Sequence[Host] = ()) -> list[float]:
    """Start every command at once (command ``i`` in ``hosts[i]``'s namespace when given)
    and return each one's exit time in seconds from the common start. Raises
    ``RuntimeError`` when one fails or they do not all end within ``timeout`` seconds."""
    t0 = time.monotonic()
    procs = [lab.spawn(f"{name}{i}", argv, hosts[i] if hosts else None)
             for i, argv in enumerate(argvs)]
    times: list[float | None] = [None] * len(procs)
    while None in times:
        for i, proc in enumerate(procs):
            if times[i] is None and proc.poll() is not None:
                if proc.returncode != 0:
                    raise RuntimeError(f"{argvs[i][0]} exited with {proc.returncode}; "
                                       f"see {lab.logs / f'{name}{i}.log'}")
                times[i] = time.monotonic() - t0
        if time.monotonic() - t0 > timeout + 10:
            raise RuntimeError(f"{name} clients still running after {timeout:.0f}s")
        time.sleep(0.02)
    return [t for t in times if t is not None]
