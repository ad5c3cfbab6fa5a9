"""Projections fed by a real nats-server: a restarted projector resumes after its
watermarks, and a rebuild — live or from the CLI — replays the log to identical rows."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import duckdb
import msgspec
import pytest
from nats.js import JetStreamContext

from damselfly.events.bus import DEAD_REASON, DEAD_SEQ, Publisher
from damselfly.events.streams import ensure_streams
from damselfly.events.subjects import dlq_subject, subject_for, task_subject
from damselfly.events.tasks import PieceFinished
from damselfly.projections import PROJECTIONS, store
from damselfly.projections.projector import Projector, replay
from damselfly.services.runtime.natsconn import connect
from damselfly.services.runtime.procs import DAMSELFLY
from tests.support.readmodel import rows
from tests.support.synthetic import Swarm, by_stream, events
from tests.support.wait import eventually

pytestmark = pytest.mark.anyio

FIRST = Swarm(cluster="c1", tasks=2, peers_per_task=3, pieces=6)
SECOND = Swarm(cluster="c2", tasks=1, peers_per_task=2, pieces=3, start=FIRST.start + 600)
# Event ids derive from the cluster name; a fresh one per test escapes the server's dedup.
THIRD = Swarm(cluster="c3", tasks=2, peers_per_task=2, pieces=5)


def expected(tmp_path: Path, *swarms: Swarm) -> dict[str, list[tuple[object, ...]]]:
    """The rows the same events give when applied without NATS."""
    con = store.connect(tmp_path / "expected.duckdb")
    try:
        log = [e for s in swarms for e in events(s)]
        for stream, items in by_stream(log).items():
            store.apply_batch(con, stream, items)
        return rows(con)
    finally:
        con.close()


async def caught_up(js: JetStreamContext, con: duckdb.DuckDBPyConnection) -> None:
    """Wait until every projection's watermark reaches its stream's last sequence."""
    async def reached() -> bool:
        last = {s: (await js.stream_info(s)).state.last_seq for s in store.streams()}
        cursor = con.cursor()
        marks = store.watermarks(cursor)
        cursor.close()
        return all(marks.get((p.name, s), 0) >= last[s] for p in PROJECTIONS for s in p.streams
                   if last[s] > 0)

    await eventually(reached, timeout=30)


@asynccontextmanager
async def running(js: JetStreamContext, con: duckdb.DuckDBPyConnection
                  ) -> AsyncIterator[Projector]:
    projector = Projector(js, con, batch=64)
    stop = asyncio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(projector.run, stop)
        try:
            yield projector
        finally:
            stop.set()


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc = await connect(nats_url, "test-projections")
    js = nc.jetstream()
    await ensure_streams(js)
    for stream in store.streams():
        await js.purge_stream(stream)  # each test starts from an empty log
    yield js
    await nc.drain()


async def test_restart_resumes_after_watermark_and_cli_rebuild_is_identical(
        js: JetStreamContext, nats_url: str, tmp_path: Path) -> None:
    db = tmp_path / "manager" / "damselfly.duckdb"
    publisher = Publisher(js)
    await publisher.publish_many(list(events(FIRST)))
    con = store.connect(db)
    async with running(js, con):
        await caught_up(js, con)
    assert rows(con) == expected(tmp_path / "a", FIRST)

    # Stopped, more happens, started again: it picks up after its watermarks only.
    await publisher.publish_many(list(events(SECOND)))
    async with running(js, con) as projector:
        await caught_up(js, con)
    assert projector.applied == sum(
        len([i for i in items]) * len(store.readers(stream))
        for stream, items in by_stream(events(SECOND)).items())
    before = rows(con)
    assert before == expected(tmp_path / "b", FIRST, SECOND)
    con.close()

    done = await anyio.to_thread.run_sync(lambda: subprocess.run(
        [*DAMSELFLY, "projections", "rebuild", "--db", str(db),
         "--nats", nats_url], check=False, capture_output=True, text=True, timeout=60))
    assert done.returncode == 0, done.stderr
    assert "rebuilt hosts, tasks, peers, downloads, pieces, decisions, jobs" in done.stdout
    con = store.connect(db)
    try:
        assert rows(con) == before
    finally:
        con.close()


async def test_live_rebuild_of_one_projection_replays_to_identical_rows(
        js: JetStreamContext, tmp_path: Path) -> None:
    await Publisher(js).publish_many(list(events(THIRD)))
    con = store.connect(tmp_path / "p.duckdb")
    try:
        async with running(js, con) as projector:
            await caught_up(js, con)
            before = rows(con)
            assert await projector.rebuild(["peers"]) == ["peers"]
            await caught_up(js, con)
            assert rows(con) == before
            await projector.rebuild()
            await caught_up(js, con)
            assert rows(con) == before
        assert before == expected(tmp_path, THIRD)
    finally:
        con.close()


async def test_an_event_out_of_bounds_is_dead_lettered_and_stepped_over(
        js: JetStreamContext, tmp_path: Path) -> None:
    swarm = Swarm(cluster="c4", tasks=1, peers_per_task=2, pieces=3)
    log = list(events(swarm))
    task = next(e.task_id for e in log if isinstance(e, PieceFinished))
    # A length no DuckDB BIGINT holds: refused while decoding (events.fields), not by the
    # database in the middle of a batch.
    poison = PieceFinished(id="too-long", at=swarm.start, cluster="c4", task_id=task,
                           peer_id="c4-host0-t0", piece=9, length=2**63 + 5, digest="")
    # Published as raw bytes, as a forger would: ``encode`` refuses to make them.
    await Publisher(js).publish_many(log[:20])
    await js.publish(subject_for(poison), msgspec.json.encode(poison))
    await Publisher(js).publish_many(log[20:])
    con = store.connect(tmp_path / "p.duckdb")
    try:
        async with running(js, con):
            await caught_up(js, con)
        assert rows(con) == expected(tmp_path, swarm)
    finally:
        con.close()
    dead = await js.get_last_msg("DF_DLQ", dlq_subject("DF_TASKS"))
    assert dead.data is not None and dead.headers is not None
    assert b'"id":"too-long"' in dead.data
    assert dead.headers[DEAD_REASON].startswith("undecodable:")
    assert "$.length" in dead.headers[DEAD_REASON]


async def test_an_undecodable_message_is_dead_lettered_and_the_watermarks_step_over_it(
        js: JetStreamContext, tmp_path: Path) -> None:
    swarm = Swarm(cluster="c6", tasks=1, peers_per_task=2, pieces=3)
    log = list(events(swarm))
    await Publisher(js).publish_many(log)
    task = next(e.task_id for e in log if isinstance(e, PieceFinished))
    # Last in its stream, so no later batch carries the watermarks past it.
    garbled = await js.publish(task_subject("c6", task, "c6-host0-t0", "piece.finished"),
                               b"not json")
    con = store.connect(tmp_path / "live.duckdb")
    try:
        async with running(js, con):
            await caught_up(js, con)
        assert rows(con) == expected(tmp_path, swarm)
        assert store.start_seq(con, "DF_TASKS") == garbled.seq + 1
    finally:
        con.close()
    dead = await js.get_last_msg("DF_DLQ", dlq_subject("DF_TASKS"))
    assert dead.headers is not None
    assert dead.headers[DEAD_SEQ] == str(garbled.seq)
    assert dead.headers[DEAD_REASON].startswith("undecodable:")

    # A replay stops once caught up, although the last message never reached a handler.
    con = store.connect(tmp_path / "replayed.duckdb")
    try:
        with anyio.fail_after(30):
            await replay(js, con)
        assert rows(con) == expected(tmp_path / "again", swarm)
        assert store.start_seq(con, "DF_TASKS") == garbled.seq + 1
    finally:
        con.close()


async def test_a_rebuild_while_events_keep_arriving_loses_nothing(
        js: JetStreamContext, tmp_path: Path) -> None:
    swarm = Swarm(cluster="c5", tasks=4, peers_per_task=4, pieces=12)
    log = list(events(swarm))
    half = len(log) // 2
    publisher = Publisher(js)
    con = store.connect(tmp_path / "p.duckdb")
    try:
        async with running(js, con) as projector:
            await publisher.publish_many(log[:half])
            async with anyio.create_task_group() as group:
                group.start_soon(projector.rebuild)
                for i in range(half, len(log), 20):  # the rest lands during the replay
                    await publisher.publish_many(log[i:i + 20])
            await caught_up(js, con)
            assert rows(con) == expected(tmp_path, swarm)
    finally:
        con.close()
