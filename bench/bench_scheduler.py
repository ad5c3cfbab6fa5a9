"""Scheduler throughput and latency, each next to a raw nats-py figure from the same run.

1. Fold rate: a recorded-style swarm log in DF_TASKS is folded by one scheduler (this
   process, all 16 partitions) — events/s, against raw nats-py consumers of the same
   messages (a pull consumer that acks, a push ordered consumer, the scheduler's way), and
   against the pure core alone (no I/O).
2. Latency with 1,000 concurrent peers: registration-to-decision p50/p99 for a burst (1,000
   peers register at once) and steady (one registration every 5 ms while 3,000 peers are
   active), with a scheduler process against a raw echo process (consume from the stream,
   publish a reply).

Run: ``.venv/bin/python -m bench.bench_scheduler``; writes ``bench/results/scheduler.json``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TypedDict

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from damselfly.events.base import Event
from damselfly.events.bus import Publisher
from damselfly.events.codec import decode
from damselfly.events.hosts import HostAnnounced
from damselfly.events.streams import ensure_streams
from damselfly.events.tasks import (
    BackToSourceStarted,
    PeerRegistered,
    PeerSucceeded,
    PieceFinished,
    TaskEvent,
    TaskMetadataReported,
)
from damselfly.services.launcher.broker import start_broker
from damselfly.services.runtime.natsconn import connect
from damselfly.services.runtime.procs import DAMSELFLY, spawn, stop, wait_ready, write_ready
from damselfly.services.scheduler import core
from damselfly.services.scheduler.shell import Scheduler

TASKS, PEERS, PIECES = 120, 12, 48           # fold workload: ~75k events
LAT_PEERS, LAT_TASKS, LAT_ROUNDS, STEADY = 1000, 10, 3, 300


class Common(TypedDict):
    """The fields every task event of one task shares."""

    at: float
    cluster: str
    task_id: str


def digest(piece: int) -> str:
    """A well-formed piece digest (an event with any other shape is refused at encoding)."""
    return f"sha256:{hashlib.sha256(str(piece).encode()).hexdigest()}"


def task_id(cluster: str, i: int) -> str:
    return hashlib.sha256(f"{cluster}/{i}".encode()).hexdigest()


def hosts(cluster: str, n: int, limit: int) -> list[Event]:
    return [HostAnnounced(id=f"{cluster}-h{i}", at=0.0, cluster=cluster, host_id=f"h{i}",
                          hostname=f"h{i}", ip="127.0.0.1", upload_url=f"http://127.0.0.1:9/h{i}",
                          upload_limit=limit) for i in range(n)]


def swarm_log(cluster: str) -> list[Event]:
    """Per task: a source peer fetches every piece, then peers fetch from it and succeed."""
    out: list[Event] = []
    for t in range(TASKS):
        task = task_id(cluster, t)
        common: Common = {"at": 0.0, "cluster": cluster, "task_id": task}
        src = f"t{t}-p0"
        out += [PeerRegistered(id=f"{task}-r0", **common, peer_id=src, host_id="h0",
                               url=f"https://origin/{t}"),
                BackToSourceStarted(id=f"{task}-b0", **common, peer_id=src),
                TaskMetadataReported(id=f"{task}-m0", **common, peer_id=src,
                                     content_length=PIECES * 1024, piece_length=1024,
                                     piece_count=PIECES)]
        out += [PieceFinished(id=f"{task}-s{i}", **common, peer_id=src, piece=i,
                              length=1024, digest=digest(i)) for i in range(PIECES)]
        for p in range(1, PEERS):
            peer = f"t{t}-p{p}"
            out.append(PeerRegistered(id=f"{task}-r{p}", **common, peer_id=peer,
                                      host_id=f"h{p}", url=f"https://origin/{t}"))
            out += [PieceFinished(id=f"{task}-{p}-{i}", **common, peer_id=peer, piece=i,
                                  length=1024, digest=digest(i), parent_id=src, cost_ms=5.0)
                    for i in range(PIECES)]
            out.append(PeerSucceeded(id=f"{task}-ok{p}", **common, peer_id=peer,
                                     content_length=PIECES * 1024, piece_count=PIECES))
    return out


async def publish(nc: Client, events: list[Event]) -> None:
    pub = Publisher(nc.jetstream(), timeout=60.0)
    for i in range(0, len(events), 2000):
        await pub.publish_many(events[i:i + 2000])


async def raw_consume(nc: Client, subject: str, count: int) -> float:
    """Seconds for a plain pull consumer to fetch and ack ``count`` messages."""
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, stream="DF_TASKS",
                                  config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT,
                                                        max_ack_pending=4096))
    start, seen = time.perf_counter(), 0
    while seen < count:
        for msg in await sub.fetch(256, timeout=10.0):
            await msg.ack()
            seen += 1
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    return elapsed


async def raw_push(nc: Client, subject: str, count: int, stream: str = "DF_TASKS",
                   timeout: float = 120.0) -> float:
    """Seconds for a push ordered consumer to receive ``count`` messages."""
    done = asyncio.Event()
    seen = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            done.set()

    start = time.perf_counter()
    sub = await nc.jetstream().subscribe(subject, stream=stream, cb=on_msg,
                                         ordered_consumer=True, pending_msgs_limit=1 << 20)
    await asyncio.wait_for(done.wait(), timeout)
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    return elapsed


async def scheduler_fold(nc: Client, cluster: str, count: int) -> float:
    """Seconds for one in-process scheduler to fold ``count`` task events (all partitions)."""
    stop_event = asyncio.Event()
    scheduler = Scheduler(nc, cluster=cluster, scheduler_id="bench", snapshot_every=3600.0)
    start = time.perf_counter()
    task = asyncio.create_task(scheduler.run(stop_event))
    # Every partition also folds the 16 host announcements.
    while sum(o.worker.folded for o in scheduler.owned.values()) < count + 16 * 16:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - start
    stop_event.set()
    await task
    return elapsed


def core_fold(events: list[Event], cluster: str) -> float:
    states = [core.new_state(cluster) for _ in range(16)]
    start = time.perf_counter()
    for e in events:
        task = getattr(e, "task_id", None)
        if task is None:
            for s in states:
                core.step(s, e)
        else:
            core.step(states[int(task[:8], 16) % 16], e)
    return time.perf_counter() - start


async def fold_bench(url: str) -> dict[str, float]:
    nc = await connect(url, "bench-fold")
    try:
        await ensure_streams(nc.jetstream())
        cluster = "fold"
        log = swarm_log(cluster)
        setup = hosts(cluster, 16, 1000)
        await publish(nc, setup + log)
        raw = await raw_consume(nc, f"df.task.{cluster}.>", len(log))
        push = await raw_push(nc, f"df.task.{cluster}.>", len(log))
        folded = await scheduler_fold(nc, cluster, len(log))
        pure = core_fold(setup + log, cluster)
    finally:
        await nc.drain()
    return {"events": len(log), "raw_pull_ack_per_s": len(log) / raw,
            "raw_push_per_s": len(log) / push, "scheduler_fold_per_s": len(log) / folded,
            "core_only_per_s": len(log + setup) / pure}


class Replies:
    """Time of the first decision to each peer, from a wildcard subscription."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.arrived: dict[str, float] = {}
        self.all_in = asyncio.Event()

    async def on_decision(self, msg: Msg) -> None:
        peer = msg.subject.rsplit(".", 1)[1]
        if peer in self.sent and peer not in self.arrived:
            self.arrived[peer] = time.perf_counter()
            if len(self.arrived) == len(self.sent):
                self.all_in.set()

    async def collect(self) -> list[float]:
        await asyncio.wait_for(self.all_in.wait(), 60.0)
        out = [self.arrived[p] - self.sent[p] for p in self.sent]
        self.sent.clear()
        self.arrived.clear()
        self.all_in.clear()
        return out


