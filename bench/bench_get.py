"""``damselfly get`` start-up, as a user meets it: one process per download, for a file the
local daemon already holds, against ``curl`` fetching the same bytes from that daemon's
upload server (the floor for any client process), and ``damselfly get --help``. Wall time
and peak RSS of each process, ``BENCH_GET_RUNS`` runs each (default 20). Writes
``bench/results/get_startup.json``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bench.report import write_result
from bench.swarm_lab import (
    DAMSELFLY,
    Lab,
    start_daemons,
    start_origin,
    start_scheduler,
    write_random_file,
)
from bench.swarm_math import percentile
from damselfly.services.peer.request import DownloadRequest

RUNS: Final = int(os.environ.get("BENCH_GET_RUNS", "20"))
SIZE: Final = 1 << 20
TIME: Final = "/usr/bin/time"


def timed(argv: Sequence[str], env: dict[str, str], rss: Path) -> tuple[float, float]:
    """One process's wall seconds and peak RSS in MiB (GNU time reads it: a child forked
    from this Python would report this process's size, which survives exec). Raises
    ``RuntimeError`` when it fails."""
    started = time.monotonic()
    done = subprocess.run([TIME, "-f", "%M", "-o", str(rss), *argv], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited with {done.returncode}: "
                           f"{done.stderr.decode().strip()}")
    return wall, int(rss.read_text().split()[-1]) / 1024


def row(name: str, samples: list[tuple[float, float]], baseline_ms: float | None
        ) -> dict[str, Any]:
    walls = [w * 1000 for w, _ in samples]
    out: dict[str, Any] = {"command": name, "runs": len(samples),
                           "p50_ms": round(percentile(walls, 50), 1),
                           "p90_ms": round(percentile(walls, 90), 1),
                           "max_rss_mib": round(max(r for _, r in samples), 1)}
    if baseline_ms:
        out["vs_curl"] = round(out["p50_ms"] / baseline_ms, 2)
    return out


def main() -> None:
    if not Path(TIME).exists():
        raise RuntimeError(f"needs GNU time at {TIME} (Debian's time; make bench installs it)")
    with Lab("get") as lab:
        write_random_file(lab.root / "f.bin", SIZE)
        origin = start_origin(lab, lab.root, 0)
        nats = lab.broker_url(None)
        start_scheduler(lab, nats)
        ready = start_daemons(lab, nats, ["peer"])["peer"]
        env = {**os.environ, **lab.env}
        url = f"{origin}/files/f.bin"
        out = lab.root / "out.bin"
        get = [DAMSELFLY, "get", url, "-O", str(out), "-e", ready["api_socket"],
               "--no-progress", "--overwrite"]
        rss = lab.root / "rss"
        timed(get, env, rss)  # the daemon fetches it once; every timed run finds it held
        task = DownloadRequest(url=url).task_id()
        token = lab.grants.grant(task, "bench", str(ready["host_id"]), time.time() + 3600)
        curl = ["curl", "-sS", "-f", "-o", str(lab.root / "curl.bin"), "-H",
                f"Authorization: Bearer {token}", f"{ready['upload_url']}/v1/tasks/{task}/content"]
        curls = [timed(curl, env, rss) for _ in range(RUNS)]
        gets = [timed(get, env, rss) for _ in range(RUNS)]
        helps = [timed([DAMSELFLY, "get", "--help"], env, rss) for _ in range(RUNS)]
        if out.read_bytes() != (lab.root / "f.bin").read_bytes():
            raise RuntimeError("damselfly get wrote other bytes than the origin's")
    base = row("curl from the daemon's upload server", curls, None)
    rows = [base, row("damselfly get (file already held)", gets, base["p50_ms"]),
            row("damselfly get --help", helps, base["p50_ms"])]
    for r in rows:
        print(f"   {r['command']}: p50 {r['p50_ms']} ms, peak RSS {r['max_rss_mib']} MiB")
    write_result("get_startup", {
        "title": "damselfly get start-up: a file the local daemon holds, one process each",
        "command": "make bench  (or: python -m bench get)",
        "params": {"file_kib": SIZE >> 10, "runs": RUNS},
        "notes": ["vs_curl: p50 wall over curl's p50 in the same run; RSS is each process's "
                  "peak (ru_maxrss)."],
        "columns": ["command", "runs", "p50_ms", "p90_ms", "max_rss_mib", "vs_curl"],
        "rows": rows,
    })


if __name__ == "__main__":
    main()
