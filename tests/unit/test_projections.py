"""Projections applied to a real DuckDB file, without NATS: the rows a swarm's events
produce, idempotence, atomicity and independence from how the log is cut into batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from damselfly.events.config import ClusterConfig, ClusterConfigSet
from damselfly.events.hosts import HostKeepalive, HostLeft
from damselfly.events.sched import PeerQueued
from damselfly.events.tasks import PeerRegistered, PieceFinished
from damselfly.projections import PROJECTIONS, by_name, store
from damselfly.projections.model import ADD, LAST, MAX, MIN, Column, Patches, Table
from tests.support.synthetic import Swarm, by_stream, events, task_id

SWARM = Swarm(tasks=2, peers_per_task=3, pieces=4, failing_peers=1)


def snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[object, ...]]]:
    tables = [t.name for p in PROJECTIONS for t in p.tables] + ["projection_watermarks"]
    return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def project(path: Path, swarm: Swarm = SWARM, batch: int = 10_000) -> duckdb.DuckDBPyConnection:
    con = store.connect(path)
    for stream, items in by_stream(events(swarm)).items():
        for i in range(0, len(items), batch):
            store.apply_batch(con, stream, items[i:i + batch])
    return con


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = project(tmp_path / "p.duckdb")
    yield con
    con.close()


def test_peers_count_bytes_by_where_they_came_from(con: duckdb.DuckDBPyConnection) -> None:
    length = SWARM.pieces * SWARM.piece_length
    rows = con.execute("SELECT peer_id, state, bytes_from_origin, bytes_from_peers, pieces, "
                       "back_to_source FROM peers WHERE task_id = ? ORDER BY peer_id",
                       [task_id(SWARM.cluster, 0)]).fetchall()
    assert rows == [
        ("c1-host0-t0", "failed", 0, 0, 0, None),
        ("c1-host1-t0", "succeeded", 0, length, SWARM.pieces, None),
        ("c1-host2-t0", "succeeded", 0, length, SWARM.pieces, None),
        ("c1-seed-t0", "succeeded", length, 0, SWARM.pieces, True),
    ]


def test_tasks_downloads_and_hosts(con: duckdb.DuckDBPyConnection) -> None:
    tasks = con.execute("SELECT url, content_length, piece_count, peers, succeeded_peers, "
                        "failed_peers, state FROM tasks ORDER BY url").fetchall()
    length = SWARM.pieces * SWARM.piece_length
    assert tasks == [(f"http://origin.example/files/{n}.bin", length, SWARM.pieces,
                      SWARM.peers_per_task + 1, SWARM.peers_per_task, 1, "succeeded")
                     for n in range(SWARM.tasks)]
    downloads = con.execute("SELECT ok, count(*), any_value(reason) FROM downloads "
                            "GROUP BY ok ORDER BY ok").fetchall()
    assert downloads == [(False, SWARM.tasks, "parent served corrupt pieces"),
                         (True, SWARM.tasks * SWARM.peers_per_task, "")]
    seeds = con.execute("SELECT host_id, uploads_running, load FROM hosts WHERE seed").fetchall()
    last_keepalive_load = 1 + (SWARM.tasks - 1) % 3
    assert seeds == [("c1-seed", last_keepalive_load, last_keepalive_load / 50)]


def test_hosts_leave_and_come_back(con: duckdb.DuckDBPyConnection) -> None:
    after = store.start_seq(con, "DF_HOSTS")
    left = HostLeft(id="l", at=SWARM.start + 99, cluster="c1", host_id="c1-host1",
                    reason="keepalive timeout")
    store.apply_batch(con, "DF_HOSTS", [(after, left)])
    query = "SELECT state, left_reason FROM hosts WHERE host_id = 'c1-host1'"
    assert con.execute(query).fetchall() == [("left", "keepalive timeout")]
    back = HostKeepalive(id="k", at=SWARM.start + 100, cluster="c1", host_id="c1-host1")
    store.apply_batch(con, "DF_HOSTS", [(after + 1, back)])
    assert con.execute(query).fetchall() == [("alive", "keepalive timeout")]


def test_decisions_and_their_latency_from_registration(con: duckdb.DuckDBPyConnection) -> None:
    kinds = dict(con.execute("SELECT kind, count(*) FROM decisions GROUP BY kind").fetchall())
    assert kinds == {"seed_triggered": SWARM.tasks, "back_to_source": SWARM.tasks,
                     "parents_assigned": SWARM.tasks * SWARM.peers_per_task}
    parents = con.execute("SELECT DISTINCT parents, parent_count, seed_parents FROM decisions "
                          "WHERE kind = 'parents_assigned' AND task_id = ?",
                          [task_id(SWARM.cluster, 0)]).fetchall()
    assert parents == [(["c1-seed-t0"], 1, 1)]
    latencies = con.execute("SELECT kind, min(latency_ms), max(latency_ms) FROM decision_latency "
                            "GROUP BY kind ORDER BY kind").fetchall()
    # synthetic decisions come 4 ms (seed trigger, counted from the registration that caused
    # it), 5 ms (back to source) and 1–20 ms (parents) after registration
    assert latencies[0] == ("back_to_source", 5, 5)
    assert latencies[1][0] == "parents_assigned" and 1 <= latencies[1][1] <= latencies[1][2] <= 20
    assert latencies[2] == ("seed_triggered", 4, 4)


def test_a_queued_peer_is_a_decision_with_its_reason(con: duckdb.DuckDBPyConnection) -> None:
    queued = PeerQueued(id="q1", at=SWARM.start + 50, cluster="c1", task_id=task_id("c1", 0),
                        peer_id="late-peer", trigger_id="r1", reason="waiting for the seed peer")
    store.apply_batch(con, "DF_SCHED", [(store.start_seq(con, "DF_SCHED"), queued)])
    assert con.execute("SELECT addressee, reason FROM decisions WHERE kind = 'queued'"
                       ).fetchall() == [("late-peer", "waiting for the seed peer")]


def test_cluster_configs_keep_the_latest(con: duckdb.DuckDBPyConnection) -> None:
    assert con.execute("SELECT cluster, candidate_parent_limit, retry_limit, weights->>'load' "
                       "FROM cluster_configs").fetchall() == [("c1", 4, 5, "0.4")]
    newer = ClusterConfigSet(id="cfg2", at=SWARM.start + 9, cluster="c1",
                             config=ClusterConfig(retry_limit=9))
    store.apply_batch(con, "DF_CONFIG", [(store.start_seq(con, "DF_CONFIG"), newer)])
    assert con.execute("SELECT candidate_parent_limit, retry_limit, weights "
                       "FROM cluster_configs").fetchall() == [
        (ClusterConfig().candidate_parent_limit, 9, "{}")]


def test_jobs_and_per_host_outcomes(con: duckdb.DuckDBPyConnection) -> None:
    assert con.execute("SELECT kind, state, host_count FROM jobs ORDER BY kind").fetchall() == [
        ("preheat", "succeeded", 1), ("sync_peers", "succeeded", 1)]
    assert con.execute("SELECT kind, count(*), count(DISTINCT h.task_id) FROM job_hosts h "
                       "JOIN jobs USING (job_id) GROUP BY kind ORDER BY kind").fetchall() == [
        ("preheat", 1, 1), ("sync_peers", SWARM.tasks, SWARM.tasks)]


def test_piece_minutes_add_up_to_the_piece_events(con: duckdb.DuckDBPyConnection) -> None:
    finished = [e for e in events(SWARM) if isinstance(e, PieceFinished)]
    totals = con.execute("SELECT sum(pieces_from_origin + pieces_from_peers), "
                         "sum(bytes_from_origin + bytes_from_peers), sum(corrupt_pieces) "
                         "FROM piece_minutes").fetchone()
    assert totals == (len(finished), sum(e.length for e in finished), SWARM.tasks)


def test_redelivered_batches_change_nothing(con: duckdb.DuckDBPyConnection) -> None:
    before = snapshot(con)
    for stream, items in by_stream(events(SWARM)).items():
        assert store.apply_batch(con, stream, items) == 0
        assert store.apply_batch(con, stream, items[3:9]) == 0
    assert snapshot(con) == before


@pytest.mark.parametrize("batch", [1, 7])
def test_rows_do_not_depend_on_batch_boundaries(con: duckdb.DuckDBPyConnection, tmp_path: Path,
                                                batch: int) -> None:
    other = project(tmp_path / f"b{batch}.duckdb", batch=batch)
    try:
        assert snapshot(other) == snapshot(con)
    finally:
        other.close()


def test_reset_then_replay_gives_identical_rows(con: duckdb.DuckDBPyConnection) -> None:
    before = snapshot(con)
    store.reset(con, by_name(["peers", "decisions"]))
    assert con.execute("SELECT count(*) FROM peers").fetchone() == (0,)
    assert store.start_seq(con, "DF_TASKS") == 1
    for stream, items in by_stream(events(SWARM)).items():
        store.apply_batch(con, stream, items)
    assert snapshot(con) == before


def test_a_failing_batch_leaves_nothing_behind(con: duckdb.DuckDBPyConnection) -> None:
    before = snapshot(con)
    task = "ff000000" + "cd" * 28
    registered = PeerRegistered(id="r", at=1.0, cluster="c1", task_id=task, peer_id="p",
                                host_id="h", url="http://x/")
    too_long = PieceFinished(id="f", at=2.0, cluster="c1", task_id=task, peer_id="p", piece=0,
                             length=1 << 70, digest="d")
    last = by_stream(events(SWARM))["DF_TASKS"][-1][0]
    with pytest.raises(duckdb.Error):
        store.apply_batch(con, "DF_TASKS", [(last + 1, registered), (last + 2, too_long)])
    assert snapshot(con) == before


def test_unknown_projection_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown projection nope"):
        by_name(["hosts", "nope"])


def test_patches_merge_each_column_by_its_rule() -> None:
    table = Table("t", key=(Column("k", "VARCHAR"),),
                  columns=(Column("n", "INTEGER", ADD), Column("s", "VARCHAR", LAST),
                           Column("lo", "DOUBLE", MIN), Column("hi", "DOUBLE", MAX)))
    patches = Patches(table)
    patches.put(("a",), n=1, s="x", lo=5.0, hi=5.0)
    patches.put(("a",), n=2, s=None, lo=3.0, hi=9.0)
    patches.put(("a",), n=4, s="y", lo=None, hi=1.0)
    assert patches.rows == {("a",): {"n": 7, "s": "y", "lo": 3.0, "hi": 9.0}}


def test_an_open_read_never_blocks_the_writer(con: duckdb.DuckDBPyConnection) -> None:
    reader = con.cursor()
    try:
        reader.execute("BEGIN TRANSACTION")
        counted = reader.execute("SELECT count(*) FROM tasks").fetchone()
        assert counted is not None
        (before,) = counted
        more = Swarm(cluster="c9", tasks=1, peers_per_task=1, pieces=1, failing_peers=0)
        for stream, items in by_stream(events(more)).items():
            after = store.start_seq(con, stream) - 1
            store.apply_batch(con, stream, [(after + seq, e) for seq, e in items])
        assert con.execute("SELECT count(*) FROM tasks").fetchone() == (before + 1,)
        # the reader keeps its snapshot until it ends its transaction
        assert reader.execute("SELECT count(*) FROM tasks").fetchone() == (before,)
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM tasks").fetchone() == (before + 1,)
    finally:
        reader.close()


def test_a_projection_whose_definition_changed_is_emptied_for_replay(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    project(path).close()
    old = duckdb.connect(str(path))
    old.execute("UPDATE projection_schemas SET fingerprint = 'an older one' "
                "WHERE projection = 'peers'")
    old.close()
    con = store.connect(path)
    try:
        assert con.execute("SELECT count(*) FROM peers").fetchone() == (0,)
        assert ("peers", "DF_TASKS") not in store.watermarks(con)
        assert store.start_seq(con, "DF_TASKS") == 1
        assert con.execute("SELECT count(*) FROM tasks").fetchone() == (SWARM.tasks,)
        for stream, items in by_stream(events(SWARM)).items():
            store.apply_batch(con, stream, items)
    finally:
        con.close()
    con = store.connect(path)  # the new definition was recorded: nothing is emptied again
    try:
        peers = SWARM.tasks * (SWARM.peers_per_task + 1)
        assert con.execute("SELECT count(*) FROM peers").fetchone() == (peers,)
    finally:
        con.close()
