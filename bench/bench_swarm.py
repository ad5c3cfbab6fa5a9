"""The swarm on kernel-shaped links: every host in its own network namespace, its uplink
shaped by ``tc`` to U bytes/s (the seed's and the origin's too), no application rate limit
anywhere. In one run, on the same namespaces and file: Damselfly with default settings (a
seed peer in front of the origin, N daemons asked at once through their local API, and
again through one ``damselfly get`` process per child),
BitTorrent (aria2c + opentracker, the seeder on the seed's host) and N curl clients of the
origin; first, one transfer over one link (curl from the origin, Damselfly from a parent
holding the file) as the link's own baseline. Writes ``bench/results/swarm.json`` and
``bench/results/swarm-F<mib>-N<n>.png``.

Needs root (network namespaces); without it the benchmark says so and exits cleanly.
Environment: ``BENCH_SWARM_PEERS`` (default ``10``; the issue's matrix is ``10,30,50``),
``BENCH_SWARM_MIB`` (F in MiB, default ``64``; also e.g. ``64,1024``),
``BENCH_SWARM_RATE_MIB`` (U = U_s in MiB/s, default 8), ``BENCH_SWARM_SYSTEMS`` (default
all of ``damselfly,damselfly-cli,bittorrent,client/server``).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

import anyio

from bench import netlab
from bench.bt_swarm import run_bittorrent
from bench.netlab import NetLab
from bench.report import RESULTS, plot_cdf, write_result
from bench.swarm_lab import (
    DAMSELFLY,
    Lab,
    MiB,
    SwarmRun,
    curl_everywhere,
    download_everywhere,
    dump_events,
    origin_bytes_sent,
    processes_everywhere,
    start_daemons,
    start_origin,
    start_scheduler,
    write_random_file,
)
from bench.swarm_math import lower_bound, swarm_log_figures, swarm_summary
from damselfly.events.log import read_log
from damselfly.services.peer.digests import file_digest
from damselfly.services.peer.request import DownloadRequest

SEED: Final = "seed"
CORE: Final = "core"


def numbers(name: str, default: str, text: str | None = None) -> list[float]:
    """The comma-separated positive numbers of ``text`` (default: environment variable
    ``name``, else ``default``). Raises ``RuntimeError`` saying what is wrong."""
    text = os.environ.get(name, default) if text is None else text
    try:
        values = [float(n) for n in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise RuntimeError(f"{name} wants positive numbers like {default}; got {text!r}")
    return values


PEERS: Final = [int(n) for n in numbers("BENCH_SWARM_PEERS", "10")]
SIZES: Final = [int(m * MiB) for m in numbers("BENCH_SWARM_MIB", "64")]
RATE: Final = numbers("BENCH_SWARM_RATE_MIB", "8")[0] * MiB
SYSTEMS: Final = os.environ.get("BENCH_SWARM_SYSTEMS",
                                "damselfly,damselfly-cli,bittorrent,client/server").split(",")
BT_PIECE: Final = 256 << 10  # aria2c's usual choice for files of this size


def _timeout(bound: float) -> float:
    return 60.0 + 6.0 * bound


def _children(peers: int) -> list[str]:
    return [f"c{i}" for i in range(peers)]


class Machine:
    """The whole machine's CPU time between two readings (``/proc/stat``)."""

    def __init__(self) -> None:
        self._busy0, self._total0 = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    def utilisation(self) -> float:
        busy, total = self._read()
        return (busy - self._busy0) / max(total - self._total0, 1)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _outputs_match(lab: Lab, names: Sequence[str], want: str) -> int:
    """How many of the daemons ``names`` hold a task file whose sha256 is ``want``."""
    good = 0
    for name in names:
        files = list((lab.root / name / "tasks").glob("*/data"))
        good += any(file_digest(f, "sha256") == want for f in files)
    return good


