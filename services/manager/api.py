"""The read API under ``/api/v1``: overview, hosts, tasks, peers, jobs, dashboards, SQL and
the projections' watermarks. Every handler needs a signed-in caller and reads DuckDB through
the ``Reader``, over only the caller's tenant when they are bound to one; tasks and peers are
also under ``/oapi/v1``, Dragonfly's path for personal access tokens. The SQL door and
rebuilds are root's: SQL reads the user and token tables and every tenant's rows."""

from __future__ import annotations

import logging
from typing import Annotated

import duckdb
from fastapi import APIRouter, HTTPException, Query, Request
from nats.errors import Error as NatsError
from pydantic import BaseModel, Field

from damselfly import dashboards
from damselfly.projections import store
from damselfly.services.manager.control.auth import Caller, Principal, allow, reader_of, record
from damselfly.services.manager.jobshape import dragonfly_job, job_number, job_prefix
from damselfly.services.manager.schedulers import live_schedulers

log = logging.getLogger("damselfly.manager.api")
router = APIRouter(prefix="/api/v1", tags=["read"])
open_router = APIRouter(prefix="/oapi/v1", tags=["read"])

ACTIVE_STATES = "('registered', 'running', 'back_to_source')"
MAX_ROWS = 100_000  # per answer of the SQL door; the DuckDB file has them all


async def _records(request: Request, who: Principal, sql: str,
                   params: list[object] | None = None) -> list[dict[str, object]]:
    return await reader_of(request).records(sql, params, tenant=who.tenant)


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
async def overview(request: Request, who: Caller) -> dict[str, object]:
    """Per scheduler cluster: seed peers and hosts alive, active and all peers, tasks and
    scheduling decisions; the live schedulers (from their leases) and jobs by state."""
    allow(who, scope="task")
    clusters = await _records(request, who, OVERVIEW_SQL)
    keys = ("seed_peers", "hosts", "active_peers", "peers", "tasks", "decisions")
    totals = {k: sum(int(str(c[k])) for c in clusters) for k in keys}
    try:
        schedulers = await live_schedulers(request.app.state.js)
    except (NatsError, TimeoutError) as exc:  # the projections still answer without NATS
        log.warning("cannot read scheduler leases: %s", exc)
        schedulers = []
    totals["schedulers"] = len({s["scheduler"] for s in schedulers})
    jobs = await _records(request, who, "SELECT state, count(*) AS jobs FROM jobs "
                          "GROUP BY state ORDER BY state")
    return {"clusters": clusters, "schedulers": schedulers, "totals": totals, "jobs": jobs}


@router.get("/hosts")
async def hosts(request: Request, who: Caller, q: str = "",
                limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, object]]:
    allow(who, scope="cluster")
    return await _records(request, who,
        f"SELECT * FROM hosts WHERE host_id {LIKE} OR hostname {LIKE} OR ip {LIKE} "
        "ORDER BY cluster, seed DESC, host_id LIMIT ?", [_like(q)] * 3 + [limit])


@router.get("/tasks")
@open_router.get("/tasks", summary="Tasks you may see, newest first")
async def tasks(request: Request, who: Caller, q: str = "",
                limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, object]]:
    allow(who, scope="task")
    return await _records(request, who,
        f"SELECT * FROM tasks WHERE task_id {LIKE} OR url {LIKE} "
        "ORDER BY updated_at DESC NULLS LAST, task_id LIMIT ?", [_like(q), _like(q), limit])


@router.get("/tasks/{task_id}")
@open_router.get("/tasks/{task_id}", summary="A task with its peers")
async def task(request: Request, who: Caller, task_id: str) -> dict[str, object]:
    """A task with its peers and the scheduling decisions about it."""
    allow(who, scope="task")
    found = await _records(request, who, "SELECT * FROM tasks WHERE task_id = ?", [task_id])
    if not found:
        raise HTTPException(404, f"no task {task_id}")
    peers = await _records(request, who, "SELECT * FROM peers WHERE task_id = ? "
                           "ORDER BY registered_at NULLS LAST, peer_id", [task_id])
    decisions = await _records(request, who, "SELECT * FROM decision_latency WHERE "
                               "task_id = ? ORDER BY decided_at, decision_id", [task_id])
    return {"task": found[0], "peers": peers, "decisions": decisions}


@router.get("/peers")
@open_router.get("/peers", summary="Peers (one per download) of the tasks you may see")
async def peers(request: Request, who: Caller, q: str = "", state: str = "",
                limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, object]]:
    allow(who, scope="task")
    return await _records(
        request, who,
        f"SELECT p.*, t.application FROM peers p LEFT JOIN tasks t USING (task_id) "
        f"WHERE (peer_id {LIKE} OR host_id {LIKE} OR task_id {LIKE}) AND (? = '' OR p.state = ?) "
        "ORDER BY p.updated_at DESC NULLS LAST, peer_id LIMIT ?",
        [_like(q)] * 3 + [state, state, limit])


@router.get("/tasks/{task_id}/peers/{peer_id}")
async def peer(request: Request, who: Caller, task_id: str, peer_id: str
               ) -> dict[str, object]:
    """One peer's download: its row, its pieces per minute and the decisions about it."""
    allow(who, scope="task")
    found = await _records(request, who, "SELECT * FROM peers WHERE task_id = ? AND "
                           "peer_id = ?", [task_id, peer_id])
    if not found:
        raise HTTPException(404, f"no peer {peer_id} in task {task_id}")
    minutes = await _records(request, who, "SELECT * FROM piece_minutes WHERE task_id = ? "
                             "AND peer_id = ? ORDER BY minute", [task_id, peer_id])
    decisions = await _records(request, who, "SELECT * FROM decision_latency WHERE "
                               "task_id = ? AND addressee = ? ORDER BY decided_at",
                               [task_id, peer_id])
    return {"peer": found[0], "pieces_per_minute": minutes, "decisions": decisions}


