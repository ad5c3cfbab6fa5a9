"""The read API under ``/api/v1``: overview, hosts, tasks, peers, jobs, dashboards, SQL and
the projections' watermarks. Every handler reads DuckDB through the ``Reader``."""

from __future__ import annotations

import logging
from typing import Annotated

import duckdb
from fastapi import APIRouter, HTTPException, Query, Request
from nats.errors import Error as NatsError
from pydantic import BaseModel, Field

import dashboards
from projections import store
from services.manager.reader import Reader
from services.manager.schedulers import live_schedulers

log = logging.getLogger("damselfly.manager.api")
router = APIRouter(prefix="/api/v1")

ACTIVE_STATES = "('registered', 'running', 'back_to_source')"
MAX_ROWS = 100_000  # per answer of the SQL door; the DuckDB file has them all


def _reader(request: Request) -> Reader:
    reader = request.app.state.reader
    assert isinstance(reader, Reader)
    return reader


LIKE = "ILIKE ? ESCAPE '\\'"  # with _like(q): a search for "a_b" matches only "a_b"


def _like(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


OVERVIEW_SQL = f"""
WITH h AS (
    SELECT cluster, count(*) FILTER (WHERE state = 'alive' AND seed) AS seed_peers,
           count(*) FILTER (WHERE state = 'alive' AND NOT seed) AS hosts
    FROM hosts GROUP BY cluster
), p AS (
    SELECT cluster, count(*) FILTER (WHERE state IN {ACTIVE_STATES}) AS active_peers,
           count(*) AS peers
    FROM peers GROUP BY cluster
), t AS (
    SELECT cluster, count(*) AS tasks FROM tasks GROUP BY cluster
), d AS (
    SELECT cluster, count(*) AS decisions, max(decided_at) AS last_decision_at
    FROM decisions GROUP BY cluster
), c AS (
    SELECT cluster FROM h UNION SELECT cluster FROM p UNION SELECT cluster FROM t
    UNION SELECT cluster FROM d
)
SELECT c.cluster, coalesce(seed_peers, 0) AS seed_peers, coalesce(hosts, 0) AS hosts,
       coalesce(active_peers, 0) AS active_peers, coalesce(peers, 0) AS peers,
       coalesce(tasks, 0) AS tasks, coalesce(decisions, 0) AS decisions, last_decision_at
FROM c LEFT JOIN h USING (cluster) LEFT JOIN p USING (cluster) LEFT JOIN t USING (cluster)
LEFT JOIN d USING (cluster)
WHERE c.cluster IS NOT NULL
ORDER BY c.cluster
"""


@router.get("/overview")
async def overview(request: Request) -> dict[str, object]:
    """Per scheduler cluster: seed peers and hosts alive, active and all peers, tasks and
    scheduling decisions; the live schedulers (from their leases) and jobs by state."""
    reader = _reader(request)
    clusters = await reader.records(OVERVIEW_SQL)
    keys = ("seed_peers", "hosts", "active_peers", "peers", "tasks", "decisions")
    totals = {k: sum(int(str(c[k])) for c in clusters) for k in keys}
    try:
        schedulers = await live_schedulers(request.app.state.js)
    except (NatsError, TimeoutError) as exc:  # the projections still answer without NATS
        log.warning("cannot read scheduler leases: %s", exc)
        schedulers = []
    totals["schedulers"] = len({s["scheduler"] for s in schedulers})
    jobs = await reader.records("SELECT state, count(*) AS jobs FROM jobs GROUP BY state "
                                "ORDER BY state")
    return {"clusters": clusters, "schedulers": schedulers, "totals": totals, "jobs": jobs}


@router.get("/hosts")
async def hosts(request: Request, q: str = "", limit: Annotated[int, Query(ge=1, le=1000)] = 200
                ) -> list[dict[str, object]]:
    return await _reader(request).records(
        f"SELECT * FROM hosts WHERE host_id {LIKE} OR hostname {LIKE} OR ip {LIKE} "
        "ORDER BY cluster, seed DESC, host_id LIMIT ?", [_like(q)] * 3 + [limit])


@router.get("/tasks")
async def tasks(request: Request, q: str = "", limit: Annotated[int, Query(ge=1, le=1000)] = 200
                ) -> list[dict[str, object]]:
    return await _reader(request).records(
        f"SELECT * FROM tasks WHERE task_id {LIKE} OR url {LIKE} "
        "ORDER BY updated_at DESC NULLS LAST, task_id LIMIT ?", [_like(q), _like(q), limit])


@router.get("/tasks/{task_id}")
async def task(request: Request, task_id: str) -> dict[str, object]:
    """A task with its peers and the scheduling decisions about it."""
    reader = _reader(request)
    found = await reader.records("SELECT * FROM tasks WHERE task_id = ?", [task_id])
    if not found:
        raise HTTPException(404, f"no task {task_id}")
    peers = await reader.records("SELECT * FROM peers WHERE task_id = ? "
                                 "ORDER BY registered_at NULLS LAST, peer_id", [task_id])
    decisions = await reader.records("SELECT * FROM decision_latency WHERE task_id = ? "
                                     "ORDER BY decided_at, decision_id", [task_id])
    return {"task": found[0], "peers": peers, "decisions": decisions}


@router.get("/peers")
async def peers(request: Request, q: str = "", state: str = "",
                limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, object]]:
    return await _reader(request).records(
        f"SELECT * FROM peers WHERE (peer_id {LIKE} OR host_id {LIKE} OR task_id {LIKE}) "
        "AND (? = '' OR state = ?) ORDER BY updated_at DESC NULLS LAST, peer_id LIMIT ?",
        [_like(q)] * 3 + [state, state, limit])


