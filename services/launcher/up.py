"""``damselfly up``: a whole cluster on one machine, on loopback ports.

The embedded ``nats-server`` (or ``--nats URL``), the streams, then every service as a child
process. Each child binds port 0 and writes its endpoints to a ready file; the launcher
gathers them into ``DIR/cluster.json`` and stops every child on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

import nats
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from damselfly.events.grants import KEY_ENV, PUBKEY_ENV
from damselfly.events.streams import REPLICAS_ENV, ensure_streams
from damselfly.services.launcher import natsauth
from damselfly.services.launcher.broker import Broker, start_broker, start_cluster
from damselfly.services.manager.client import root_password_file
from damselfly.services.peer.daemon import host_id_for
from damselfly.services.runtime.natsconn import CREDS_ENV, connect
from damselfly.services.runtime.procs import DAMSELFLY, spawn, stop, wait_ready


@dataclass(frozen=True)
class ServiceSpec:
    """One child service: its name in cluster.json, its ``damselfly`` arguments and its
    role on the broker (``natsauth.ROLES``)."""

    name: str
    argv: list[str]
    role: str = "peer"


def daemon_names(peers: int) -> list[str]:
    """The daemons ``up`` starts: the seed peer, then ``peers`` normal ones."""
    return ["seed-peer", *(f"peer-{i}" for i in range(1, peers + 1))]


def scheduler_names(schedulers: int) -> list[str]:
    """The schedulers ``up`` starts: ``scheduler``, then ``scheduler-2`` and on."""
    return ["scheduler", *(f"scheduler-{i}" for i in range(2, schedulers + 1))]


def service_specs(nats_url: str, data_dir: Path, peers: int,
                  daemon_flags: Sequence[str] = (), schedulers: int = 1) -> list[ServiceSpec]:
    """Every service that exists, in start order; ``daemon_flags`` go to every daemon; the
    ``schedulers`` share the task partitions (``scheduler.lease``)."""
    def daemon(name: str, *flags: str) -> ServiceSpec:
        # Every daemon serves its local API and its registry mirror on free loopback ports,
        # in the one cluster this machine's scheduler serves (no cluster search: a scoped
        # cluster made in the console would have no scheduler here).
        return ServiceSpec(name, ["daemon", *flags, "--nats", nats_url, "--data-dir",
                                  str(data_dir / name), "--api-port", "0", "--proxy-port", "0",
                                  "--cluster", "default", *daemon_flags])

    seed, *others = daemon_names(peers)
    return [
        *(ServiceSpec(name, ["scheduler", "--nats", nats_url, "--data-dir", str(data_dir / name),
                             "--metrics-port", "0"], "scheduler")
          for name in scheduler_names(schedulers)),
        ServiceSpec("manager", ["manager", "--nats", nats_url,
                                "--data-dir", str(data_dir / "manager")], "manager"),
        daemon(seed, "--seed"),
        *(daemon(name) for name in others),
    ]


async def prepare_streams(url: str, creds: Path | None, num_replicas: int | None,
                           timeout: float = 30.0) -> None:
    """Create the streams, as the ``admin`` role (the only one that may), once JetStream
    answers: a fresh cluster elects its meta leader some seconds after its servers listen.
    Raises ``RuntimeError`` with the server's last refusal after ``timeout`` seconds."""
    nc = await connect(url, "damselfly-up", creds=str(creds) if creds else None)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            try:
                await ensure_streams(nc.jetstream(timeout=2), num_replicas)
                return
            except (TimeoutError, nats.errors.Error) as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"JetStream at {url} did not take the streams within "
                                       f"{timeout:.0f}s: {exc or type(exc).__name__}") from exc
                await asyncio.sleep(0.5)
    finally:
        await nc.drain()


def kept_secret(env: str, path: Path) -> str:
    """The secret in the environment variable ``env``, else the one kept (0600) in
    ``path``, made on first use so that a restarted cluster keeps its secrets."""
    if value := os.environ.get(env):
        return value
    if not path.exists():
        natsauth.write_private(path, secrets.token_urlsafe(24))
    return path.read_text().strip()


def write_grant_keys(key_path: Path, pub_path: Path) -> None:
    """Make the schedulers' upload-grant key pair (``events/grants.py``) unless
    ``key_path`` exists: the private key 0600, the public key readable by every daemon."""
    if key_path.exists():
        return
    key = Ed25519PrivateKey.generate()
    natsauth.write_private(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())
    pub_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