JOBS_SQL = ("SELECT j.*, coalesce(t.tenant, '') AS application FROM jobs j "
            "LEFT JOIN admin_job_tenants t USING (job_id)")


@router.get("/jobs")
@open_router.get("/jobs", summary="Jobs you may see, newest first, with filters")
async def jobs(request: Request, who: Caller, state: str = "", type: str = "",
               application: str = "", limit: Annotated[int, Query(ge=1, le=1000)] = 200
               ) -> list[dict[str, object]]:
    allow(who, scope="job")
    rows = await _records(
        request, who,
        f"SELECT * FROM ({JOBS_SQL}) WHERE (? = '' OR state = ?) AND (? = '' OR kind = ?) "
        "AND (? = '' OR application = ?) ORDER BY requested_at DESC NULLS LAST, job_id LIMIT ?",
        [state, state, type, type, application, application, limit])
    return [{"id": job_number(str(r["job_id"])), **r} for r in rows]


@router.get("/jobs/{job_id}")
@open_router.get("/jobs/{job_id}", summary="A job by its id or Dragonfly integer id: "
                 "Dragonfly's fields (id, type, state PENDING/SUCCESS/FAILURE, result) and "
                 "Damselfly's (job, hosts)")
async def job(request: Request, who: Caller, job_id: str) -> dict[str, object]:
    allow(who, scope="job")
    prefix = job_prefix(job_id)
    where, key = ("job_id LIKE ? || '%'", prefix) if prefix else ("job_id = ?", job_id)
    found = await _records(request, who, f"SELECT * FROM ({JOBS_SQL}) WHERE {where} "
                           "ORDER BY job_id LIMIT 1", [key])
    if not found and prefix:  # the number of an id that is not hex: find it by its hash
        ids = await _records(request, who, "SELECT job_id FROM jobs")
        matches: list[object] = [r["job_id"] for r in ids
                                 if job_number(str(r["job_id"])) == int(job_id)]
        if matches:
            found = await _records(request, who, f"SELECT * FROM ({JOBS_SQL}) WHERE "
                                   "job_id = ?", matches[:1])
    if not found:
        raise HTTPException(404, f"no job {job_id}")
    job_id = str(found[0]["job_id"])
    named = await _records(request, who, "SELECT j.*, h.hostname, h.ip, t.url FROM job_hosts j "
                           "LEFT JOIN hosts h USING (host_id) LEFT JOIN tasks t USING (task_id) "
                           "WHERE j.job_id = ? ORDER BY j.host_id, j.task_id", [job_id])
    urls = {str(r["task_id"]): str(r["url"] or "") for r in named}
    outcomes = [{k: v for k, v in r.items() if k not in ("hostname", "ip", "url")}
                for r in named]
    return {**dragonfly_job(found[0], named, urls), "job": found[0], "hosts": outcomes}


@router.get("/dashboards")
async def dashboard_list(who: Caller) -> list[dict[str, object]]:
    return [{"name": p.name, "title": p.title, "chart": p.chart, "description": p.description}
            for p in dashboards.panels()]


def _table(result: store.Result) -> dict[str, object]:
    return {"columns": result.columns, "rows": [[store.plain(v) for v in r] for r in result.rows],
            "truncated": result.truncated}


@router.get("/dashboards/{name}")
async def dashboard(request: Request, who: Caller, name: str) -> dict[str, object]:
    """One panel's rows, over the caller's tenant only when they are bound to one."""
    allow(who, scope="task")
    try:
        panel = dashboards.panel(name)
    except ValueError as exc:
        raise HTTPException(404, str(exc)) from None
    result = await reader_of(request).query(panel.sql, tenant=who.tenant)
    return {"name": panel.name, "title": panel.title, "chart": panel.chart,
            "description": panel.description, **_table(result)}


class SqlBody(BaseModel):
    sql: str
    max_rows: Annotated[int, Field(ge=1, le=MAX_ROWS)] = MAX_ROWS


def _root(who: Principal, what: str) -> None:
    allow(who, scope="cluster", everywhere=True)
    if who.role != "root":
        raise HTTPException(403, f"only root may {what}")


@router.post("/sql")
async def sql(request: Request, who: Caller, body: SqlBody) -> dict[str, object]:
    """Run one read-only SELECT against the live projections (how ``damselfly sql`` reaches
    a running manager, since DuckDB lets only the manager open its file). Root only."""
    _root(who, "run SQL: it reads every tenant's rows and the user and token tables")
    text = body.sql
    try:
        store.check_read_only(text)
        result = await reader_of(request).query(text, max_rows=body.max_rows)
    except (store.NotReadOnly, duckdb.Error) as exc:
        raise HTTPException(400, str(exc).splitlines()[0]) from None
    return _table(result)


@router.get("/projections")
async def projections(request: Request, who: Caller) -> list[dict[str, object]]:
    """Each projection's watermark per stream, and how far behind the stream's end it is."""
    marks = await reader_of(request).records(
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
async def rebuild(request: Request, who: Caller, body: RebuildBody) -> dict[str, object]:
    """Drop the named projections (all when ``names`` is empty) and replay the log. Root
    only."""
    _root(who, "rebuild projections")
    try:
        names = await request.app.state.projector.rebuild(body.names or None)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    await record(request, who, "projections.rebuild", ",".join(names))
    return {"rebuilding": names}
