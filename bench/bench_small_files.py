"""Small files already in the swarm: how fast a daemon serves 1 KiB-1 MiB tasks that other
peers hold, through its local API (start, follow progress, export to a path — what
``damselfly get`` does, without its process start-up). Latency is measured one task at a
time on one daemon, throughput with many tasks in flight on another. Writes
``bench/results/small_files.json`` and ``small_files.png``.

Environment: ``BENCH_SMALL_COUNT`` files of each size (default 25).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

import anyio

from bench.report import RESULTS, plot_cdf, write_result
from bench.swarm_lab import (
    DaemonCaps,
    Lab,
    origin_bytes_sent,
    run_all,
    start_damselfly,
    start_origin,
    write_random_file,
)
from bench.swarm_math import percentile
from damselfly.events.config import ClusterConfig
from damselfly.services.peer.get import ApiClient, fetch_one
from damselfly.services.peer.request import DownloadRequest

SIZES: Final = (1 << 10, 16 << 10, 256 << 10, 1 << 20)


def file_count(text: str) -> int:
    """Files per size. Raises ``RuntimeError`` saying what is wrong."""
    if not text.isdigit() or int(text) < 1:
        raise RuntimeError(f"BENCH_SMALL_COUNT wants a number of files >= 1; got {text!r}")
    return int(text)


COUNT: Final = file_count(os.environ.get("BENCH_SMALL_COUNT", "25"))
IN_FLIGHT: Final = 16
TIMEOUT: Final = 300.0


async def fetch_all(endpoint: str, requests: Sequence[DownloadRequest], out: Path,
                    in_flight: int) -> tuple[list[float], float]:
    """Each task's seconds from start to exported file (in the order of ``requests``), and
    the wall time for all of them, with at most ``in_flight`` at once. Raises
    ``RuntimeError`` on a failed task or after ``TIMEOUT`` seconds."""
    client = ApiClient(endpoint)

    async def one(i: int, request: DownloadRequest) -> float:
        started = time.monotonic()
        await fetch_one(client, request, out / f"{i}", show_progress=False)
        return time.monotonic() - started

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        latencies = await run_all([partial(one, i, r) for i, r in enumerate(requests)],
                                  TIMEOUT, in_flight)
    finally:
        await client.close()
    return latencies, time.monotonic() - t0


def ms(values: Sequence[float], q: float) -> float:
    return round(1000 * percentile(values, q), 1)


def label(size: int) -> str:
    return f"{size >> 10} KiB" if size < 1 << 20 else f"{size >> 20} MiB"


def main() -> None:
    with Lab("small") as lab:
        files = lab.root / "files"
        files.mkdir()
        made = []
        for size in SIZES:
            for i in range(COUNT):
                name = f"{size}-{i}"
                made.append((name, write_random_file(files / name, size)))
        origin = start_origin(lab, files, rate=0)
        holder_a, holder_b, sequential, concurrent = (
            e["api_socket"] for e in start_damselfly(lab, 4, DaemonCaps(), ClusterConfig()))
        tasks = [DownloadRequest(url=f"{origin}/files/{name}", digest=digest)
                 for name, digest in made]
        print(f"-- warming two holders with {len(tasks)} files", flush=True)
        for holder in (holder_a, holder_b):
            anyio.run(fetch_all, holder, tasks, lab.root / "warm", IN_FLIGHT)
        origin_before = origin_bytes_sent(origin)
        print("-- one task at a time", flush=True)
        one_by_one, _ = anyio.run(fetch_all, sequential, tasks, lab.root / "seq", 1)
        print(f"-- {IN_FLIGHT} tasks in flight", flush=True)
        loaded, wall = anyio.run(fetch_all, concurrent, tasks, lab.root / "conc", IN_FLIGHT)
        from_origin = origin_bytes_sent(origin) - origin_before
    by_size = {size: one_by_one[k * COUNT:(k + 1) * COUNT] for k, size in enumerate(SIZES)}
    rows: list[dict[str, Any]] = [
        {"files": label(size), "in_flight": 1, "tasks": len(lat), "p50_ms": ms(lat, 50),
         "p99_ms": ms(lat, 99)} for size, lat in by_size.items()]
    rows.append({"files": "all sizes", "in_flight": 1, "tasks": len(one_by_one),
                 "p50_ms": ms(one_by_one, 50), "p99_ms": ms(one_by_one, 99),
                 "tasks_per_s": round(len(one_by_one) / sum(one_by_one), 1)})
    rows.append({"files": "all sizes", "in_flight": IN_FLIGHT, "tasks": len(loaded),
                 "p50_ms": ms(loaded, 50), "p99_ms": ms(loaded, 99),
                 "tasks_per_s": round(len(loaded) / wall, 1)})
    for row in rows:
        print(f"   {row}", flush=True)
    series = {f"{label(size)}, one at a time": [1000 * t for t in lat]
              for size, lat in by_size.items()}
    series[f"all sizes, {IN_FLIGHT} in flight"] = [1000 * t for t in loaded]
    plot_cdf(RESULTS / "small_files.png", "Small files already in the swarm, local API",
             "latency (ms)", series, ("aim: p50 50 ms", 50.0), logx=True)
    write_result("small_files", {
        "title": "Small files already in the swarm, through the local API",
        "command": "make bench  (or: python -m bench small_files)",
        "params": {"sizes": ", ".join(label(s) for s in SIZES), "files_per_size": COUNT,
                   "holders": 2, "origin_bytes_during_measurement": from_origin},
        "columns": ["files", "in_flight", "tasks", "p50_ms", "p99_ms", "tasks_per_s"],
        "rows": rows,
        "notes": [("Latency: POST /v1/tasks, follow /progress to the end, POST /export; "
                   "Dragonfly's own benchmark shows about 650-900 ms per small task.")],
    })


if __name__ == "__main__":
    main()
