"""Compression on the wire (issue 13): one child fetching a file from a parent that holds it,
over one kernel-shaped link (U = ``BENCH_WIRE_RATE_MIB``, default 8 MiB/s; needs root, says
so and skips without it), with the parents' zstd on and off (``--no-wire-compression``), for
a compressible file (text-like lines: logs, source, JSON) and a random one (what gzip
layers and most weights look like to zstd).

Per row: the child's completion time, the bytes the parent's link carried / F, and the CPU
seconds of parent and child, with the ratio against the same content uncompressed.

Run: ``.venv/bin/python -m bench wire``; writes ``bench/results/wire.json``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Final

import anyio

from bench import netlab
from bench.netlab import NetLab
from bench.report import write_result
from bench.swarm_lab import (
    DaemonCaps,
    Lab,
    download_everywhere,
    start_daemons,
    start_origin,
    start_scheduler,
    write_random_file,
)
from damselfly.services.peer.digests import file_digest
from damselfly.services.peer.request import DownloadRequest

MiB: Final = 1 << 20
SIZE: Final = int(float(os.environ.get("BENCH_WIRE_MIB", "64")) * MiB)
RATE: Final = float(os.environ.get("BENCH_WIRE_RATE_MIB", "8")) * MiB
CORE, PARENT, CHILD = "core", "parent", "child"


def write_text_file(path: Path, size: int) -> None:
    """Log-like lines: timestamps, levels, ids and words, as build logs or JSON lines are."""
    rng = random.Random(7)
    words = ["fetch", "piece", "parent", "child", "digest", "layer", "manifest", "task",
             "scheduler", "sha256", "ok", "retry", "error", "timeout", "peer", "seed"]
    with open(path, "w") as f:
        written = 0
        while written < size:
            line = (f"2026-12-04T19:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z "
                    f"{rng.choice(['INFO', 'WARN', 'DEBUG'])} task={rng.getrandbits(32):08x} "
                    + " ".join(rng.choice(words) for _ in range(rng.randrange(4, 12))) + "\n")
            written += f.write(line[:size - written])


def one(net: NetLab, source: Path, compress: bool) -> dict[str, Any]:
    size = source.stat().st_size
    caps = DaemonCaps(args=() if compress else ("--no-wire-compression",))
    with Lab("wire") as lab:
        core = net[CORE]
        origin = start_origin(lab, source.parent, 0, core)
        nats = lab.broker_url(None, core)
        start_scheduler(lab, nats, core)
        ready = start_daemons(lab, nats, [PARENT, CHILD], caps, hosts=net.hosts,
                              seeds=[PARENT])
        request = DownloadRequest(url=f"{origin}/files/{source.name}",
                                  digest=file_digest(source, "sha256"))
        timeout = 60.0 + 6.0 * size / RATE
        anyio.run(download_everywhere, [ready[PARENT]["api_socket"]], request, timeout)
        tx0, cpu0 = net.egress_bytes(PARENT), lab.cpu_seconds([PARENT, CHILD])
        child = anyio.run(download_everywhere, [ready[CHILD]["api_socket"]], request,
                          timeout)[0]
        if child.get("bytes_from_peers", 0) != size:
            raise RuntimeError("the child did not fetch the file from its parent")
        return {"seconds": round(child["seconds"], 3),
                "parent_link_ratio": round((net.egress_bytes(PARENT) - tx0) / size, 3),
                "cpu_s": round(lab.cpu_seconds([PARENT, CHILD]) - cpu0, 2)}


def main() -> None:
    if why := netlab.available():
        print(f"bench wire skipped: {why} (run it as root)")
        return
    rows: list[dict[str, Any]] = []
    with NetLab([CORE, PARENT, CHILD], RATE) as net, Lab("wire-files") as files:
        sources = {"text-like": files.root / "text.log", "random": files.root / "random.bin"}
        write_text_file(sources["text-like"], SIZE)
        write_random_file(sources["random"], SIZE)
        for content, source in sources.items():
            plain = one(net, source, compress=False)
            zstd = one(net, source, compress=True)
            for wire, row in (("plain", plain), ("zstd", zstd)):
                rows.append({"content": content, "wire": wire, "mib": SIZE // MiB, **row,
                             "vs_plain": round(row["seconds"] / plain["seconds"], 3)})
                print(rows[-1], flush=True)
    write_result("wire", {
        "title": "Compression on the wire: one child from one parent over a shaped link",
        "params": {"file_mib": SIZE // MiB, "link_MiBps": RATE / MiB,
                   "shaping": "tc tbf on each host's egress"},
        "columns": ["content", "wire", "mib", "seconds", "vs_plain", "parent_link_ratio",
                    "cpu_s"],
        "rows": rows,
        "notes": ["plain: parents started with --no-wire-compression; zstd: the default",
                  "parent_link_ratio: bytes the parent's link carried while the child "
                  "fetched / F; cpu_s: parent and child together"],
        "command": "python -m bench wire",
    })


if __name__ == "__main__":
    main()