@dataclass
class LocalCluster:
    """A running cluster; use as a context manager so every process ends with it."""

    data_dir: Path
    peers: int = 2
    nats_url: str | None = None
    daemon_flags: list[str] = field(default_factory=list)
    nats_nodes: int = 1
    """Embedded ``nats-server``s: 1, or a JetStream cluster (3 or 5) whose streams and KV
    buckets every node keeps (up to 3 replicas)."""
    schedulers: int = 1
    endpoints: dict[str, object] = field(default_factory=dict)
    brokers: list[Broker] = field(default_factory=list)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    """Each child service's process by its name in cluster.json."""

    def start(self) -> dict[str, object]:
        """Start everything and write cluster.json. Raises ``RuntimeError`` naming the
        service that failed to start (its log is under ``DIR/logs``)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        run_dir = self.data_dir / "run"
        logs = self.data_dir / "logs"
        run_dir.mkdir(exist_ok=True)
        logs.mkdir(exist_ok=True)
        url = self.nats_url
        roles: dict[str, Path] = {}
        if url is None:  # the embedded server: every service gets its own role's user
            hosts = {}
            for name in daemon_names(self.peers):  # made now, so its user names its host
                (self.data_dir / name).mkdir(parents=True, exist_ok=True)
                hosts[name] = host_id_for(self.data_dir / name)
            creds = natsauth.write(self.data_dir, hosts)
            roles = creds.files
            if self.nats_nodes == 1:
                self.brokers = [start_broker(self.data_dir / "nats", config=creds.config)]
            else:
                self.brokers = start_cluster(self.data_dir / "nats", self.nats_nodes,
                                             config=creds.config)
            url = ",".join(b.url for b in self.brokers)
        # A cluster keeps everything on 3 nodes; otherwise (one node, or an external server
        # whose streams may be replicated already) the replica count is left as it is.
        replicas = min(self.nats_nodes, 3) if self.nats_nodes > 1 else None
        asyncio.run(prepare_streams(url, roles.get("admin"), replicas))
        # The cluster secret mints upload tokens; the root password is the manager's first.
        env = {"DAMSELFLY_CLUSTER_SECRET": kept_secret("DAMSELFLY_CLUSTER_SECRET",
                                                       self.data_dir / "cluster.secret"),
               "DAMSELFLY_ROOT_PASSWORD": kept_secret("DAMSELFLY_ROOT_PASSWORD",
                                                      root_password_file(self.data_dir)),
               **({REPLICAS_ENV: str(replicas)} if replicas else {})}
        # Upload grants: only the scheduler holds the private key; every daemon checks them.
        (self.data_dir / "creds").mkdir(mode=0o700, exist_ok=True)
        grant_key, grant_pub = self.data_dir / "creds" / "grant.key", self.data_dir / "grant.pub"
        write_grant_keys(grant_key, grant_pub)
        env[PUBKEY_ENV] = str(grant_pub)
        services: dict[str, object] = {}
        self.endpoints = {"nats": url, "data_dir": str(self.data_dir), "services": services}
        if roles:
            self.endpoints["nats_creds"] = {role: str(path) for role, path in roles.items()}
        for spec in service_specs(url, self.data_dir, self.peers, self.daemon_flags,
                                  self.schedulers):
            ready = run_dir / f"{spec.name}.json"
            ready.unlink(missing_ok=True)
            own = roles.get(spec.name) or roles.get(spec.role)  # a daemon's is its host's
            role_env = {CREDS_ENV: str(own)} if own else {}
            if spec.role == "scheduler":
                role_env[KEY_ENV] = str(grant_key)
            with open(logs / f"{spec.name}.log", "ab") as log:
                proc = spawn([*DAMSELFLY, *spec.argv,
                              "--ready-file", str(ready)], log, env | role_env)
            self.processes[spec.name] = proc
            try:
                services[spec.name] = wait_ready(ready, proc)
            except RuntimeError as exc:
                log_file = logs / (spec.name + ".log")
                raise RuntimeError(f"{spec.name}: {exc}; see {log_file}") from exc
        (self.data_dir / "cluster.json").write_text(json.dumps(self.endpoints, indent=2))
        return self.endpoints

    def stop(self) -> None:
        stop(list(reversed(self.processes.values())))
        self.processes.clear()
        stop([b.proc for b in self.brokers])
        self.brokers.clear()

    def dead_service(self) -> str | None:
        """The argv of a child that exited on its own, if any."""
        for proc in self.processes.values():
            if proc.poll() is not None:
                return " ".join(str(a) for a in proc.args)  # type: ignore[union-attr]
        return None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def endpoint_table(endpoints: dict[str, object]) -> str:
    rows = [("nats", "url", str(endpoints["nats"]))]
    services = endpoints.get("services", {})
    assert isinstance(services, dict)
    for name, values in services.items():
        for key, value in values.items():
            rows.append((name, key, str(value)))
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("up", help="run a whole cluster on this machine until Ctrl-C")
    p.add_argument("--data-dir", type=Path, default=Path(".data"), help="state dir (default .data)")
    p.add_argument("--peers", type=int, default=2, help="number of normal peers (default 2)")
    p.add_argument("--nats", help="use this NATS server (or comma-separated cluster) instead "
                                  "of the embedded one")
    p.add_argument("--nats-nodes", type=int, choices=(1, 3, 5), default=1,
                   help="embedded nats-servers: 1 (default), or a JetStream cluster of 3 or 5 "
                        "over loopback routes that keeps every stream on 3 of them")
    p.add_argument("--schedulers", type=int, default=1,
                   help="schedulers sharing the task partitions (default 1)")
    p.add_argument("--registry-mirror", default="",
                   help="the registry every daemon's mirror fronts (default Docker Hub), so "
                        "skopeo, podman and CRI-O pulls through it use the swarm")
    p.add_argument("--proxy-rule", action="append", default=[],
                   help="REGEX=swarm|direct[:param,…] for every daemon's HTTP proxy (repeat): "
                        "which URLs (pip, Maven, YUM) go through the swarm")
    p.set_defaults(run=_run)
    k = sub.add_parser("grant-keys", help="make the schedulers' upload-grant key pair in DIR "
                                          "(as up does), for a cluster that up does not start")
    k.add_argument("dir", type=Path, help="writes DIR/grant.key (0600: schedulers only, "
                                          "$DAMSELFLY_GRANT_KEY) and DIR/grant.pub (every "
                                          "daemon, $DAMSELFLY_GRANT_PUBKEY)")
    k.set_defaults(run=_grant_keys)


def _grant_keys(args: argparse.Namespace) -> int:
    args.dir.mkdir(parents=True, exist_ok=True)
    key, pub = args.dir / "grant.key", args.dir / "grant.pub"
    made = not key.exists()
    write_grant_keys(key, pub)
    print(f"{'made' if made else 'kept'} {key} ({KEY_ENV}) and {pub} ({PUBKEY_ENV})")
    return 0


def daemon_flags(args: argparse.Namespace) -> list[str]:
    """The ``up`` flags that every daemon takes, as that daemon's arguments."""
    flags = ["--registry-mirror", args.registry_mirror] if args.registry_mirror else []
    for rule in args.proxy_rule:
        flags += ["--proxy-rule", rule]
    return flags


def _run(args: argparse.Namespace) -> int:
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.schedulers < 1:
        print("damselfly up: --schedulers must be at least 1", file=sys.stderr)
        return 2
    with LocalCluster(args.data_dir.resolve(), args.peers, args.nats, daemon_flags(args),
                      args.nats_nodes, args.schedulers) as cluster:
        print(endpoint_table(cluster.endpoints))
        where = ("$DAMSELFLY_ROOT_PASSWORD" if os.environ.get("DAMSELFLY_ROOT_PASSWORD")
                 else root_password_file(args.data_dir))
        print(f"\nconsole and API: sign in as root with the password in {where}; the "
              "damselfly CLI does so by itself for this data dir")
        creds = cluster.endpoints.get("nats_creds")
        if isinstance(creds, dict):
            print(f"the log, for damselfly events and replay: {CREDS_ENV}={creds['observer']}")
        print(f"endpoints written to {args.data_dir / 'cluster.json'}; Ctrl-C stops everything",
              flush=True)
        while not done.wait(0.5):
            dead = cluster.dead_service()
            if dead:
                print(f"a service exited: {dead}; stopping", file=sys.stderr)
                return 1
    return 0
