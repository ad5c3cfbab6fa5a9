"""Projection throughput and dashboard latency, each next to a baseline from the same run.

1. Apply rate: a synthetic swarm log (mostly piece events) is decoded and applied to every
   projection in batches of 1,024 with its watermarks — stream events per second — against
   a raw DuckDB bulk insert of one flat row per event (the same list-parameter insert the
   projections use, no folding, no upserts), and against ``executemany`` on a sample.
2. End to end: the same kind of log published to an embedded nats-server and projected by
   the real ``Projector`` until its watermarks reach the streams' ends, against pulling,
   decoding and acking the same messages with no DuckDB at all.
3. Panels: every dashboard panel run 50 times over projections holding the rows of
   ``PIECE_EVENTS`` piece events (10 million: 1,000 tasks x 100 peers x 100 pieces over a
   day). Those rows are built with SQL that aggregates a generated 10M-row piece table the
   way ``projections.pieces`` folds events — pushing 10M events through Python would take
   several minutes on this machine; part 1 measures that path.

Run: ``.venv/bin/python -m bench.bench_projections``; writes ``bench/results/projections.json``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
from nats.js import JetStreamContext

import dashboards
from events.bus import Consumer, Publisher
from events.codec import decode, encode
from events.streams import ensure_streams
from projections import store
from projections.projector import Projector
from projections.synthetic import Swarm, by_stream, events
from services.broker import start_broker
from services.natsconn import connect

BATCH = 16384  # what the projector gathers per transaction while behind
APPLY_SWARM = Swarm(cluster="bench", tasks=40, peers_per_task=50, pieces=100)  # ~206k events
NATS_SWARM = Swarm(cluster="nats", tasks=10, peers_per_task=40, pieces=100)  # ~41k events
TASKS, PEERS, PIECES = 1000, 100, 100
PIECE_EVENTS = TASKS * PEERS * PIECES
RUNS = 50


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


def build_large(con: duckdb.DuckDBPyConnection) -> dict[str, float]:
    """Projection rows of PIECE_EVENTS piece events over a day, built in SQL."""
    started = time.perf_counter()
    con.execute(f"""
        CREATE TEMP TABLE piece_events AS
        SELECT 'c' || (t % 4) AS cluster, format('{{:064x}}', t) AS task_id,
               'peer-' || t || '-' || p AS peer_id, p = 0 AS from_origin,
               1048576 AS length, 3.0 + (p * 7 + i) % 40 AS cost_ms,
               1800000000 + (t * 86 + p * 0.8 + i * 0.01) AS at_s
        FROM range({TASKS}) a(t), range({PEERS}) b(p), range({PIECES}) c(i)""")
    con.execute("""
        INSERT INTO piece_minutes
        SELECT make_timestamp(CAST(floor(at_s / 60) * 60 * 1000000 AS BIGINT)), cluster, task_id,
               peer_id, count(*) FILTER (WHERE from_origin),
               coalesce(sum(length) FILTER (WHERE from_origin), 0),
               count(*) FILTER (WHERE NOT from_origin),
               coalesce(sum(length) FILTER (WHERE NOT from_origin), 0), 0, 0, sum(cost_ms)
        FROM piece_events GROUP BY ALL""")
    con.execute("""
        INSERT INTO peers (task_id, peer_id, cluster, host_id, priority, state, pieces,
                           bytes_from_origin, bytes_from_peers, registered_at, updated_at,
                           finished_at)
        SELECT task_id, peer_id, any_value(cluster), peer_id, 0, 'succeeded', count(*),
               coalesce(sum(length) FILTER (WHERE from_origin), 0),
               coalesce(sum(length) FILTER (WHERE NOT from_origin), 0),
               make_timestamp(CAST(min(at_s) * 1000000 AS BIGINT)),
               make_timestamp(CAST(max(at_s) * 1000000 AS BIGINT)),
               make_timestamp(CAST(max(at_s) * 1000000 AS BIGINT))
        FROM piece_events GROUP BY task_id, peer_id""")
    con.execute("""
        INSERT INTO downloads
        SELECT task_id, peer_id, cluster, true, '', pieces * 1048576, pieces,
               bytes_from_origin, bytes_from_peers, epoch_ms(finished_at) - epoch_ms(registered_at),
               finished_at FROM peers""")
    con.execute("""
        INSERT INTO tasks (task_id, cluster, url, peers, succeeded_peers, failed_peers,
                           content_length, piece_count, created_at, updated_at)
        SELECT task_id, any_value(cluster), 'http://origin/' || task_id, count(*), count(*), 0,
               any_value(pieces) * 1048576, any_value(pieces), min(registered_at),
               max(finished_at) FROM peers GROUP BY task_id""")
    con.execute("""
        INSERT INTO registrations SELECT task_id, peer_id, cluster, registered_at FROM peers""")
    con.execute("""
        INSERT INTO decisions (decision_id, cluster, task_id, addressee, kind, trigger_id,
                               parents, seed_parents, reason, decided_at)
        SELECT 'd-' || peer_id, cluster, task_id, peer_id,
               CASE WHEN bytes_from_origin > 0 THEN 'back_to_source' ELSE 'parents_assigned' END,
               'r-' || peer_id, [], 0,
               CASE WHEN bytes_from_origin > 0 THEN 'no parent holds it' END,
               registered_at + to_milliseconds(5 + hash(peer_id) % 50)
        FROM peers""")
    con.execute("""
        INSERT INTO hosts (host_id, cluster, seed, state, upload_limit, uploads_running)
        SELECT DISTINCT host_id, cluster, false, 'alive', 50, 1 FROM peers""")
    con.execute("""
        INSERT INTO jobs (job_id, kind, state, requested_at)
        SELECT 'job-' || i, 'preheat', CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'succeeded' END,
               make_timestamp(CAST((1800000000 + i * 60) * 1000000 AS BIGINT))
        FROM range(1000) r(i)""")
    con.execute("DROP TABLE piece_events")
    con.execute("CHECKPOINT")
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
              for t in ("piece_minutes", "peers", "decisions")}
    return {"build_s": time.perf_counter() - started, **counts}


def panel_latency(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, float]]:
    out = {}
    for panel in dashboards.panels():
        times = []
        for _ in range(RUNS):
            started = time.perf_counter()
            rows = con.execute(panel.sql).fetchall()
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        out[panel.name] = {"rows": len(rows), "p50_ms": statistics.median(times),
                           "p95_ms": times[int(0.95 * (len(times) - 1))], "max_ms": times[-1]}
    return out


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-projections-") as d:
        tmp = Path(d)
        print("applying a synthetic log…", flush=True)
        apply = apply_rate(tmp)
        print(json.dumps(apply, indent=2), flush=True)
        print("projecting through nats-server…", flush=True)
        through_nats = asyncio.run(nats_rate(tmp))
        print(json.dumps(through_nats, indent=2), flush=True)
        print(f"building projections of {PIECE_EVENTS:,} piece events…", flush=True)
        con = store.connect(tmp / "large.duckdb")
        large = build_large(con)
        print(json.dumps(large, indent=2), flush=True)
        panels = panel_latency(con)
        con.close()
    worst = max(p["p95_ms"] for p in panels.values())
    for name, p in panels.items():
        print(f"{name:<24} rows {p['rows']:>4}  p50 {p['p50_ms']:7.1f} ms  p95 {p['p95_ms']:7.1f} ms")
    result = {"apply": apply, "through_nats": through_nats,
              "panels": {"piece_events": PIECE_EVENTS, "runs": RUNS, "tables": large,
                         "worst_p95_ms": worst, "by_panel": panels}}
    out = Path(__file__).parent / "results" / "projections.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
