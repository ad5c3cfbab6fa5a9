"""The control plane at scale: simulated hosts and peers that speak only the events (no piece
bytes) against a real nats-server and a real scheduler process, for 1,000, 5,000 and 15,000
hosts (``BENCH_CP_HOSTS``), each next to raw nats-py figures from the same run, on one
nats-server or on a 3-node JetStream cluster keeping every stream on all three
(``BENCH_CP_NATS_NODES=3``: what replication costs).

For each host count, on a fresh broker:
1. Every host announces itself; the time until the scheduler has folded every announcement
   into each of its 16 partitions (its own ``damselfly_scheduler_events_folded_total``)
   gives its fold rate, against a raw ordered push consumer reading the same messages.
2. While every host keeps alive (one ``HostKeepalive`` per host every ``KEEPALIVE`` s),
   ``TASKS`` tasks get a source peer each, and bursts of ``BURST`` peers on distinct hosts
   register at once: registration → first decision p50/p99, against a raw echo process
   (consume each registration, publish one reply) on the same broker.
3. The scheduler's and nats-server's peak RSS and CPU seconds over the whole run.

Aims (issue 14): at 15,000 hosts decision p99 <= 100 ms and scheduler RSS <= 1 GiB; fold
rate at least the raw consume baseline; growth from 1,000 to 15,000 hosts linear or better.

Run: ``.venv/bin/python -m bench control_plane``; writes ``bench/results/control_plane.json``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Final

from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from bench.bench_scheduler import Common, Replies, digest, hosts, percentiles, raw_push, task_id
from bench.report import write_result
from damselfly.events.bus import Publisher
from damselfly.events.hosts import HostKeepalive
from damselfly.events.streams import REPLICAS_ENV
from damselfly.events.tasks import (
    BackToSourceStarted,
    PeerRegistered,
    PieceFinished,
    TaskMetadataReported,
)
from damselfly.services.launcher.broker import start_broker, start_cluster
from damselfly.services.launcher.up import prepare_streams
from damselfly.services.runtime.natsconn import connect
from damselfly.services.runtime.procs import DAMSELFLY, spawn, stop, wait_ready

HOSTS: Final = [int(n) for n in os.environ.get("BENCH_CP_HOSTS", "1000,5000,15000").split(",")]
NATS_NODES: Final = int(os.environ.get("BENCH_CP_NATS_NODES", "1"))
TASKS, BURST, ROUNDS, KEEPALIVE, PARTITIONS = 100, 1000, 3, 5.0, 16  # as a daemon: every 5 s
CLUSTER: Final = "cp"


def proc_figures(pid: int) -> dict[str, float]:
    """Peak RSS (MiB) and CPU seconds of a live process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines()
               if line.startswith("VmHWM:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"peak_rss_mib": hwm / 1024, "cpu_s": (int(fields[11]) + int(fields[12])) / ticks}


def folded(metrics_url: str) -> float:
    """Events the scheduler folded so far, over every stream (from its ``/metrics``)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == "damselfly_scheduler_events_folded_total")


async def keep_alive(pub: Publisher, n: int, stop_event: asyncio.Event) -> int:
    """Every host's keepalive once per ``KEEPALIVE`` seconds, in 10 slices per period."""
    sent, i, step = 0, 0, max(1, n // 10)
    while not stop_event.is_set():
        batch = [HostKeepalive(id=f"ka-{sent + j}", at=time.time(), cluster=CLUSTER,
                               host_id=f"h{(i + j) % n}", uploads_running=0, upload_limit=50)
                 for j in range(step)]
        await pub.publish_many(batch)
        sent, i = sent + step, (i + step) % n
        try:
            await asyncio.wait_for(stop_event.wait(), KEEPALIVE / 10)
        except TimeoutError:
            pass
    return sent


async def sources(pub: Publisher) -> list[str]:
    tasks = [task_id(CLUSTER, t) for t in range(TASKS)]
    for t, task in enumerate(tasks):
        common: Common = {"at": 0.0, "cluster": CLUSTER, "task_id": task}
        src = f"src{t}"
        await pub.publish_many([
            PeerRegistered(id=f"{task}-r", **common, peer_id=src, host_id=f"h{t}", url="u"),
            BackToSourceStarted(id=f"{task}-b", **common, peer_id=src),
            TaskMetadataReported(id=f"{task}-m", **common, peer_id=src, content_length=1024,
                                 piece_length=1024, piece_count=1),
            PieceFinished(id=f"{task}-p", **common, peer_id=src, piece=0, length=1024,
                          digest=digest(0))])
    return tasks


async def bursts(nc: Client, pub: Publisher, tasks: list[str], n_hosts: int,
                 cluster: str) -> list[float]:
    """Registration → decision seconds of ``ROUNDS`` bursts of ``BURST`` peers."""
    replies = Replies()
    sub = await nc.subscribe(f"df.sched.{cluster}.>", cb=replies.on_decision)
    out: list[float] = []
    try:
        for r in range(ROUNDS):
            regs = [PeerRegistered(id=f"{cluster}-r{r}p{i}", at=0.0, cluster=cluster,
                                   task_id=tasks[i % TASKS], peer_id=f"r{r}p{i}",
                                   host_id=f"h{(TASKS + r * BURST + i) % n_hosts}", url="u")
                    for i in range(BURST)]
            for e in regs:
                replies.sent[e.peer_id] = time.perf_counter()
            await pub.publish_many(regs)
            out += await replies.collect()
    finally:
        await sub.unsubscribe()
    return out


async def echo_latency(nc: Client, url: str, work: Path, n_hosts: int) -> list[float]:
    """The raw baseline: bench_scheduler's echo process answers each registration."""
    ready = work / "echo.json"
    proc = spawn([sys.executable, "-m", "bench.bench_scheduler", "--echo", url, "echo",
                  str(ready)])
    try:
        wait_ready(ready, proc)
        pub = Publisher(nc.jetstream(), timeout=60.0)
        tasks = [task_id("echo", t) for t in range(TASKS)]
        return await bursts(nc, pub, tasks, n_hosts, "echo")
    finally:
        stop([proc])


async def one_size(n_hosts: int, work: Path) -> dict[str, Any]:
    brokers = ([start_broker(work / "nats")] if NATS_NODES == 1
               else start_cluster(work / "nats", NATS_NODES))
    url = ",".join(b.url for b in brokers)
    replicas = min(NATS_NODES, 3)
    try:
        await prepare_streams(url, None, replicas)
        nc = await connect(url, "bench-control-plane")
        try:
            ready = work / "scheduler.json"
            with (work / "scheduler.log").open("wb") as log:
                sched = spawn([*DAMSELFLY, "scheduler", "--nats", url, "--cluster",
                               CLUSTER, "--ready-file", str(ready), "--metrics-port", "0",
                               "--keepalive-timeout", "3600"], log,
                              {REPLICAS_ENV: str(replicas)})
            try:
                endpoints = wait_ready(ready, sched)
                metrics_url = str(endpoints["metrics_url"])
                row = await measure(nc, url, work, n_hosts, metrics_url)
                row.update({f"scheduler_{k}": round(v, 1)
                            for k, v in proc_figures(sched.pid).items()})
                # A cluster's figures are its nodes' sums.
                nodes = [proc_figures(b.proc.pid) for b in brokers]
                row.update({f"nats_{k}": round(sum(n[k] for n in nodes), 1) for k in nodes[0]})
            finally:
                stop([sched])
        finally:
            await nc.drain()
    finally:
        stop([b.proc for b in brokers])
    return row


async def measure(nc: Client, url: str, work: Path, n_hosts: int,
                  metrics_url: str) -> dict[str, Any]:
    pub = Publisher(nc.jetstream(), timeout=60.0)
    before = folded(metrics_url)
    start = time.perf_counter()
    announced = hosts(CLUSTER, n_hosts, 50)
    for i in range(0, n_hosts, 2000):
        await pub.publish_many(announced[i:i + 2000])
    want = before + PARTITIONS * n_hosts
    while folded(metrics_url) < want:
        if time.perf_counter() - start > 600:
            raise RuntimeError(f"the scheduler folded {folded(metrics_url) - before:.0f} of "
                               f"{want - before:.0f} announcements in 600 s")
        await asyncio.sleep(0.05)
    fold_s = time.perf_counter() - start
    raw_s = await raw_push(nc, f"df.host.{CLUSTER}.*.announced", n_hosts, "DF_HOSTS", 300.0)

    stop_event = asyncio.Event()
    keepalives = asyncio.create_task(keep_alive(pub, n_hosts, stop_event))
    try:
        tasks = await sources(pub)
        await asyncio.sleep(1.0)
        latency = await bursts(nc, pub, tasks, n_hosts, CLUSTER)
        raw_latency = await echo_latency(nc, url, work, n_hosts)
    finally:
        stop_event.set()
        sent = await keepalives
    sched, echo = percentiles(latency), percentiles(raw_latency)
    return {
        "hosts": n_hosts, "announce_fold_s": round(fold_s, 2),
        "folds_per_s": round(PARTITIONS * n_hosts / fold_s),
        "announcements_per_s": round(n_hosts / fold_s),
        "raw_push_per_s": round(n_hosts / raw_s),
        "fold_vs_raw": round(raw_s / fold_s, 3),
        "decision_p50_ms": round(sched["p50_ms"], 1), "decision_p99_ms": round(sched["p99_ms"], 1),
        "echo_p50_ms": round(echo["p50_ms"], 1), "echo_p99_ms": round(echo["p99_ms"], 1),
        "p99_vs_echo": round(sched["p99_ms"] / echo["p99_ms"], 2),
        "keepalives_sent": sent,
    }


def main() -> None:
    rows = []
    for n in HOSTS:
        with tempfile.TemporaryDirectory() as tmp:
            row = asyncio.run(one_size(n, Path(tmp)))
        print(row, flush=True)
        rows.append(row)
    if rows:
        first = rows[0]
        for row in rows:  # growth against the smallest size: 1.0 per host is linear
            scale = row["hosts"] / first["hosts"]
            row["fold_s_growth_per_host_growth"] = round(
                row["announce_fold_s"] / first["announce_fold_s"] / scale, 2)
            row["rss_growth_per_host_growth"] = round(
                row["scheduler_peak_rss_mib"] / first["scheduler_peak_rss_mib"] / scale, 2)
    columns = ["hosts", "announce_fold_s", "folds_per_s", "announcements_per_s",
               "raw_push_per_s", "fold_vs_raw", "decision_p50_ms", "decision_p99_ms",
               "echo_p50_ms", "echo_p99_ms", "p99_vs_echo", "scheduler_peak_rss_mib",
               "scheduler_cpu_s", "nats_peak_rss_mib", "nats_cpu_s", "keepalives_sent",
               "fold_s_growth_per_host_growth", "rss_growth_per_host_growth"]
    write_result("control_plane" if NATS_NODES == 1 else f"control_plane_{NATS_NODES}_nodes", {
        "title": "Control plane: simulated hosts against one scheduler process",
        "params": {"hosts": HOSTS, "tasks": TASKS, "burst": BURST, "rounds": ROUNDS,
                   "keepalive_s": KEEPALIVE, "partitions": PARTITIONS,
                   "nats_nodes": NATS_NODES},
        "columns": columns, "rows": rows,
        "notes": ["announce_fold_s: from the first announcement published to the scheduler "
                  "having folded every one into each of its 16 partitions (its own metrics); "
                  "fold_vs_raw: a raw ordered push consumer's time for the same messages / "
                  "the scheduler's (>= 1: at least as fast)",
                  "decision: registration published → first decision received, for bursts "
                  f"of {BURST} peers on distinct hosts while every host keeps alive; echo: "
                  "a raw process that consumes each registration and publishes one reply",
                  "*_growth_per_host_growth: the figure's growth over the smallest size "
                  "divided by the hosts' growth (1.0: linear, below: better)"],
        "command": "python -m bench control_plane  (BENCH_CP_HOSTS=1000,5000,15000)",
    })


if __name__ == "__main__":
    main()