async def measure_latency(nc: Client, cluster: str) -> dict[str, list[float]]:
    """Seconds from publishing a registration to receiving its decision, burst and steady."""
    pub = Publisher(nc.jetstream(), timeout=30.0)
    await pub.publish_many(hosts(cluster, 50, 5000))
    replies = Replies()
    sub = await nc.subscribe(f"df.sched.{cluster}.>", cb=replies.on_decision)
    tasks = [task_id(cluster, t) for t in range(LAT_TASKS)]
    for t, task in enumerate(tasks):  # one holder per task
        src = f"src{t}"
        common: Common = {"at": 0.0, "cluster": cluster, "task_id": task}
        await pub.publish_many([
            PeerRegistered(id=f"{task}-r", **common, peer_id=src, host_id=f"h{t}", url="u"),
            BackToSourceStarted(id=f"{task}-b", **common, peer_id=src),
            TaskMetadataReported(id=f"{task}-m", **common, peer_id=src, content_length=1024,
                                 piece_length=1024, piece_count=1),
            PieceFinished(id=f"{task}-p", **common, peer_id=src, piece=0, length=1024,
                          digest=digest(0))])
    await asyncio.sleep(1.0)

    def registration(name: str, i: int) -> PeerRegistered:
        return PeerRegistered(id=f"{cluster}-{name}", at=0.0, cluster=cluster,
                              task_id=tasks[i % LAT_TASKS], peer_id=name,
                              host_id=f"h{10 + i % 40}", url="u")

    burst: list[float] = []
    for r in range(LAT_ROUNDS):
        regs = [registration(f"r{r}p{i}", i) for i in range(LAT_PEERS)]
        for e in regs:
            replies.sent[e.peer_id] = time.perf_counter()
        await pub.publish_many(regs)
        burst += await replies.collect()
    for i in range(STEADY):
        e = registration(f"s{i}", i)
        replies.sent[e.peer_id] = time.perf_counter()
        await pub.publish(e)
        await asyncio.sleep(0.005)
    steady = await replies.collect()
    await sub.unsubscribe()
    return {"burst": burst, "steady": steady}


