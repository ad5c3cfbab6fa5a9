"""Who is calling: tokens, roles, tenants, and the audit record every write leaves.

Every token — a session from sign-in (``dfs_…``) or a personal access token (``dfp_…``) —
is ``<prefix><token id>_<secret>``; the log keeps only the sha256 of the secret
(``TokenIssued``), so no key exists that a daemon (which holds the cluster secret) could
mint tokens with, and every manager reading the log accepts the same tokens.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Depends, HTTPException, Request
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from damselfly.events.admin import AuditRecorded, TokenIssued, TokenKind, TokenRevoked, UserSaved
from damselfly.events.base import Event
from damselfly.events.bus import Publisher, publish_if_last
from damselfly.events.codec import decode
from damselfly.events.ids import new_id
from damselfly.events.secrets import read_secret
from damselfly.events.streams import ADMIN_STREAM
from damselfly.events.subjects import SubjectError, admin_subject, name_of, subject_for
from damselfly.services.manager.control.passwords import verify_password
from damselfly.services.manager.reader import Reader

ROLES: Final = {"root": ("read", "write"), "guest": ("read",)}
SCOPES: Final = ("job", "task", "cluster", "user", "tenant")
SESSION_TTL: Final = 24 * 3600.0
PREFIXES: Final = {"session": "dfs_", "personal": "dfp_"}
TOKEN_ID_LEN: Final = 12


class AuthError(ValueError):
    """A credential is malformed, forged or expired."""


@dataclass(frozen=True)
class Principal:
    """The caller: a user, their role and tenant, and (for a token) the scopes it grants."""

    user_id: str
    role: str
    tenant: str = ""
    scopes: frozenset[str] = frozenset(SCOPES)
    token_id: str = ""

    def sees(self, tenant: str) -> bool:
        return not self.tenant or self.tenant == tenant


def cluster_secret() -> str:
    """The cluster secret (``DAMSELFLY_CLUSTER_SECRET``). Raises ``HTTPException`` 503."""
    try:
        return read_secret(None)
    except RuntimeError as exc:
        raise HTTPException(503, f"the manager cannot seal credentials: {exc}") from None


def new_token(kind: TokenKind) -> tuple[str, str, str]:
    """``(token id, token, sha256 of its secret part)`` for a new ``session`` or
    ``personal`` token."""
    token_id = secrets.token_hex(TOKEN_ID_LEN // 2)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{PREFIXES[kind]}{token_id}_{secret}", token_hash(secret)


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str]:
    """``(token id, secret part)``. Raises ``AuthError``."""
    if not token.startswith(tuple(PREFIXES.values())):
        raise AuthError("not a Damselfly token")
    body = token[len(PREFIXES["personal"]):]
    if len(body) <= TOKEN_ID_LEN + 1 or body[TOKEN_ID_LEN] != "_":
        raise AuthError("malformed token")
    return body[:TOKEN_ID_LEN], body[TOKEN_ID_LEN + 1:]


def reader_of(request: Request) -> Reader:
    reader = request.app.state.reader
    assert isinstance(reader, Reader)
    return reader


def publisher_of(request: Request) -> Publisher:
    publisher = request.app.state.publisher
    assert isinstance(publisher, Publisher)
    return publisher


def js_of(request: Request) -> JetStreamContext:
    js = request.app.state.js
    assert isinstance(js, JetStreamContext)
    return js


async def _last_in_log(js: JetStreamContext, family: str, key: str, kind: type[Event]
                       ) -> Event | None:
    """The last admin event of ``kind`` about ``key``, read from the log itself (not a
    projection, which may lag behind a write another manager, or this one a moment ago, has
    made); None when there is none (an id that is no subject token has none)."""
    try:
        subject = admin_subject(family, key, name_of(kind))
        return decode((await js.get_last_msg(ADMIN_STREAM, subject)).data or b"")
    except (NotFoundError, SubjectError):
        return None


async def stored_user(reader: Reader, js: JetStreamContext, user_id: str
                      ) -> dict[str, object] | None:
    """The user as the log last saved it (a password change, a new role, a disabled state
    count from the next request on), with the projection's timestamps; None if unknown."""
    rows = await reader.records("SELECT * FROM admin_users WHERE user_id = ?", [user_id])
    last = await _last_in_log(js, "user", user_id, UserSaved)
    if not isinstance(last, UserSaved):
        return rows[0] if rows else None
    return {**(rows[0] if rows else {}), "user_id": last.user_id, "email": last.email,
            "role": last.role, "tenant": last.tenant, "password_hash": last.password_hash,
            "state": last.state}


async def _user(reader: Reader, js: JetStreamContext, user_id: str) -> dict[str, object]:
    row = await stored_user(reader, js, user_id)
    if row is None or row["state"] != "enabled":
        raise HTTPException(401, f"user {user_id} is unknown or disabled")
    return row


async def _from_token(reader: Reader, js: JetStreamContext, token: str, now: float
                      ) -> Principal:
    token_id, secret = parse_token(token)
    rows = await reader.records("SELECT *, epoch(expires_at) AS expires FROM admin_tokens "
                                "WHERE token_id = ?", [token_id])
    if not rows or not hmac.compare_digest(str(rows[0]["token_hash"]), token_hash(secret)):
        raise AuthError("unknown token")
    row = rows[0]
    what = "session" if row["kind"] == "session" else "personal access token"
    if row["state"] != "active" or await _last_in_log(js, "token", token_id,
                                                      TokenRevoked) is not None:
        raise AuthError(f"{what} revoked")
    expires = float(str(row["expires"]))
    if expires <= now:
        when = dt.datetime.fromtimestamp(expires, dt.UTC).isoformat(timespec="seconds")
        again = "; sign in again" if row["kind"] == "session" else ""
        raise AuthError(f"{what} expired at {when}{again}")
    user = await _user(reader, js, str(row["user_id"]))
    scopes = row["scopes"]
    assert isinstance(scopes, list)
    return Principal(str(user["user_id"]), str(user["role"]), str(user["tenant"] or ""),
                     frozenset(str(s) for s in scopes), token_id)


