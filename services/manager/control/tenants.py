"""Tenants (Dragonfly's applications) and the audit trail.

A tenant's tasks, jobs and peers are those whose ``application`` is the tenant's id; a user
bound to a tenant sees and changes only that tenant.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from damselfly.events.admin import TenantDeleted, TenantSaved
from damselfly.events.ids import new_id
from damselfly.services.manager.control.auth import Caller, allow, create_once, reader_of, record

router = APIRouter(prefix="/api/v1", tags=["tenants"])


class TenantChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    bio: str | None = None
    priority: Annotated[int, Field(ge=0, le=6)] | None = None


class TenantCreate(TenantChange):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]


async def _tenant(request: Request, tenant: str) -> dict[str, object] | None:
    rows = await reader_of(request).records(
        "SELECT * FROM admin_tenants WHERE tenant = ? AND state = 'active'", [tenant])
    return rows[0] if rows else None


def _view(e: TenantSaved) -> dict[str, object]:
    return {"name": e.tenant, "url": e.url, "bio": e.bio, "priority": e.priority}


@router.post("/applications", status_code=201, summary="Create a tenant (root only)")
async def create(request: Request, who: Caller, body: TenantCreate) -> dict[str, object]:
    allow(who, scope="tenant", write=True, everywhere=True)
    saved = TenantSaved(id=new_id(), at=time.time(), tenant=body.name, url=body.url or "",
                        bio=body.bio or "", priority=body.priority or 0, actor=who.user_id)
    await create_once(request, who, "tenant.create", body.name, saved, deleted=TenantDeleted,
                      taken=f"tenant {body.name} exists")
    return _view(saved)


@router.get("/applications", summary="Tenants (only your own when you are bound to one)")
async def list_all(request: Request, who: Caller) -> list[dict[str, object]]:
    allow(who, scope="tenant")
    return await reader_of(request).records(
        "SELECT * FROM admin_tenants WHERE state = 'active' AND (? = '' OR tenant = ?) "
        "ORDER BY tenant", [who.tenant, who.tenant])


@router.get("/applications/{tenant}", summary="A tenant")
async def get_one(request: Request, who: Caller, tenant: str) -> dict[str, object]:
    allow(who, scope="tenant")
    row = await _tenant(request, tenant) if who.sees(tenant) else None
    if row is None:
        raise HTTPException(404, f"no tenant {tenant}")
    return row


@router.patch("/applications/{tenant}", summary="Change a tenant")
async def update(request: Request, who: Caller, tenant: str, body: TenantChange
                 ) -> dict[str, object]:
    allow(who, scope="tenant", write=True)
    row = await _tenant(request, tenant) if who.sees(tenant) else None
    if row is None:
        raise HTTPException(404, f"no tenant {tenant}")
    saved = TenantSaved(
        id=new_id(), at=time.time(), tenant=tenant,
        url=body.url if body.url is not None else str(row["url"] or ""),
        bio=body.bio if body.bio is not None else str(row["bio"] or ""),
        priority=body.priority if body.priority is not None else int(str(row["priority"])),
        actor=who.user_id)
    await record(request, who, "tenant.update", tenant, saved)
    return _view(saved)


@router.delete("/applications/{tenant}", summary="Delete a tenant (root only)")
async def delete(request: Request, who: Caller, tenant: str) -> dict[str, object]:
    allow(who, scope="tenant", write=True, everywhere=True)
    if await _tenant(request, tenant) is None:
        raise HTTPException(404, f"no tenant {tenant}")
    await record(request, who, "tenant.delete", tenant,
                 TenantDeleted(id=new_id(), at=time.time(), tenant=tenant, actor=who.user_id))
    return {"name": tenant, "deleted": True}


@router.get("/audit", tags=["audit"], summary="Who changed what, newest first (root only)")
async def audit(request: Request, who: Caller, actor: str = "", action: str = "",
                limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, object]]:
    allow(who, scope="user", everywhere=True)
    return await reader_of(request).records(
        "SELECT * FROM admin_audit WHERE (? = '' OR actor = ?) AND (? = '' OR action = ?) "
        "ORDER BY recorded_at DESC, audit_id LIMIT ?", [actor, actor, action, action, limit])
