"""Tasks and the peers downloading them, as a tenant may see them: only rows whose
``application`` is the caller's tenant (every row for a caller bound to no tenant)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from services.manager.control.auth import Caller, allow, reader_of

router = APIRouter(prefix="/oapi/v1", tags=["tasks"])

VISIBLE = "(? = '' OR coalesce(t.application, '') = ?)"


@router.get("/tasks", summary="Tasks you may see, newest first")
async def tasks(request: Request, who: Caller, q: str = "",
                limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, object]]:
    allow(who, scope="task")
    return await reader_of(request).records(
        f"SELECT t.* FROM tasks t WHERE {VISIBLE} AND (strpos(t.task_id, ?) > 0 OR "
        "strpos(lower(t.url), lower(?)) > 0) "
        "ORDER BY t.updated_at DESC NULLS LAST, t.task_id LIMIT ?",
        [who.tenant, who.tenant, q, q, limit])


@router.get("/tasks/{task_id}", summary="A task with its peers")
async def task(request: Request, who: Caller, task_id: str) -> dict[str, object]:
    allow(who, scope="task")
    reader = reader_of(request)
    found = await reader.records(f"SELECT t.* FROM tasks t WHERE t.task_id = ? AND {VISIBLE}",
                                 [task_id, who.tenant, who.tenant])
    if not found:
        raise HTTPException(404, f"no task {task_id}")
    peers = await reader.records("SELECT * FROM peers WHERE task_id = ? "
                                 "ORDER BY registered_at NULLS LAST, peer_id", [task_id])
    return {"task": found[0], "peers": peers}


@router.get("/peers", summary="Peers (one per download) of the tasks you may see")
async def peers(request: Request, who: Caller, state: str = "",
                limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, object]]:
    allow(who, scope="task")
    return await reader_of(request).records(
        f"SELECT p.*, t.application FROM peers p LEFT JOIN tasks t USING (task_id) "
        f"WHERE {VISIBLE} AND (? = '' OR p.state = ?) "
        "ORDER BY p.updated_at DESC NULLS LAST, p.peer_id LIMIT ?",
        [who.tenant, who.tenant, state, state, limit])
