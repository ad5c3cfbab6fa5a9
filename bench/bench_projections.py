"""Projection throughput and dashboard latency, each next to a baseline from the same run.

1. Apply rate: a synthetic swarm log (mostly piece events) is decoded and applied to every
   projection in batches of 1,024 with its watermarks — stream events per second — against
   a raw DuckDB bulk insert of one flat row per event (the same list-parameter insert the
   projections use, no folding, no upserts), and against ``executemany`` on a sample.
2. End to end: the same kind of log published to an embedded nats-server and projected by
   the real ``Projector`` until its watermarks reach the streams' ends, against pulling,
   decoding and acking the same messages with no DuckDB at all.
3. Panels: a day of traffic with 10 million piece events (1,000 tasks x 100 peers x 100
   pieces, plus registrations, decisions and successes) is generated and projected through
   ``store.apply_batch`` (about 2 minutes here; ``--piece-events N`` scales it), then every
   dashboard panel runs 50 times: p50/p95 per panel, as root and as a user of one of four
   tenants (the manager's tenant-scoped rewrite of the same SQL, over a quarter of the tasks).

Run: ``.venv/bin/python -m bench.bench_projections``; writes ``bench/results/projections.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
from nats.js import JetStreamContext

from damselfly import dashboards
from damselfly.events.bus import Consumer, Publisher
from damselfly.events.codec import AnyEvent, decode, encode
from damselfly.events.hosts import HostAnnounced
from damselfly.events.jobs import (
    JobFailed,
    JobProgressed,
    JobStarted,
    JobSucceeded,
    PreheatRequested,
)
from damselfly.events.sched import BackToSourceOrdered, ParentInfo, ParentsAssigned
from damselfly.events.streams import ensure_streams
from damselfly.events.tasks import PeerRegistered, PeerSucceeded, PieceFinished
from damselfly.projections import store
from damselfly.projections.projector import Projector
from damselfly.services.launcher.broker import start_broker
from damselfly.services.manager.reader import RELATIONS
from damselfly.services.manager.tenancy import scoped
from damselfly.services.runtime.natsconn import connect
from tests.support.synthetic import Swarm, by_stream, events

BATCH = 16384  # what the projector gathers per transaction while behind
APPLY_SWARM = Swarm(cluster="bench", tasks=40, peers_per_task=50, pieces=100)  # ~206k events
NATS_SWARM = Swarm(cluster="nats", tasks=10, peers_per_task=40, pieces=100)  # ~41k events
PEERS, PIECES = 100, 100  # per task; tasks follow from --piece-events
PIECE_EVENTS = 10_000_000
DAY_START = 1_800_000_000.0
RUNS = 50
TENANTS = 4  # the day's tasks belong to team-0 … team-3; panels are timed as team-0 too
DIGEST = "sha256:" + "0" * 64  # one well-formed digest for every piece (their value is not read)


def encoded_log(swarm: Swarm) -> dict[str, list[tuple[int, bytes]]]:
    return {s: [(seq, encode(e)) for seq, e in items]
            for s, items in by_stream(events(swarm)).items()}


def apply_rate(tmp: Path) -> dict[str, float]:
    log = encoded_log(APPLY_SWARM)
    total = sum(len(items) for items in log.values())
    con = store.connect(tmp / "apply.duckdb")
    started = time.perf_counter()
    for stream, items in log.items():
        for i in range(0, len(items), BATCH):
            chunk = [(seq, decode(data)) for seq, data in items[i:i + BATCH]]
            store.apply_batch(con, stream, chunk)
    projected = time.perf_counter() - started
    con.close()

    flat = duckdb.connect(str(tmp / "raw.duckdb"))
    flat.execute("CREATE TABLE raw (seq BIGINT, type VARCHAR, task_id VARCHAR, peer_id VARCHAR, "
                 "piece INTEGER, length BIGINT, at_s DOUBLE)")
    insert = ("INSERT INTO raw SELECT unnest($1::BIGINT[]), unnest($2::VARCHAR[]), "
              "unnest($3::VARCHAR[]), unnest($4::VARCHAR[]), unnest($5::INTEGER[]), "
              "unnest($6::BIGINT[]), unnest($7::DOUBLE[])")
    started = time.perf_counter()
    for items in log.values():
        for i in range(0, len(items), BATCH):
            rows = [(seq, decode(data)) for seq, data in items[i:i + BATCH]]
            flat.execute("BEGIN")
            flat.execute(insert, [
                [s for s, _ in rows], [type(e).__name__ for _, e in rows],
                [getattr(e, "task_id", None) for _, e in rows],
                [getattr(e, "peer_id", None) for _, e in rows],
                [getattr(e, "piece", None) for _, e in rows],
                [getattr(e, "length", None) for _, e in rows], [e.at for _, e in rows]])
            flat.execute("COMMIT")
    raw = time.perf_counter() - started
    sample = [(i, "x", "t", "p", 0, 1, 0.0) for i in range(5000)]
    started = time.perf_counter()
    flat.executemany("INSERT INTO raw VALUES (?, ?, ?, ?, ?, ?, ?)", sample)
    many = time.perf_counter() - started
    flat.close()
    return {"events": total, "projected_per_s": total / projected,
            "raw_bulk_insert_per_s": total / raw, "raw_executemany_per_s": len(sample) / many,
            "projected_vs_raw_bulk": raw / projected}


async def nats_rate(tmp: Path) -> dict[str, float]:
    broker = start_broker(tmp / "nats")
    try:
        nc = await connect(broker.url, "bench-projections")
        js = nc.jetstream()
        await ensure_streams(js)
        log = list(events(NATS_SWARM))
        publisher = Publisher(js, timeout=60)
        for i in range(0, len(log), 5000):
            await publisher.publish_many(log[i:i + 5000])
        last = {s: (await js.stream_info(s)).state.last_seq for s in store.streams()}
        con = store.connect(tmp / "nats.duckdb")
        projector = Projector(js, con)
        stop = asyncio.Event()
        started = time.perf_counter()
        runner = asyncio.create_task(projector.run(stop))
        while True:
            cursor = con.cursor()
            marks = store.watermarks(cursor)
            cursor.close()
            if all(marks.get((p.name, s), 0) >= last[s]
                   for s in last if last[s] for p in store.readers(s)):
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        stop.set()
        await runner
        con.close()
        raw = await raw_consume(js, last)
        await nc.drain()
    finally:
        broker.stop()
    return {"events": len(log), "nats_to_duckdb_per_s": len(log) / elapsed,
            "raw_consume_and_ack_per_s": len(log) / raw, "projector_vs_raw": raw / elapsed}


async def raw_consume(js: JetStreamContext, last: dict[str, int]) -> float:
    """Seconds to pull, decode and ack every message with the same consumer settings."""
    started = time.perf_counter()
    for stream, end in last.items():
        consumer = Consumer(js, stream=stream, start_seq=1, batch=4096)
        seen = 0
        while seen < end:
            try:
                items = await consumer.fetch(1.0)
            except TimeoutError:
                continue
            for item in items:
                await item.msg.ack()
            seen = items[-1].seq if items else seen
        await consumer.close()
    return time.perf_counter() - started


def large_log(tasks: int, peers: int, pieces: int
              ) -> Iterator[tuple[str, list[tuple[int, AnyEvent]]]]:
    """A day of traffic in chunks of (stream, numbered events): per task, the first peer
    fetches every piece from the origin and the others from it; each peer registers, gets a
    decision, finishes its pieces and succeeds. Generated lazily: 10M events do not fit."""
    seqs = {"DF_HOSTS": 0, "DF_TASKS": 0, "DF_SCHED": 0, "DF_JOBS": 0}
    chunks: dict[str, list[tuple[int, AnyEvent]]] = {s: [] for s in seqs}

    def add(stream: str, event: AnyEvent) -> None:
        seqs[stream] += 1
        chunks[stream].append((seqs[stream], event))

    for t in range(tasks):
        task, cluster, url = f"{t:064x}", f"c{t % 4}", f"http://origin/{t}.bin"
        source = f"peer-{t}-0"
        if t % 10 == 0:  # a preheat job for every tenth task; one in five fails
            job, at = f"job-{t}", DAY_START + t * 86.0
            add("DF_JOBS", PreheatRequested(id=f"{job}-r", at=at, job_id=job, url=url))
            add("DF_JOBS", JobStarted(id=f"{job}-s", at=at, job_id=job, task_ids=[task],
                                      host_ids=["host-0"]))
            ok = t % 50 != 0
            add("DF_JOBS", JobProgressed(id=f"{job}-p", at=at + 1, job_id=job, host_id="host-0",
                                         task_id=task, state="succeeded" if ok else "failed"))
            add("DF_JOBS", JobSucceeded(id=f"{job}-d", at=at + 1, job_id=job) if ok else
                JobFailed(id=f"{job}-d", at=at + 1, job_id=job, reason="origin said 404"))
        for p in range(peers):
            peer, began = f"peer-{t}-{p}", DAY_START + t * 86.0 + p * 0.8
            host = f"host-{p}"
            if t == 0:
                add("DF_HOSTS", HostAnnounced(id=host, at=began, cluster=cluster, host_id=host,
                                              hostname=host, ip="127.0.0.1",
                                              upload_url="http://127.0.0.1:1", seed=p == 0))
            add("DF_TASKS", PeerRegistered(id=f"r-{peer}", at=began, cluster=cluster,
                                           task_id=task, peer_id=peer, host_id=host, url=url,
                                           application=f"team-{t % TENANTS}"))
            parent = "" if p == 0 else source
            decided = began + 0.005 + (p % 40) / 1000
            if parent:
                add("DF_SCHED", ParentsAssigned(
                    id=f"d-{peer}", at=decided, cluster=cluster, task_id=task, peer_id=peer,
                    trigger_id=f"r-{peer}", parents=[ParentInfo(
                        peer_id=source, host_id="host-0", upload_url="http://127.0.0.1:1")]))
            else:
                add("DF_SCHED", BackToSourceOrdered(
                    id=f"d-{peer}", at=decided, cluster=cluster, task_id=task, peer_id=peer,
                    trigger_id=f"r-{peer}", reason="no parent holds it"))
            for i in range(pieces):
                add("DF_TASKS", PieceFinished(
                    id=f"p-{peer}-{i}", at=began + i * 0.01, cluster=cluster, task_id=task,
                    peer_id=peer, piece=i, length=1 << 20, digest=DIGEST, parent_id=parent,
                    cost_ms=3.0 + (p * 7 + i) % 40))
            add("DF_TASKS", PeerSucceeded(
                id=f"s-{peer}", at=began + pieces * 0.01, cluster=cluster, task_id=task,
                peer_id=peer, content_length=pieces << 20, piece_count=pieces,
                cost_ms=pieces * 10.0 + p % 50))
            for stream, chunk in chunks.items():
                if len(chunk) >= BATCH:
                    yield stream, chunk
                    chunks[stream] = []
    yield from ((s, c) for s, c in chunks.items() if c)


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def project_large(con: duckdb.DuckDBPyConnection, piece_events: int) -> dict[str, float]:
    """Project a day with ``piece_events`` piece events through ``store.apply_batch``."""
    tasks = max(1, piece_events // (PEERS * PIECES))
    started = time.perf_counter()
    events_in = 0
    for stream, chunk in large_log(tasks, PEERS, PIECES):
        store.apply_batch(con, stream, chunk)
        events_in += len(chunk)
    con.execute("CHECKPOINT")
    elapsed = time.perf_counter() - started
    counts = {t: _count(con, t) for t in ("piece_minutes", "peers", "decisions")}
    return {"events": events_in, "piece_events": tasks * PEERS * PIECES, "seconds": elapsed,
            "generated_and_projected_per_s": events_in / elapsed, **counts}


def panel_latency(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, float]]:
    """Each panel as root reads it, and as a user bound to one of the ``TENANTS`` tenants
    (the manager's tenant-scoped rewrite of the same SQL): p50/p95 of ``RUNS`` runs."""
    relations = {name: set(cols) for name, cols in con.execute(RELATIONS).fetchall()}
    out = {}
    for panel in dashboards.panels():
        sql, params = scoped(panel.sql, None, relations, "team-0")
        root, rows = _timed(con, panel.sql, [])
        tenant, _ = _timed(con, sql, params)
        out[panel.name] = {"rows": rows, **root, "tenant_p50_ms": tenant["p50_ms"],
                           "tenant_p95_ms": tenant["p95_ms"]}
    return out


def _timed(con: duckdb.DuckDBPyConnection, sql: str, params: list[object]
           ) -> tuple[dict[str, float], int]:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        rows = con.execute(sql, params).fetchall()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))],
            "max_ms": times[-1]}, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--piece-events", type=int, default=PIECE_EVENTS,
                        help=f"piece events behind the panel timings (default {PIECE_EVENTS:,})")
    piece_events = parser.parse_args().piece_events
    with tempfile.TemporaryDirectory(prefix="bench-projections-") as d:
        tmp = Path(d)
        print("applying a synthetic log…", flush=True)
        apply = apply_rate(tmp)
        print(json.dumps(apply, indent=2), flush=True)
        print("projecting through nats-server…", flush=True)
        through_nats = asyncio.run(nats_rate(tmp))
        print(json.dumps(through_nats, indent=2), flush=True)
        print(f"projecting a day of {piece_events:,} piece events…", flush=True)
        con = store.connect(tmp / "large.duckdb")
        large = project_large(con, piece_events)
        print(json.dumps(large, indent=2), flush=True)
        panels = panel_latency(con)
        con.close()
    worst = max(p["p95_ms"] for p in panels.values())
    worst_tenant = max(p["tenant_p95_ms"] for p in panels.values())
    for name, p in panels.items():
        print(f"{name:<24} rows {p['rows']:>4}  p50 {p['p50_ms']:7.1f} ms  "
              f"p95 {p['p95_ms']:7.1f} ms"
              f"  as a tenant p95 {p['tenant_p95_ms']:7.1f} ms")
    result = {"apply": apply, "through_nats": through_nats,
              "panels": {"runs": RUNS, "projected": large, "worst_p95_ms": worst,
                         "worst_tenant_p95_ms": worst_tenant, "tenants": TENANTS,
                         "by_panel": panels}}
    out = Path(__file__).parent / "results" / "projections.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
