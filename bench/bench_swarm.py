"""Swarm efficiency against the theoretical bound: N peers fetch one file of size F from an
origin capped at U_s, each peer's upload capped at U, side by side with BitTorrent (aria2c,
opentracker) and with N plain clients of the origin (curl). Writes
``bench/results/swarm.json`` and ``bench/results/swarm-N<n>.png``.

Environment: ``BENCH_SWARM_PEERS`` (default ``10,50``), ``BENCH_SWARM_MIB`` (F, default 8).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import anyio

from bench.bt_swarm import run_bittorrent
from bench.report import RESULTS, plot_cdf, write_result
from bench.swarm_lab import (
    DaemonCaps,
    Lab,
    MiB,
    SwarmRun,
    curl_everywhere,
    download_everywhere,
    origin_bytes_sent,
    start_damselfly,
    start_origin,
    write_random_file,
)
from bench.swarm_math import lower_bound, swarm_summary
from damselfly.events.config import ClusterConfig
from damselfly.services.peer.request import DownloadRequest

PIECE: Final = 256 << 10


def peer_counts(text: str) -> list[int]:
    """``"10,50"`` as ``[10, 50]``. Raises ``RuntimeError`` saying what is wrong."""
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise RuntimeError(f"BENCH_SWARM_PEERS wants peer counts like 10,50; got {text!r}")
    return counts


def file_size(text: str) -> int:
    """MiB as bytes. Raises ``RuntimeError`` saying what is wrong."""
    try:
        size = int(float(text) * MiB)
    except ValueError:
        size = 0
    if size < PIECE:
        raise RuntimeError(f"BENCH_SWARM_MIB wants at least {PIECE / MiB} MiB; got {text!r}")
    return size


PEERS: Final = peer_counts(os.environ.get("BENCH_SWARM_PEERS", "10,50"))
SIZE: Final = file_size(os.environ.get("BENCH_SWARM_MIB", "8"))
UPLOAD: Final = 1 * MiB           # U: each peer's upload cap, bytes/s
ORIGIN_UPLOAD: Final = 4 * MiB    # U_s: the origin's upload cap, bytes/s
# No download cap: the daemon has none (D = inf), so BitTorrent and curl get none either.
# Tuned: one upload at a time per daemon (a busy parent answers 503 and children spread to
# other parents instead of queueing behind its pacer) and one origin fetcher per task.
TUNED: Final = (DaemonCaps(upload_rate=UPLOAD, upload_limit=1),
                ClusterConfig(back_to_source_limit=1))
DEFAULTS: Final = (DaemonCaps(upload_rate=UPLOAD), ClusterConfig())


def _timeout(bound: float) -> float:
    return 60.0 + 5.0 * bound


def damselfly(settings: tuple[DaemonCaps, ClusterConfig], peers: int) -> SwarmRun:
    caps, config = settings
    with Lab(f"swarm{peers}") as lab:
        files = lab.root / "files"
        files.mkdir()
        digest = write_random_file(files / "blob", SIZE)
        origin = start_origin(lab, files, ORIGIN_UPLOAD)
        endpoints = [e["api_socket"] for e in start_damselfly(lab, peers, caps, config)]
        request = DownloadRequest(url=f"{origin}/files/blob", piece_length=PIECE, digest=digest)
        cpu0 = lab.cpu_seconds()
        results = anyio.run(download_everywhere, endpoints, request,
                            _timeout(lower_bound(SIZE, peers, UPLOAD, ORIGIN_UPLOAD)))
        return SwarmRun([r["seconds"] for r in results], origin_bytes_sent(origin),
                        lab.cpu_seconds() - cpu0)


def bittorrent(peers: int) -> SwarmRun:
    with Lab(f"bt{peers}") as lab:
        write_random_file(lab.root / "blob", SIZE)
        return run_bittorrent(lab, lab.root / "blob", peers, UPLOAD, ORIGIN_UPLOAD, PIECE,
                              _timeout(lower_bound(SIZE, peers, UPLOAD, ORIGIN_UPLOAD)))


def client_server(peers: int) -> SwarmRun:
    with Lab(f"cs{peers}") as lab:
        files = lab.root / "files"
        files.mkdir()
        write_random_file(files / "blob", SIZE)
        origin = start_origin(lab, files, ORIGIN_UPLOAD)
        times = curl_everywhere(lab, f"{origin}/files/blob", peers,
                                _timeout(lower_bound(SIZE, peers, 0, ORIGIN_UPLOAD)))
        return SwarmRun(times, origin_bytes_sent(origin), cpu_s=None)


SYSTEMS: Final[dict[str, Callable[[int], SwarmRun]]] = {
    "damselfly": partial(damselfly, TUNED), "damselfly, defaults": partial(damselfly, DEFAULTS),
    "bittorrent": bittorrent, "client/server": client_server}


def measure(system: str, peers: int) -> tuple[dict[str, Any], list[float]]:
    """One row of the table (an ``error`` instead of figures when the run failed)."""
    bound = lower_bound(SIZE, peers, UPLOAD, ORIGIN_UPLOAD)
    row: dict[str, Any] = {"system": system, "peers": peers,
                           "load_1m": round(os.getloadavg()[0], 1)}
    print(f"-- {system}, N={peers} (bound {bound:.2f}s)", flush=True)
    started = time.monotonic()
    try:
        run = SYSTEMS[system](peers)
    except (RuntimeError, OSError) as exc:
        print(f"   failed: {exc}", flush=True)
        return {**row, "error": str(exc)}, []
    row.update({k: round(v, 3) for k, v in swarm_summary(run.times, bound, run.origin_bytes,
                                                         SIZE).items()})
    if run.cpu_s is not None:
        row["cpu_s"] = round(run.cpu_s, 1)
    print(f"   slowest {row['slowest_s']}s, efficiency {row['eff_slowest']}, origin "
          f"{row['origin_ratio']}xF ({time.monotonic() - started:.0f}s wall)", flush=True)
    return row, run.times


def compare(rows: list[dict[str, Any]]) -> None:
    """Damselfly's slowest-peer time over BitTorrent's, on each Damselfly row."""
    slowest = {(r["system"], r["peers"]): r.get("slowest_s") for r in rows}
    for row in rows:
        bt = slowest.get(("bittorrent", row["peers"]))
        if row["system"].startswith("damselfly") and "slowest_s" in row and bt:
            row["vs_bittorrent"] = round(row["slowest_s"] / bt, 3)


def main() -> None:
    rows, series = [], {}
    for peers in PEERS:
        for system in SYSTEMS:
            if system == "damselfly, defaults" and peers != min(PEERS):
                continue  # the defaults' row shows why the tuning; once is enough
            row, times = measure(system, peers)
            rows.append(row)
            if times:
                series[f"{system} N={peers}"] = times
        bound = lower_bound(SIZE, peers, UPLOAD, ORIGIN_UPLOAD)
        plot_cdf(RESULTS / f"swarm-N{peers}.png",
                 f"Completion times, N={peers}, F={SIZE // MiB} MiB", "completion time (s)",
                 {k.removesuffix(f" N={peers}"): v for k, v in series.items()
                  if k.endswith(f" N={peers}")}, (f"bound {bound:.1f}s", bound))
    compare(rows)
    write_result("swarm", {
        "title": "Swarm: completion time vs the theoretical bound",
        "command": "make bench  (or: python -m bench swarm)",
        "params": {"file_bytes": SIZE, "peer_upload_Bps": UPLOAD,
                   "origin_upload_Bps": ORIGIN_UPLOAD, "download_cap": "none",
                   "piece_bytes": PIECE, "tuned_upload_limit": TUNED[0].upload_limit,
                   "tuned_back_to_source_limit": TUNED[1].back_to_source_limit},
        "notes": [(f"damselfly: --upload-limit {TUNED[0].upload_limit} and "
                   f"back_to_source_limit={TUNED[1].back_to_source_limit}; damselfly, defaults: "
                   "the daemon's and the scheduler's defaults (back_to_source_limit="
                   f"{DEFAULTS[1].back_to_source_limit}), same caps."),
                  "No seed peer: the origin is the only server, as in the bound."],
        "columns": ["system", "peers", "bound_s", "p50_s", "p99_s", "slowest_s", "eff_p50",
                    "eff_p99", "eff_slowest", "origin_ratio", "vs_bittorrent", "cpu_s",
                    "load_1m", "error"],
        "rows": rows,
        "series": series,
    })


if __name__ == "__main__":
    main()
