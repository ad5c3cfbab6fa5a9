"""Dashboard panels: every shipped panel parses and runs over projected events with the
figures the events imply; results print as a table, CSV or JSON."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from damselfly import dashboards
from damselfly.projections import store
from damselfly.services.manager.output import render
from tests.support.synthetic import Swarm, by_stream, events

SWARM = Swarm(tasks=3, peers_per_task=4, pieces=5, failing_peers=1)
REQUIRED = {"back_to_source_ratio", "p2p_vs_origin", "active_peers", "download_duration",
            "scheduling_latency", "top_tasks", "job_outcomes", "task_holders"}


@pytest.fixture(scope="module")
def con(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    con = store.connect(tmp_path_factory.mktemp("dash") / "p.duckdb")
    for stream, items in by_stream(events(SWARM)).items():
        store.apply_batch(con, stream, items)
    yield con
    con.close()


def run(con: duckdb.DuckDBPyConnection, name: str) -> list[dict[str, Any]]:
    """The panel's rows by column; a cell's type is whatever its SQL column yields."""
    result = store.query(con, dashboards.panel(name).sql)
    return [dict(zip(result.columns, row, strict=False)) for row in result.rows]


def test_every_required_panel_ships_with_a_title_and_chart() -> None:
    panels = dashboards.panels()
    assert {p.name for p in panels} >= REQUIRED
    assert all(p.title and p.chart in dashboards.CHARTS for p in panels)
    assert [p.order for p in panels] == sorted(p.order for p in panels)


def test_every_panel_returns_rows(con: duckdb.DuckDBPyConnection) -> None:
    for panel in dashboards.panels():
        assert run(con, panel.name), panel.name


def test_every_panel_runs_on_an_empty_database(tmp_path: Path) -> None:
    empty = store.connect(tmp_path / "empty.duckdb")
    try:
        for panel in dashboards.panels():
            assert store.query(empty, panel.sql).rows == [], panel.name
    finally:
        empty.close()


def test_traffic_panels_split_origin_and_peer_bytes(con: duckdb.DuckDBPyConnection) -> None:
    # per task the seed fetches the file from the origin once, succeeding peers from the seed
    from_origin = SWARM.tasks
    from_peers = SWARM.tasks * (SWARM.peers_per_task - SWARM.failing_peers)
    mib = SWARM.pieces * SWARM.piece_length / 1048576
    traffic = run(con, "p2p_vs_origin")
    assert sum(r["origin_mib"] for r in traffic) == pytest.approx(from_origin * mib)
    assert sum(r["p2p_mib"] for r in traffic) == pytest.approx(from_peers * mib)
    ratio = run(con, "back_to_source_ratio")
    assert [r["minute"] for r in ratio] == [r["minute"] for r in traffic]
    assert all(0 <= r["back_to_source_ratio"] <= 1 for r in ratio)


def test_quiet_minutes_are_rows_too(tmp_path: Path) -> None:
    early = Swarm(cluster="a", tasks=1, pieces=4)
    late = Swarm(cluster="b", tasks=1, pieces=4, start=early.start + 300)
    con = store.connect(tmp_path / "gap.duckdb")
    try:
        for stream, items in by_stream([*events(early), *events(late)]).items():
            store.apply_batch(con, stream, items)
        traffic = run(con, "p2p_vs_origin")
        ratio = run(con, "back_to_source_ratio")
    finally:
        con.close()
    minutes = [r["minute"] for r in traffic]
    assert minutes == [minutes[0] + dt.timedelta(minutes=m) for m in range(6)]
    assert [r["origin_mib"] > 0 for r in traffic] == [True, False, False, False, False, True]
    assert [r["back_to_source_ratio"] is None for r in ratio] == [False, True, True, True,
                                                                   True, False]


def test_top_tasks_and_job_outcomes(con: duckdb.DuckDBPyConnection) -> None:
    top = run(con, "top_tasks")
    assert len(top) == SWARM.tasks
    assert {r["peers"] for r in top} == {SWARM.peers_per_task + 1}
    assert {r["failed_peers"] for r in top} == {SWARM.failing_peers}
    assert run(con, "job_outcomes") == [
        {"outcome": "preheat succeeded", "jobs": 1, "host_outcomes": 1},
        {"outcome": "sync_peers succeeded", "jobs": 1, "host_outcomes": SWARM.tasks}]
    holders = run(con, "task_holders")
    assert len(holders) == SWARM.tasks
    assert all(r["host_ids"] == [f"{SWARM.cluster}-seed"] and r["held_as"] == ["held"]
               for r in holders), holders


def test_duration_and_latency_percentiles_are_ordered(con: duckdb.DuckDBPyConnection) -> None:
    (durations,) = run(con, "download_duration")
    assert 0 < durations["p50_ms"] <= durations["p90_ms"] <= durations["p99_ms"]
    latency = {r["kind"]: r for r in run(con, "scheduling_latency")}
    assigned = latency[f"parents_assigned ({SWARM.tasks * SWARM.peers_per_task})"]
    assert 0 < assigned["p50_ms"] <= assigned["p95_ms"] <= assigned["p99_ms"]


def test_active_peers_counts_alive_hosts(con: duckdb.DuckDBPyConnection) -> None:
    (row,) = run(con, "active_peers")
    assert row["cluster"] == SWARM.cluster
    assert row["alive_hosts"] == SWARM.peers_per_task + 1


def test_results_render_as_table_csv_and_json(con: duckdb.DuckDBPyConnection) -> None:
    result = store.query(con, "SELECT task_id, peers, created_at FROM tasks ORDER BY task_id")
    rows = json.loads(render(result, "json"))
    assert [r["peers"] for r in rows] == [SWARM.peers_per_task + 1] * SWARM.tasks
    assert rows[0]["created_at"].startswith("20")
    parsed = list(csv.reader(io.StringIO(render(result, "csv"))))
    assert parsed[0] == ["task_id", "peers", "created_at"]
    assert [r[0] for r in parsed[1:]] == [r["task_id"] for r in rows]
    table = render(result, "table").splitlines()
    assert table[0].split() == ["task_id", "peers", "created_at"]
    assert table[-1] == f"({SWARM.tasks} rows)"


def test_a_panel_without_a_header_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.sql").write_text("SELECT 1\n")
    with pytest.raises(ValueError, match="panel bad: no '-- title:'"):
        dashboards.panels(tmp_path)
    (tmp_path / "bad.sql").write_text("-- title: Bad\n-- chart: pie\nSELECT 1\n")
    with pytest.raises(ValueError, match="must be one of line, bar, table"):
        dashboards.panels(tmp_path)
    with pytest.raises(ValueError, match="no dashboard panel 'nope'"):
        dashboards.panel("nope", tmp_path)


def test_only_one_select_may_run_through_the_sql_door() -> None:
    store.check_read_only("WITH x AS (SELECT 1) SELECT * FROM x")
    for bad in ("DROP TABLE peers", "SELECT 1; DELETE FROM peers", "SELEC 1"):
        with pytest.raises(store.NotReadOnly):
            store.check_read_only(bad)