def _refusals(endpoints: Sequence[str]) -> dict[str, int]:
    """Busy (503) and super-seeding (429) answers the daemons' upload servers gave, from
    their metrics (read through the local API sockets)."""
    codes = {"busy_503": 0, "spread_429": 0}
    for socket_path in endpoints:
        text = subprocess.run(["curl", "-sS", "-f", "--unix-socket", socket_path,
                               "http://daemon/metrics"], capture_output=True, text=True,
                              check=False, timeout=30).stdout
        for line in text.splitlines():
            for key, code in (("busy_503", "503"), ("spread_429", "429")):
                if line.startswith(f'damselfly_upload_responses_total{{code="{code}"}}'):
                    codes[key] += int(float(line.rsplit(" ", 1)[1]))
    return codes


def damselfly(net: NetLab, source: Path, size: int, peers: int, *, cli: bool = False
              ) -> tuple[SwarmRun, dict[str, Any]]:
    """The swarm asked through each daemon's local API, or with ``cli`` through one
    ``damselfly get`` process per child (its start-up, API calls and export included)."""
    children = _children(peers)
    with Lab(f"df{peers}") as lab:
        core = net[CORE]
        origin = start_origin(lab, source.parent, 0, core)
        nats = lab.broker_url(None, core)
        start_scheduler(lab, nats, core)
        ready = start_daemons(lab, nats, [SEED, *children], hosts=net.hosts, seeds=[SEED])
        digest = file_digest(source, "sha256")
        request = DownloadRequest(url=f"{origin}/files/{source.name}", digest=digest)
        seed_tx0, core_tx0 = net.egress_bytes(SEED), net.egress_bytes(CORE)
        roles = {"scheduler": ["scheduler"], "seed": [SEED], "children": children}
        cpu0, machine, t0 = lab.cpu_seconds(), Machine(), time.time()
        role0 = {role: lab.cpu_seconds(names) for role, names in roles.items()}
        bound = lower_bound(size, peers, RATE, RATE)
        sockets = [ready[c]["api_socket"] for c in children]
        clients0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if cli:
            times = _get_everywhere(lab, net, request, sockets, _timeout(bound))
        else:
            times = [r["seconds"] for r in anyio.run(download_everywhere, sockets, request,
                                                     _timeout(bound))]
        extra: dict[str, Any] = {"cpu_util": round(machine.utilisation(), 2)}
        if cli:  # the exited get processes (the only children reaped meanwhile)
            clients = resource.getrusage(resource.RUSAGE_CHILDREN)
            extra["cpu_s_clients"] = round(clients.ru_utime + clients.ru_stime
                                           - clients0.ru_utime - clients0.ru_stime, 1)
        cpu = lab.cpu_seconds() - cpu0
        for role, names in roles.items():
            extra[f"cpu_s_{role}"] = round(lab.cpu_seconds(names) - role0[role], 1)
        extra["seed_link_ratio"] = round((net.egress_bytes(SEED) - seed_tx0) / size, 3)
        extra["peak_rss_mib"] = round(max(_peak_rss_mib(p.pid) for p in lab.named(children)), 1)
        extra.update(_refusals([ready[n]["api_socket"] for n in [SEED, *children]]))
        extra["outputs_ok"] = f"{_outputs_match(lab, children, digest)}/{peers}"
        sent = origin_bytes_sent(origin, core)
        # What else left the core host's link: NATS delivering events to the daemons.
        extra["control_mib"] = round((net.egress_bytes(CORE) - core_tx0 - sent) / MiB, 1)
        log = dump_events(lab, nats, core)
        RESULTS.mkdir(parents=True, exist_ok=True)
        kept = RESULTS / f"swarm-F{size // MiB}-N{peers}.events.jsonl"
        shutil.copyfile(log, kept)  # for `damselfly replay` and a closer look
        figures = swarm_log_figures((r.event for r in read_log(log)), t0,
                                    ready[SEED]["host_id"])
        extra["t0"] = t0
        extra.update({k: round(v, 3) for k, v in figures.items()})
        return SwarmRun(times, sent, cpu), extra


def _get_everywhere(lab: Lab, net: NetLab, request: DownloadRequest, sockets: Sequence[str],
                    timeout: float) -> list[float]:
    """One ``damselfly get`` per child, in its namespace, all started at once, as a user's
    script would run them; each one's exit time from the common start."""
    out = lab.root / "gets"
    out.mkdir()
    argvs = [[DAMSELFLY, "get", request.url, "-O", str(out / f"{i}"), "--digest", request.digest,
              "--endpoint", socket_path, "--no-progress"]
             for i, socket_path in enumerate(sockets)]
    return processes_everywhere(lab, "get", argvs, timeout,
                                [net[c] for c in _children(len(sockets))])


