"""Personal access tokens: issued to the signed-in user with scopes and an expiry, shown
once, used as ``Authorization: Bearer dfp_…`` (notably on ``/oapi/v1``); and sign-out."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from damselfly.events.admin import TokenRevoked
from damselfly.events.ids import new_id
from damselfly.services.manager.control.auth import (
    SCOPES,
    Caller,
    allow,
    issue_token,
    reader_of,
    record,
)

router = APIRouter(prefix="/api/v1", tags=["personal access tokens"])

PUBLIC = "token_id, user_id, name, scopes, expires_at, state, created_at"


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=128)]
    scopes: Annotated[list[str], Field(min_length=1)]
    expires_in: Annotated[float, Field(gt=0, le=366 * 24 * 3600,
                                       description="seconds until it expires")] = 30 * 24 * 3600


@router.post("/personal-access-tokens", status_code=201,
             summary="Issue a token for yourself; the answer is the only time it is shown")
async def issue(request: Request, who: Caller, body: TokenCreate) -> dict[str, object]:
    unknown = sorted(set(body.scopes) - set(SCOPES))
    if unknown:
        raise HTTPException(422, f"unknown scopes {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    wider = sorted(set(body.scopes) - who.scopes)
    if wider:
        raise HTTPException(403, "a token cannot grant scopes its issuer lacks: "
                                 f"{', '.join(wider)}")
    return await issue_token(request, who, kind="personal", name=body.name, scopes=body.scopes,
                             ttl=body.expires_in)


@router.get("/personal-access-tokens", summary="Your tokens (everyone's for root)")
async def list_tokens(request: Request, who: Caller) -> list[dict[str, object]]:
    everyone = who.role == "root" and not who.tenant
    return await reader_of(request).records(
        f"SELECT {PUBLIC} FROM admin_tokens WHERE kind = 'personal' AND (? OR user_id = ?) "
        "ORDER BY created_at",
        [everyone, who.user_id])


@router.delete("/personal-access-tokens/{token_id}", summary="Revoke a token")
async def revoke(request: Request, who: Caller, token_id: str) -> dict[str, object]:
    rows = await reader_of(request).records(
        "SELECT user_id, state FROM admin_tokens WHERE token_id = ? AND kind = 'personal'",
        [token_id])
    if not rows or rows[0]["state"] != "active":
        raise HTTPException(404, f"no active personal access token {token_id}")
    owner = str(rows[0]["user_id"])
    if owner != who.user_id:
        allow(who, scope="user", write=True, everywhere=True)
    await record(request, who, "token.revoke", token_id,
                 TokenRevoked(id=new_id(), at=time.time(), token_id=token_id, user_id=owner,
                              actor=who.user_id))
    return {"token_id": token_id, "revoked": True}


@router.post("/users/signout", summary="Revoke the session (or token) this request carries")
async def sign_out(request: Request, who: Caller) -> dict[str, object]:
    await record(request, who, "token.revoke", who.token_id,
                 TokenRevoked(id=new_id(), at=time.time(), token_id=who.token_id,
                              user_id=who.user_id, actor=who.user_id))
    return {"token_id": who.token_id, "revoked": True}
