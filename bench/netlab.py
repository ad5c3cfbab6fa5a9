"""Kernel-shaped test networks: one Linux network namespace per host, each joined by a veth
pair to a bridge that lives in a hub namespace of its own, each host's egress shaped by
``tc`` (tbf, a short queue). The kernel is the only rate limit, the same for every system
a benchmark compares.

Only 198.18.0.0/15 (reserved for benchmarking) is used, nothing routes out of the bridge
(the hub has no other link and no host has a default route), neighbour entries are pinned
so 50 hosts on one bridge never overflow a neighbour table, and every namespace is deleted
when the context ends — also on Ctrl-C or SIGTERM, and namespaces a killed run left behind
are removed by the next one.

Needs root and iproute2 (``ip``, ``tc``); ``available()`` says why not.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Final, Self

NETWORK: Final = ipaddress.ip_network("198.18.0.0/24")
"""One lab's hosts (the first 253 addresses of the benchmarking range 198.18.0.0/15)."""
PREFIX: Final = "dfly"
DEVICE: Final = "eth0"


def available() -> str:
    """Empty when namespaces can be made here, else the one-line reason why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install iproute2"
    return ""


def address(index: int) -> str:
    """The address of host ``index`` (0-based). Raises ``ValueError`` beyond the network."""
    if not 0 <= index < NETWORK.num_addresses - 3:
        raise ValueError(f"host {index} does not fit in {NETWORK}")
    return str(NETWORK.network_address + index + 1)


def mac(index: int) -> str:
    """A locally administered MAC for host ``index``, fixed so neighbours can be pinned."""
    return "02:df:" + ":".join(f"{b:02x}" for b in (index + 1).to_bytes(4, "big"))


def tbf_args(rate_bytes: float) -> list[str]:
    """``tc`` arguments shaping a device to ``rate_bytes`` bytes/s with a short queue (20 ms
    at that rate) and a burst of a few packets."""
    return ["tbf", "rate", f"{int(rate_bytes * 8)}bit", "burst", "32kb", "latency", "20ms"]


def _run(argv: Sequence[str], stdin: str | None = None) -> None:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False,
                          timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")


def _namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=False, timeout=30).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def remove_stale() -> None:
    """Delete namespaces that labs of processes no longer alive left behind."""
    for name in _namespaces():
        parts = name.split("-")
        stale = (len(parts) >= 3 and parts[0] == PREFIX and parts[1].isdigit()
                 and not os.path.exists(f"/proc/{parts[1]}"))
        if stale:
            subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    ip: str
    rate: float

    def exec(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]


class NetLab:
    """Hosts ``names`` on one bridge, each with its egress shaped to ``rates[name]`` bytes/s
    (``rate`` for those not named). Use as a context manager."""

    def __init__(self, names: Sequence[str], rate: float,
                 rates: dict[str, float] | None = None) -> None:
        self._tag = f"{PREFIX}-{os.getpid()}-{os.urandom(2).hex()}"
        self.hub = f"{self._tag}-hub"
        self.hosts = {name: Host(name, f"{self._tag}-{i}", address(i),
                                 (rates or {}).get(name, rate))
                      for i, name in enumerate(names)}
        self._made: list[str] = []
        self._old_term: signal.Handlers | None | object = None

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Self:
        if why := available():
            raise RuntimeError(why)
        remove_stale()
        self._old_term = signal.signal(signal.SIGTERM, _interrupt)
        try:
            self._build()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._teardown()

    def _netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._made.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build(self) -> None:
        self._netns(self.hub)
        _run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        prefix = NETWORK.prefixlen
        for i, host in enumerate(self.hosts.values()):
            self._netns(host.netns)
            _run(["ip", "link", "add", DEVICE, "netns", host.netns, "address", mac(i),
                  "type", "veth", "peer", "name", f"h{i}", "netns", self.hub])
            _run(["ip", "-n", self.hub, "link", "set", f"h{i}", "master", "br0", "up"])
            _run(["ip", "-n", host.netns, "addr", "add", f"{host.ip}/{prefix}", "dev", DEVICE])
            _run(["ip", "-n", host.netns, "link", "set", DEVICE, "up"])
            _run(["tc", "-n", host.netns, "qdisc", "add", "dev", DEVICE, "root",
                  *tbf_args(host.rate)])
        pins = "".join(f"neigh replace {other.ip} lladdr {mac(j)} dev {DEVICE} nud permanent\n"
                       for j, other in enumerate(self.hosts.values()))
        for host in self.hosts.values():
            _run(["ip", "-n", host.netns, "-batch", "-"], stdin=pins)

    def _teardown(self) -> None:
        for name in reversed(self._made):
            subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)
        self._made.clear()
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)  # type: ignore[arg-type]
            self._old_term = None

    def egress_bytes(self, name: str) -> int:
        """Bytes host ``name`` has sent on its link so far."""
        path = f"/sys/class/net/{DEVICE}/statistics/tx_bytes"
        done = subprocess.run(self.hosts[name].exec(["cat", path]), capture_output=True,
                              text=True, check=False, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"cannot read {name}'s link counters: {done.stderr.strip()}")
        return int(done.stdout)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