def bittorrent(net: NetLab, source: Path, size: int, peers: int
               ) -> tuple[SwarmRun, dict[str, Any]]:
    with Lab(f"bt{peers}") as lab:
        seed_tx0 = net.egress_bytes(SEED)
        machine = Machine()
        run = run_bittorrent(lab, source, net[SEED], [net[c] for c in _children(peers)],
                             net[CORE], BT_PIECE, _timeout(lower_bound(size, peers, RATE, RATE)))
        return run, {"cpu_util": round(machine.utilisation(), 2),
                     "seed_link_ratio": round((net.egress_bytes(SEED) - seed_tx0) / size, 3)}


def client_server(net: NetLab, source: Path, size: int, peers: int
                  ) -> tuple[SwarmRun, dict[str, Any]]:
    with Lab(f"cs{peers}") as lab:
        core = net[CORE]
        origin = start_origin(lab, source.parent, 0, core)
        machine = Machine()
        times = curl_everywhere(lab, f"{origin}/files/{source.name}", peers,
                                _timeout(lower_bound(size, peers, 0, RATE)),
                                [net[c] for c in _children(peers)])
        return SwarmRun(times, origin_bytes_sent(origin, core), cpu_s=None), {
            "cpu_util": round(machine.utilisation(), 2)}


def one_link(net: NetLab, source: Path) -> list[dict[str, Any]]:
    """One transfer of ``source`` over one shaped link: curl from the origin, and a Damselfly
    child from a parent (the seed) that already holds the file."""
    size = source.stat().st_size
    rows: list[dict[str, Any]] = []
    with Lab("link-curl") as lab:
        origin = start_origin(lab, source.parent, 0, net[CORE])
        curl_s = curl_everywhere(lab, f"{origin}/files/{source.name}", 1, _timeout(size / RATE),
                                 [net["c0"]])[0]
        rows.append({"system": "curl, one link", "mib": size // MiB, "peers": 1,
                     "slowest_s": round(curl_s, 3),
                     "mib_s": round(size / curl_s / MiB, 2)})
    with Lab("link-df") as lab:
        core = net[CORE]
        origin = start_origin(lab, source.parent, 0, core)
        nats = lab.broker_url(None, core)
        start_scheduler(lab, nats, core)
        ready = start_daemons(lab, nats, [SEED, "c0"], hosts=net.hosts, seeds=[SEED])
        request = DownloadRequest(url=f"{origin}/files/{source.name}",
                                  digest=file_digest(source, "sha256"))
        anyio.run(download_everywhere, [ready[SEED]["api_socket"]], request, _timeout(size / RATE))
        child = anyio.run(download_everywhere, [ready["c0"]["api_socket"]], request,
                          _timeout(size / RATE))[0]
        if child.get("bytes_from_peers", 0) != size:
            raise RuntimeError(f"the child fetched {child.get('bytes_from_origin')} bytes from "
                               "the origin instead of its parent")
        rows.append({"system": "damselfly, one link", "mib": size // MiB, "peers": 1,
                     "slowest_s": round(child["seconds"], 3),
                     "mib_s": round(size / child["seconds"] / MiB, 2),
                     "vs_curl": round(curl_s / child["seconds"], 3)})
    return rows


RUNNERS: Final[dict[str, Callable[[NetLab, Path, int, int], tuple[SwarmRun, dict[str, Any]]]]] = {
    "damselfly": damselfly, "damselfly-cli": partial(damselfly, cli=True),
    "bittorrent": bittorrent, "client/server": client_server}


