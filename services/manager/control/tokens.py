"""Personal access tokens: issued to the signed-in user with scopes and an expiry, shown
once, used as ``Authorization: Bearer dfp_…`` (notably on ``/oapi/v1``)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from events.admin import TokenIssued, TokenRevoked
from events.ids import new_id
from services.manager.control.auth import SCOPES, Caller, allow, new_pat, reader_of, record

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
        raise HTTPException(403, f"a token cannot grant scopes its issuer lacks: {', '.join(wider)}")
    token_id, token, digest = new_pat()
    now = time.time()
    issued = TokenIssued(id=new_id(), at=now, token_id=token_id, user_id=who.user_id,
                         name=body.name, scopes=sorted(set(body.scopes)),
                         expires_at=now + body.expires_in, token_hash=digest)
    await record(request, who, "token.issue", token_id, issued, status=201)
    return {"token_id": token_id, "token": token, "name": body.name, "scopes": issued.scopes,
            "expires_at": issued.expires_at}


@router.get("/personal-access-tokens", summary="Your tokens (everyone's for root)")
async def list_tokens(request: Request, who: Caller) -> list[dict[str, object]]:
    everyone = who.role == "root" and not who.tenant
    return await reader_of(request).records(
        f"SELECT {PUBLIC} FROM admin_tokens WHERE ? OR user_id = ? ORDER BY created_at",
        [everyone, who.user_id])


@router.delete("/personal-access-tokens/{token_id}", summary="Revoke a token")
async def revoke(request: Request, who: Caller, token_id: str) -> dict[str, object]:
    rows = await reader_of(request).records(
        "SELECT user_id, state FROM admin_tokens WHERE token_id = ?", [token_id])
    if not rows or rows[0]["state"] != "active":
        raise HTTPException(404, f"no active token {token_id}")
    owner = str(rows[0]["user_id"])
    if owner != who.user_id:
        allow(who, scope="user", write=True, everywhere=True)
    await record(request, who, "token.revoke", token_id,
                 TokenRevoked(id=new_id(), at=time.time(), token_id=token_id, user_id=owner,
                              actor=who.user_id))
    return {"token_id": token_id, "revoked": True}