async def echo(url: str, cluster: str, ready: Path) -> None:
    """The raw baseline of a decision: consume each registration, publish one reply."""
    nc = await connect(url, "bench-echo")
    js = nc.jetstream()
    sub = await js.pull_subscribe(f"df.task.{cluster}.>", stream="DF_TASKS",
                                  config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
    write_ready(ready, {"cluster": cluster})
    while True:
        try:
            msgs = await sub.fetch(256, timeout=1.0)
        except TimeoutError:
            continue
        futures = []
        for msg in msgs:
            event = decode(msg.data)
            assert isinstance(event, TaskEvent), event  # the subscription takes task events only
            parts = msg.subject.split(".")
            futures.append(await js.publish_async(
                f"df.sched.{cluster}.{parts[3]}.{event.peer_id}", b"{}"))
        await asyncio.gather(*futures)
        for msg in msgs:
            await msg.ack()


def percentiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=100)
    return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}


async def latency_bench(url: str, work: Path) -> dict[str, dict[str, dict[str, float]]]:
    nc = await connect(url, "bench-latency")
    measured: dict[str, dict[str, list[float]]] = {}
    try:
        await ensure_streams(nc.jetstream())
        echo_ready = work / "echo.json"
        proc = spawn([sys.executable, "-m", "bench.bench_scheduler", "--echo", url, "echo",
                      str(echo_ready)])
        try:
            wait_ready(echo_ready, proc)
            measured["raw_echo"] = await measure_latency(nc, "echo")
        finally:
            stop([proc])
        ready = work / "scheduler.json"
        with (work / "scheduler.log").open("wb") as log:
            sched = spawn([*DAMSELFLY, "scheduler", "--nats", url,
                           "--cluster", "lat", "--ready-file", str(ready)], log)
        try:
            wait_ready(ready, sched)
            measured["scheduler"] = await measure_latency(nc, "lat")
        finally:
            stop([sched])
    finally:
        await nc.drain()
    return {who: {mode: percentiles(v) for mode, v in modes.items()}
            for who, modes in measured.items()}


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--echo":
        asyncio.run(echo(sys.argv[2], sys.argv[3], Path(sys.argv[4])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_broker(Path(tmp) / "nats")
        try:
            fold = asyncio.run(fold_bench(broker.url))
            latency = asyncio.run(latency_bench(broker.url, Path(tmp)))
        finally:
            broker.stop()
    result: dict[str, object] = {"fold": {
        **fold, "scheduler_vs_raw_push": fold["scheduler_fold_per_s"] / fold["raw_push_per_s"],
        "scheduler_vs_raw_pull_ack": fold["scheduler_fold_per_s"] / fold["raw_pull_ack_per_s"]}}
    print(f"fold: {fold['events']} events; scheduler {fold['scheduler_fold_per_s']:,.0f}/s; raw "
          f"push {fold['raw_push_per_s']:,.0f}/s, raw pull+ack {fold['raw_pull_ack_per_s']:,.0f}/s "
          f"(x{fold['scheduler_fold_per_s'] / fold['raw_push_per_s']:.2f} / "
          f"x{fold['scheduler_fold_per_s'] / fold['raw_pull_ack_per_s']:.2f}); "
          f"core alone {fold['core_only_per_s']:,.0f}/s")
    for mode in ("burst", "steady"):
        s, r = latency["scheduler"][mode], latency["raw_echo"][mode]
        ratios = {k: s[k] / r[k] for k in s}
        result[f"latency_{mode}"] = {"scheduler": s, "raw_echo": r,
                                     **{f"{k}_vs_raw": v for k, v in ratios.items()}}
        print(f"registration->decision ({mode}): p50 {s['p50_ms']:.1f} ms p99 {s['p99_ms']:.1f} ms;"
              f" raw echo p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms "
              f"(x{ratios['p50_ms']:.2f} / x{ratios['p99_ms']:.2f})")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "scheduler.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