def measure(system: str, net: NetLab, source: Path, size: int,
            peers: int) -> tuple[dict[str, Any], list[float]]:
    """One row of the table (an ``error`` instead of figures when the run failed)."""
    bound = lower_bound(size, peers, RATE, RATE)
    row: dict[str, Any] = {"system": system, "mib": size // MiB, "peers": peers,
                           "load_1m": round(os.getloadavg()[0], 1)}
    print(f"-- {system}, F={size // MiB} MiB, N={peers} (bound {bound:.2f}s)", flush=True)
    started = time.monotonic()
    try:
        run, extra = RUNNERS[system](net, source, size, peers)
    except (RuntimeError, OSError) as exc:
        print(f"   failed: {exc}", flush=True)
        return {**row, "error": str(exc)}, []
    row.update({k: round(v, 3) for k, v in swarm_summary(run.times, bound, run.origin_bytes,
                                                         size).items()})
    if run.cpu_s is not None:
        row["cpu_s"] = round(run.cpu_s, 1)
    row.update(extra)
    print(f"   slowest {row['slowest_s']}s, efficiency {row['eff_slowest']}, origin "
          f"{row['origin_ratio']}xF ({time.monotonic() - started:.0f}s wall)", flush=True)
    return row, run.times


def compare(rows: list[dict[str, Any]]) -> None:
    """Damselfly's slowest-peer time over BitTorrent's in the same (F, N)."""
    slowest = {(r["system"], r.get("mib"), r["peers"]): r.get("slowest_s") for r in rows}
    for row in rows:
        bt = slowest.get(("bittorrent", row.get("mib"), row["peers"]))
        if row["system"] in ("damselfly", "damselfly-cli") and "slowest_s" in row and bt:
            row["vs_bittorrent"] = round(row["slowest_s"] / bt, 3)


def main() -> None:
    if why := netlab.available():
        print(f"bench swarm skipped: {why} (run it as root)")
        return
    rows: list[dict[str, Any]] = []
    series: dict[str, list[float]] = {}
    hosts = [CORE, SEED, *_children(max(PEERS))]
    with NetLab(hosts, RATE) as net, Lab("files") as files:
        for i, size in enumerate(SIZES):
            source = files.root / f"blob-{size // MiB}m"
            write_random_file(source, size)
            if i == 0:  # the link's own baseline, once, on the first file
                rows.extend(one_link(net, source))
            for peers in PEERS:
                chosen = {}
                for system in SYSTEMS:
                    row, times = measure(system, net, source, size, peers)
                    rows.append(row)
                    if times:
                        chosen[system] = times
                series.update({f"{k} F={size // MiB} N={peers}": v for k, v in chosen.items()})
                bound = lower_bound(size, peers, RATE, RATE)
                plot_cdf(RESULTS / f"swarm-F{size // MiB}-N{peers}.png",
                         f"Completion times, N={peers}, F={size // MiB} MiB, U=U_s="
                         f"{RATE / MiB:g} MiB/s", "completion time (s)", chosen,
                         (f"bound {bound:.1f}s", bound))
    compare(rows)
    write_result("swarm", {
        "title": "Swarm on kernel-shaped links: completion time vs the theoretical bound",
        "command": "make bench  (or: python -m bench swarm)",
        "params": {"file_mib": [s // MiB for s in SIZES], "peers": PEERS,
                   "link_MiBps": RATE / MiB, "shaping": "tc tbf on each host's egress",
                   "damselfly": "default settings, one seed peer",
                   "bittorrent_piece_kib": BT_PIECE >> 10},
        "notes": ["bound = max(F/U_s, N*F/(U_s + N*U)), U = U_s = the link rate.",
                  "seed_link_ratio: bytes the seed's link carried / F; busy_503: busy answers "
                  "of all upload servers; control_mib: what the core host's link (NATS, "
                  "scheduler, origin) carried besides the origin's bytes; first-piece times "
                  "and parents per child come from Damselfly's event log."],
        "columns": ["system", "mib", "peers", "bound_s", "p50_s", "slowest_s", "eff_p50",
                    "eff_slowest", "vs_bittorrent", "vs_curl", "mib_s", "origin_ratio",
                    "seed_link_ratio", "seed_first_piece_s", "child_first_piece_p50_s",
                    "child_first_piece_max_s", "parents_per_child_p50", "pieces_from_seed",
                    "busy_503", "spread_429", "control_mib",
                    "reschedules", "back_to_source", "piece_failures", "outputs_ok", "cpu_s",
                    "cpu_s_children", "cpu_s_seed", "cpu_s_scheduler", "cpu_s_clients",
                    "cpu_util", "peak_rss_mib", "load_1m", "error"],
        "rows": rows,
        "series": series,
    })


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