@router.get("/tasks/{task_id}/peers/{peer_id}")
async def peer(request: Request, task_id: str, peer_id: str) -> dict[str, object]:
    """One peer's download: its row, its pieces per minute and the decisions about it."""
    reader = _reader(request)
    found = await reader.records("SELECT * FROM peers WHERE task_id = ? AND peer_id = ?",
                                 [task_id, peer_id])
    if not found:
        raise HTTPException(404, f"no peer {peer_id} in task {task_id}")
    minutes = await reader.records("SELECT * FROM piece_minutes WHERE task_id = ? AND "
                                   "peer_id = ? ORDER BY minute", [task_id, peer_id])
    decisions = await reader.records("SELECT * FROM decision_latency WHERE task_id = ? AND "
                                     "addressee = ? ORDER BY decided_at", [task_id, peer_id])
    return {"peer": found[0], "pieces_per_minute": minutes, "decisions": decisions}


@router.get("/jobs")
async def jobs(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 200
               ) -> list[dict[str, object]]:
    return await _reader(request).records(
        "SELECT * FROM jobs ORDER BY requested_at DESC NULLS LAST, job_id LIMIT ?", [limit])


@router.get("/jobs/{job_id}")
async def job(request: Request, job_id: str) -> dict[str, object]:
    reader = _reader(request)
    found = await reader.records("SELECT * FROM jobs WHERE job_id = ?", [job_id])
    if not found:
        raise HTTPException(404, f"no job {job_id}")
    outcomes = await reader.records("SELECT * FROM job_hosts WHERE job_id = ? "
                                    "ORDER BY host_id, task_id", [job_id])
    return {"job": found[0], "hosts": outcomes}


@router.get("/dashboards")
async def dashboard_list() -> list[dict[str, object]]:
    return [{"name": p.name, "title": p.title, "chart": p.chart, "description": p.description}
            for p in dashboards.panels()]


def _table(result: store.Result) -> dict[str, object]:
    return {"columns": result.columns, "rows": [[store.plain(v) for v in r] for r in result.rows],
            "truncated": result.truncated}


@router.get("/dashboards/{name}")
async def dashboard(request: Request, name: str) -> dict[str, object]:
    try:
        panel = dashboards.panel(name)
    except ValueError as exc:
        raise HTTPException(404, str(exc)) from None
    result = await _reader(request).query(panel.sql)
    return {"name": panel.name, "title": panel.title, "chart": panel.chart,
            "description": panel.description, **_table(result)}


class SqlBody(BaseModel):
    sql: str
    max_rows: Annotated[int, Field(ge=1, le=MAX_ROWS)] = MAX_ROWS


@router.post("/sql")
async def sql(request: Request, body: SqlBody) -> dict[str, object]:
    """Run one read-only SELECT against the live projections (how ``damselfly sql`` reaches
    a running manager, since DuckDB lets only the manager open its file)."""
    text = body.sql
    try:
        store.check_read_only(text)
        result = await _reader(request).query(text, max_rows=body.max_rows)
    except (store.NotReadOnly, duckdb.Error) as exc:
        raise HTTPException(400, str(exc).splitlines()[0]) from None
    return _table(result)


@router.get("/projections")
async def projections(request: Request) -> list[dict[str, object]]:
    """Each projection's watermark per stream, and how far behind the stream's end it is."""
    marks = await _reader(request).records(
        "SELECT * FROM projection_watermarks ORDER BY projection, stream")
    have = {(m["projection"], m["stream"]): m["last_seq"] for m in marks}
    out = []
    for stream in store.streams():
        try:
            last: int | None = (await request.app.state.js.stream_info(stream)).state.last_seq
        except (NatsError, TimeoutError):
            last = None
        for p in store.readers(stream):
            seq = int(str(have.get((p.name, stream), 0)))
            out.append({"projection": p.name, "stream": stream, "last_seq": seq,
                        "stream_last_seq": last, "lag": None if last is None else last - seq})
    return out


class RebuildBody(BaseModel):
    names: list[str] = []


@router.post("/projections/rebuild")
async def rebuild(request: Request, body: RebuildBody) -> dict[str, object]:
    """Drop the named projections (all when ``names`` is empty) and replay the log."""
    try:
        names = await request.app.state.projector.rebuild(body.names or None)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return {"rebuilding": names}
