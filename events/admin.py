"""Administration: clusters and their scopes, users, personal access tokens, tenants, audit.

Subjects: ``df.admin.<family>.<key>.<name>`` (``family`` is ``scheduler_cluster``,
``seed_peer_cluster``, ``user``, ``token``, ``tenant`` or ``audit``). No secret is here in
clear: passwords are salted scrypt hashes and tokens sha256 digests of random values.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from damselfly.events.base import Event
from damselfly.events.fields import Limit, OptToken, Seconds, Text, Texts, Token, Tokens, Url

ClusterKind = Literal["scheduler", "seed_peer"]
Role = Literal["root", "guest"]
"""``root`` may do everything, ``guest`` may read."""
UserState = Literal["enabled", "disabled"]
TokenKind = Literal["session", "personal"]
"""A session from sign-in, or a personal access token."""


class ClusterScopes(msgspec.Struct, frozen=True, kw_only=True):
    """Which hosts belong to a scheduler cluster: by IDC, location prefix, CIDR or hostname
    pattern (a regular expression)."""

    idc: Texts = msgspec.field(default_factory=list)
    location: Texts = msgspec.field(default_factory=list)
    cidrs: Texts = msgspec.field(default_factory=list)
    hostnames: Texts = msgspec.field(default_factory=list)


class ClusterSaved(Event, frozen=True, kw_only=True, tag="admin.cluster_saved.v1"):
    """A scheduler or seed-peer cluster was created or changed.

    ``kind`` is ``scheduler`` or ``seed_peer``; ``seed_peer_clusters`` links a scheduler
    cluster to the seed-peer clusters serving it; ``load_limit`` is a seed-peer cluster's.
    """

    cluster: Token
    kind: ClusterKind = "scheduler"
    name: Text = ""
    bio: Text = ""
    scopes: ClusterScopes = msgspec.field(default_factory=ClusterScopes)
    is_default: bool = False
    seed_peer_clusters: Tokens = msgspec.field(default_factory=list)
    load_limit: Limit = 0
    actor: Text = ""


class ClusterDeleted(Event, frozen=True, kw_only=True, tag="admin.cluster_deleted.v1"):
    """A scheduler or seed-peer cluster was deleted."""

    cluster: Token
    kind: ClusterKind = "scheduler"
    actor: Text = ""


class UserSaved(Event, frozen=True, kw_only=True, tag="admin.user_saved.v1"):
    """A user was created or changed (role, tenant, password, state).

    ``role`` is ``root`` or ``guest``; ``tenant`` empty means every tenant;
    ``password_hash`` is ``scrypt$n$r$p$salt$hash``, never the password.
    """

    user_id: Token
    email: Text = ""
    role: Role = "guest"
    tenant: OptToken = ""
    password_hash: Text
    state: UserState = "enabled"
    actor: Text = ""


class TokenIssued(Event, frozen=True, kw_only=True, tag="admin.token_issued.v1"):
    """A token was issued (``kind``: ``session`` at sign-in, or ``personal`` for a personal
    access token); only the sha256 of its secret part is kept."""

    token_id: Token
    user_id: Token
    name: Text = ""
    scopes: Texts = msgspec.field(default_factory=list)
    expires_at: Seconds
    token_hash: Text
    kind: TokenKind = "personal"


class TokenRevoked(Event, frozen=True, kw_only=True, tag="admin.token_revoked.v1"):
    """A token was revoked before its expiry (a sign-out, or a personal token withdrawn)."""

    token_id: Token
    user_id: Token
    actor: Text = ""


class TenantSaved(Event, frozen=True, kw_only=True, tag="admin.tenant_saved.v1"):
    """A tenant (Dragonfly's application) was created or changed; its tasks, jobs and peers
    are those whose ``application`` is ``tenant``."""

    tenant: Token
    url: Url = ""
    bio: Text = ""
    priority: Limit = 0
    actor: Text = ""


class TenantDeleted(Event, frozen=True, kw_only=True, tag="admin.tenant_deleted.v1"):
    """A tenant was deleted."""

    tenant: Token
    actor: Text = ""


class AuditRecorded(Event, frozen=True, kw_only=True, tag="admin.audit_recorded.v1"):
    """Someone changed something through the manager: who, what, on which target, outcome."""

    actor: Text
    action: Text
    target: Text = ""
    method: Text = ""
    path: Url = ""
    status: Limit = 0


AdminEvent = (
    ClusterSaved
    | ClusterDeleted
    | UserSaved
    | TokenIssued
    | TokenRevoked
    | TenantSaved
    | TenantDeleted
    | AuditRecorded
)
