"""Users, roles, sign-in and the first root user.

Roles: ``root`` may do everything, ``guest`` may read. A user bound to a tenant sees only
that tenant's tasks, jobs and peers. Passwords are kept only as scrypt hashes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
import time
from typing import Annotated, Final

import msgspec
from fastapi import APIRouter, HTTPException, Request
from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict, Field

from damselfly.events.admin import Role, TokenRevoked, UserSaved, UserState
from damselfly.events.base import Event
from damselfly.events.bus import publish_if_last
from damselfly.events.ids import new_id
from damselfly.services.manager.control.auth import (
    ROLES,
    SCOPES,
    SESSION_TTL,
    Caller,
    Principal,
    allow,
    create_once,
    issue_token,
    js_of,
    reader_of,
    record,
    stored_user,
)
from damselfly.services.manager.control.passwords import hash_password, verify_password
from damselfly.services.manager.reader import Reader

log = logging.getLogger("damselfly.manager.users")
router = APIRouter(prefix="/api/v1", tags=["users"])

ROOT: Final = "root"
ROOT_PASSWORD_ENV: Final = "DAMSELFLY_ROOT_PASSWORD"
NAME: Final = r"^[A-Za-z0-9_\-]{1,64}$"
PUBLIC: Final = "user_id, email, role, tenant, state, created_at, updated_at"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignIn(Strict):
    name: str
    password: str


class UserCreate(Strict):
    name: Annotated[str, Field(pattern=NAME)]
    password: Annotated[str, Field(min_length=8, max_length=256)]
    email: str = ""
    role: Role = "guest"
    tenant: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{0,64}$")] = ""


class UserChange(Strict):
    password: Annotated[str, Field(min_length=8, max_length=256)] | None = None
    email: str | None = None
    tenant: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{0,64}$")] | None = None
    state: UserState | None = None


async def _stored(request: Request, user_id: str) -> dict[str, object] | None:
    return await stored_user(reader_of(request), js_of(request), user_id)


async def _check_tenant(reader: Reader, tenant: str | None) -> None:
    if tenant and not await reader.records(
            "SELECT 1 FROM admin_tenants WHERE tenant = ? AND state = 'active'", [tenant]):
        raise HTTPException(404, f"no tenant {tenant}; create it under /api/v1/applications")


def _public(row: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in row.items() if k != "password_hash"}


def _view(e: UserSaved) -> dict[str, object]:
    return {"user_id": e.user_id, "email": e.email, "role": e.role, "tenant": e.tenant,
            "state": e.state}


@router.post("/users/signin", summary="Sign in; answers a session token (24 h)")
async def sign_in(request: Request, body: SignIn) -> dict[str, object]:
    row = await _stored(request, body.name)
    if row is None or row["state"] != "enabled" or not await asyncio.to_thread(
            verify_password, body.password, str(row["password_hash"])):
        raise HTTPException(401, "wrong user name or password")
    who = Principal(body.name, str(row["role"]), str(row["tenant"] or ""))
    session = await issue_token(request, who, kind="session", name="sign-in",
                                scopes=list(SCOPES), ttl=SESSION_TTL)
    return {**session, "user": _public(row)}


@router.get("/roles", summary="The roles and what they permit")
async def roles(who: Caller) -> list[dict[str, object]]:
    return [{"role": r, "permissions": list(p)} for r, p in ROLES.items()]


@router.post("/users", status_code=201, summary="Create a user (root only)")
async def create_user(request: Request, who: Caller, body: UserCreate) -> dict[str, object]:
    allow(who, scope="user", write=True, everywhere=True)
    await _check_tenant(reader_of(request), body.tenant)
    saved = UserSaved(id=new_id(), at=time.time(), user_id=body.name, email=body.email,
                      role=body.role, tenant=body.tenant,
                      password_hash=await asyncio.to_thread(hash_password, body.password),
                      actor=who.user_id)
    await create_once(request, who, "user.create", body.name, saved,
                      taken=f"user {body.name} exists")
    return _view(saved)


@router.get("/users", summary="List users (root only)")
async def list_users(request: Request, who: Caller) -> list[dict[str, object]]:
    allow(who, scope="user", everywhere=True)
    return await reader_of(request).records(f"SELECT {PUBLIC} FROM admin_users ORDER BY user_id")


@router.get("/users/{user_id}", summary="A user (yourself, or anyone for root)")
async def get_user(request: Request, who: Caller, user_id: str) -> dict[str, object]:
    if user_id != who.user_id:
        allow(who, scope="user", everywhere=True)
    row = await _stored(request, user_id)
    if row is None:
        raise HTTPException(404, f"no user {user_id}")
    return _public(row)


async def _save(request: Request, who: Caller, user_id: str, action: str, *,
                also: tuple[Event, ...] = (), **changes: object) -> dict[str, object]:
    row = await _stored(request, user_id)
    if row is None:
        raise HTTPException(404, f"no user {user_id}")
    fields = {k: row[k] for k in ("email", "role", "tenant", "password_hash", "state")}
    fields.update(changes)
    saved = msgspec.convert({**{k: str(v or "") for k, v in fields.items()}, "id": new_id(),
                             "at": time.time(), "user_id": user_id, "actor": who.user_id},
                            UserSaved)
    await record(request, who, action, user_id, saved, *also)
    return _view(saved)


async def _sessions_ended(request: Request, who: Principal, user_id: str
                          ) -> tuple[TokenRevoked, ...]:
    """A ``TokenRevoked`` for each of the user's sessions but the caller's own: a new
    password ends every other sign-in, from the next request on."""
    rows = await reader_of(request).records(
        "SELECT token_id FROM admin_tokens WHERE user_id = ? AND kind = 'session' "
        "AND state = 'active' AND token_id <> ?", [user_id, who.token_id])
    return tuple(TokenRevoked(id=new_id(), at=time.time(), token_id=str(r["token_id"]),
                              user_id=user_id, actor=who.user_id) for r in rows)


@router.patch("/users/{user_id}", summary="Change a user's password, e-mail, tenant or state")
async def update_user(request: Request, who: Caller, user_id: str, body: UserChange
                      ) -> dict[str, object]:
    # Anyone may change their own password and e-mail; the rest is root's.
    if user_id != who.user_id or body.tenant is not None or body.state is not None:
        allow(who, scope="user", write=True, everywhere=True)
    if user_id == ROOT and (body.state == "disabled" or body.tenant):
        raise HTTPException(409, "the root user stays enabled and bound to no tenant")
    await _check_tenant(reader_of(request), body.tenant)
    changes: dict[str, object] = body.model_dump(exclude_none=True, exclude={"password"})
    ended: tuple[Event, ...] = ()
    if body.password is not None:
        changes["password_hash"] = await asyncio.to_thread(hash_password, body.password)
        ended = await _sessions_ended(request, who, user_id)
    return await _save(request, who, user_id, "user.update", also=ended, **changes)


@router.put("/users/{user_id}/roles/{role}", summary="Give a user a role (root only)")
async def set_role(request: Request, who: Caller, user_id: str, role: Role) -> dict[str, object]:
    allow(who, scope="user", write=True, everywhere=True)
    if user_id == ROOT and role != "root":
        raise HTTPException(409, "the root user keeps the root role")
    return await _save(request, who, user_id, "user.role", role=role)


async def ensure_root(js: JetStreamContext, timeout: float = 5.0) -> bool:
    """Create the ``root`` user unless the log already has one; True if it did. The
    password comes from ``DAMSELFLY_ROOT_PASSWORD``, else is generated and printed once.
    Publishing expects no earlier event on the subject, so two managers cannot both create
    it. Raises NATS errors."""
    password = os.environ.get(ROOT_PASSWORD_ENV, "")
    generated = not password
    if generated:
        password = secrets.token_urlsafe(12)
    saved = UserSaved(id=new_id(), at=time.time(), user_id=ROOT, role="root",
                      password_hash=await asyncio.to_thread(hash_password, password),
                      actor="manager")
    if not await publish_if_last(js, saved, 0, timeout):  # root exists already
        return False
    if generated:
        print(f"damselfly manager: created user root with password {password} "
              f"(shown once; set {ROOT_PASSWORD_ENV} to choose it)", file=sys.stderr, flush=True)
    else:
        log.info("created user root with the password from %s", ROOT_PASSWORD_ENV)
    return True