async def _from_password(reader: Reader, js: JetStreamContext, name: str, password: str
                         ) -> Principal:
    row = await _user(reader, js, name)
    if not await asyncio.to_thread(verify_password, password, str(row["password_hash"])):
        raise AuthError("wrong user name or password")
    return Principal(str(row["user_id"]), str(row["role"]), str(row["tenant"] or ""))


def _basic(value: str) -> tuple[str, str]:
    """``(user, password)`` of a Basic credential. Raises ``AuthError``."""
    try:
        name, colon, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError("malformed Basic credentials") from None
    if not colon:
        raise AuthError("malformed Basic credentials")
    return name, password


async def principal(request: Request) -> Principal:
    """The caller, as Harbor's preheat provider and Dragonfly's clients send it:
    ``Authorization: Bearer <token>``, ``Authorization: Basic`` with a user's name and
    password (or any name and a token), or ``?access_token=<token>``. Raises
    ``HTTPException`` 401."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    reader, js, now = reader_of(request), js_of(request), time.time()
    try:
        if scheme.lower() == "bearer" and credential:
            return await _from_token(reader, js, credential, now)
        if scheme.lower() == "basic" and credential:
            name, password = _basic(credential)
            if password.startswith(tuple(PREFIXES.values())):
                return await _from_token(reader, js, password, now)
            return await _from_password(reader, js, name, password)
        if token := request.query_params.get("access_token"):
            return await _from_token(reader, js, token, now)
    except AuthError as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    raise HTTPException(401, "sign in first: send Authorization: Bearer <token>",
                        headers={"WWW-Authenticate": "Bearer"})


Caller = Annotated[Principal, Depends(principal)]


def allow(who: Principal, *, scope: str, write: bool = False, everywhere: bool = False) -> None:
    """Raise ``HTTPException`` 403 unless ``who`` may do this. ``everywhere`` asks for a
    caller bound to no tenant (cluster and user administration)."""
    if scope not in who.scopes:
        raise HTTPException(403, f"the token lacks the {scope!r} scope")
    if write and "write" not in ROLES.get(who.role, ()):
        raise HTTPException(403, f"role {who.role!r} may only read")
    if everywhere and who.tenant:
        raise HTTPException(403, f"user {who.user_id} is bound to tenant {who.tenant!r}")


async def issue_token(request: Request, who: Principal, *, kind: TokenKind, name: str,
                      scopes: list[str], ttl: float, wait: float = 5.0) -> dict[str, object]:
    """Record a new token for ``who`` and answer it once it is usable, i.e. projected.
    Raises ``HTTPException`` 503 when the projection does not catch up within ``wait``."""
    token_id, token, digest = new_token(kind)
    now = time.time()
    issued = TokenIssued(id=new_id(), at=now, token_id=token_id, user_id=who.user_id,
                         name=name, scopes=sorted(set(scopes)), expires_at=now + ttl,
                         token_hash=digest, kind=kind)
    await record(request, who, f"token.{kind}", token_id, issued, status=201)
    reader = reader_of(request)
    deadline = time.monotonic() + wait
    while not await reader.records("SELECT 1 FROM admin_tokens WHERE token_id = ?", [token_id]):
        if time.monotonic() > deadline:
            raise HTTPException(503, "the token is recorded but the manager's projections lag "
                                     "behind; it will work in a moment")
        await asyncio.sleep(0.05)
    return {"token_id": token_id, "token": token, "name": name, "scopes": issued.scopes,
            "expires_at": issued.expires_at}


async def _last_seq(js: JetStreamContext, subject: str) -> int:
    try:
        return int((await js.get_last_msg(ADMIN_STREAM, subject)).seq or 0)
    except NotFoundError:
        return 0


async def create_once(request: Request, who: Principal, action: str, target: str,
                      first: Event, *rest: Event, deleted: type[Event] | None = None,
                      taken: str) -> None:
    """Record a create whose key must be new (a user, cluster or tenant name), through any
    number of managers: ``first`` is published only if its subject's last event in the log
    is still the one read here (none, or one a later ``deleted`` event ended), then ``rest``
    and the audit record. Raises ``HTTPException`` 409 ``taken`` when the key is in use or
    another write to it came in between; NATS errors."""
    js = js_of(request)
    subject = subject_for(first)
    seen = await _last_seq(js, subject)
    gone = deleted is not None and await _last_seq(
        js, f"{subject.rpartition('.')[0]}.{name_of(deleted)}") > seen
    if seen and not gone:
        raise HTTPException(409, taken)
    if not await publish_if_last(js, first, seen):
        raise HTTPException(409, taken)
    await record(request, who, action, target, *rest, status=201)


async def record(request: Request, who: Principal, action: str, target: str,
                 *events: Event, status: int = 200) -> list[int]:
    """Publish a write's events followed by its audit record; their stream sequences, in
    order. Raises NATS errors."""
    audit = AuditRecorded(id=new_id(), at=time.time(), actor=who.user_id, action=action,
                          target=target, method=request.method, path=request.url.path,
                          status=status)
    return await publisher_of(request).publish_many([*events, audit])
