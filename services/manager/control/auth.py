"""Who is calling: session tokens from sign-in, personal access tokens, roles, tenants,
and the audit record every write leaves.

A session token is ``dfs_<payload>.<mac>``: the user and expiry under an HMAC keyed from the
cluster secret, so nothing is stored for it. A personal access token is
``dfp_<token id>_<secret>``; only the sha256 of the secret is kept (``TokenIssued``).
"""

from __future__ import annotations

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

from events.admin import AuditRecorded
from events.base import Event
from events.bus import Publisher
from events.ids import new_id
from services.manager.control.seal import derive_key
from services.manager.reader import Reader
from services.peer.daemon import read_secret

ROLES: Final = {"root": ("read", "write"), "guest": ("read",)}
SCOPES: Final = ("job", "task", "cluster", "user", "tenant")
SESSION_TTL: Final = 24 * 3600.0
SESSION_PREFIX: Final = "dfs_"
PAT_PREFIX: Final = "dfp_"
PAT_ID_LEN: Final = 12


class AuthError(ValueError):
    """A credential is malformed, forged or expired."""


@dataclass(frozen=True)
class Principal:
    """The caller: a user, their role and tenant, and (for a token) the scopes it grants."""

    user_id: str
    role: str
    tenant: str = ""
    scopes: frozenset[str] = frozenset(SCOPES)

    def sees(self, tenant: str) -> bool:
        return not self.tenant or self.tenant == tenant


def cluster_secret() -> str:
    """The cluster secret (``DAMSELFLY_CLUSTER_SECRET``). Raises ``HTTPException`` 503."""
    try:
        return read_secret(None)
    except RuntimeError as exc:
        raise HTTPException(503, f"the manager cannot sign or seal: {exc}") from None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_session(secret: str, user_id: str, now: float, ttl: float = SESSION_TTL) -> str:
    payload = f"{user_id}|{now + ttl:.0f}".encode()
    mac = hmac.new(derive_key(secret, "session"), payload, hashlib.sha256).digest()
    return f"{SESSION_PREFIX}{_b64(payload)}.{_b64(mac)}"


def check_session(secret: str, token: str, now: float) -> str:
    """The user a session token names. Raises ``AuthError``."""
    try:
        payload_text, mac_text = token[len(SESSION_PREFIX):].split(".")
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except (ValueError, binascii.Error):
        raise AuthError("malformed session token") from None
    want = hmac.new(derive_key(secret, "session"), payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, want):
        raise AuthError("session token not signed by this cluster")
    user_id, _, expires = payload.decode().rpartition("|")
    if float(expires) <= now:
        raise AuthError("session expired; sign in again")
    return user_id


def new_pat() -> tuple[str, str, str]:
    """``(token id, token, sha256 of its secret part)`` for a new personal access token."""
    token_id = secrets.token_hex(PAT_ID_LEN // 2)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{PAT_PREFIX}{token_id}_{secret}", token_hash(secret)


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_pat(token: str) -> tuple[str, str]:
    """``(token id, secret part)``. Raises ``AuthError``."""
    body = token[len(PAT_PREFIX):]
    if len(body) <= PAT_ID_LEN + 1 or body[PAT_ID_LEN] != "_":
        raise AuthError("malformed personal access token")
    return body[:PAT_ID_LEN], body[PAT_ID_LEN + 1:]


def reader_of(request: Request) -> Reader:
    reader = request.app.state.reader
    assert isinstance(reader, Reader)
    return reader


def publisher_of(request: Request) -> Publisher:
    publisher = request.app.state.publisher
    assert isinstance(publisher, Publisher)
    return publisher


async def _user(reader: Reader, user_id: str) -> dict[str, object]:
    rows = await reader.records("SELECT * FROM admin_users WHERE user_id = ?", [user_id])
    if not rows or rows[0]["state"] != "enabled":
        raise HTTPException(401, f"user {user_id} is unknown or disabled")
    return rows[0]


async def _from_pat(reader: Reader, token: str, now: float) -> Principal:
    token_id, secret = parse_pat(token)
    rows = await reader.records("SELECT *, epoch(expires_at) AS expires FROM admin_tokens "
                                "WHERE token_id = ?", [token_id])
    if not rows or not hmac.compare_digest(str(rows[0]["token_hash"]), token_hash(secret)):
        raise AuthError("unknown personal access token")
    row = rows[0]
    if row["state"] != "active":
        raise AuthError("personal access token revoked")
    expires = float(str(row["expires"]))
    if expires <= now:
        when = dt.datetime.fromtimestamp(expires, dt.UTC).isoformat(timespec="seconds")
        raise AuthError(f"personal access token expired at {when}")
    user = await _user(reader, str(row["user_id"]))
    scopes = row["scopes"]
    assert isinstance(scopes, list)
    return Principal(str(user["user_id"]), str(user["role"]), str(user["tenant"] or ""),
                     frozenset(str(s) for s in scopes))


async def principal(request: Request) -> Principal:
    """The caller from ``Authorization: Bearer …``. Raises ``HTTPException`` 401."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "sign in first: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    reader, now = reader_of(request), time.time()
    try:
        if token.startswith(PAT_PREFIX):
            return await _from_pat(reader, token, now)
        if token.startswith(SESSION_PREFIX):
            user = await _user(reader, check_session(cluster_secret(), token, now))
            return Principal(str(user["user_id"]), str(user["role"]), str(user["tenant"] or ""))
    except AuthError as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    raise HTTPException(401, "not a Damselfly token", headers={"WWW-Authenticate": "Bearer"})


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


async def record(request: Request, who: Principal, action: str, target: str,
                 *events: Event, status: int = 200) -> None:
    """Publish a write's events followed by its audit record. Raises NATS errors."""
    audit = AuditRecorded(id=new_id(), at=time.time(), actor=who.user_id, action=action,
                          target=target, method=request.method, path=request.url.path,
                          status=status)
    await publisher_of(request).publish_many([*events, audit])
