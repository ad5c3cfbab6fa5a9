"""Administration read models: clusters with their scopes, users, personal access tokens,
tenants, the audit trail, and which tenant each preheat job belongs to."""

from __future__ import annotations

from collections.abc import Sequence

from damselfly.events.admin import (
    AuditRecorded,
    ClusterDeleted,
    ClusterSaved,
    TenantDeleted,
    TenantSaved,
    TokenIssued,
    TokenRevoked,
    UserSaved,
)
from damselfly.events.codec import AnyEvent
from damselfly.events.jobs import PreheatRequested
from damselfly.events.streams import ADMIN_STREAM, JOBS_STREAM
from damselfly.projections.model import MAX, MIN, Column, Patches, Projection, Table

CLUSTERS = Table(
    "admin_clusters",
    key=(Column("kind", "VARCHAR"), Column("cluster", "VARCHAR")),
    columns=(
        Column("name", "VARCHAR"), Column("bio", "VARCHAR"), Column("idc", "VARCHAR[]"),
        Column("location", "VARCHAR[]"), Column("cidrs", "VARCHAR[]"),
        Column("hostnames", "VARCHAR[]"), Column("is_default", "BOOLEAN"),
        Column("seed_peer_clusters", "VARCHAR[]"), Column("load_limit", "INTEGER"),
        Column("state", "VARCHAR"), Column("created_at", "TIMESTAMP", MIN),
        Column("updated_at", "TIMESTAMP", MAX),
    ),
)

USERS = Table(
    "admin_users",
    key=(Column("user_id", "VARCHAR"),),
    columns=(
        Column("email", "VARCHAR"), Column("role", "VARCHAR"), Column("tenant", "VARCHAR"),
        Column("password_hash", "VARCHAR"), Column("state", "VARCHAR"),
        Column("created_at", "TIMESTAMP", MIN), Column("updated_at", "TIMESTAMP", MAX),
    ),
)

TOKENS = Table(
    "admin_tokens",
    key=(Column("token_id", "VARCHAR"),),
    columns=(
        Column("user_id", "VARCHAR"), Column("kind", "VARCHAR"), Column("name", "VARCHAR"),
        Column("scopes", "VARCHAR[]"),
        Column("expires_at", "TIMESTAMP"), Column("token_hash", "VARCHAR"),
        Column("state", "VARCHAR"), Column("created_at", "TIMESTAMP", MIN),
    ),
)

TENANTS = Table(
    "admin_tenants",
    key=(Column("tenant", "VARCHAR"),),
    columns=(
        Column("url", "VARCHAR"), Column("bio", "VARCHAR"), Column("priority", "INTEGER"),
        Column("state", "VARCHAR"), Column("created_at", "TIMESTAMP", MIN),
        Column("updated_at", "TIMESTAMP", MAX),
    ),
)

AUDIT = Table(
    "admin_audit",
    key=(Column("audit_id", "VARCHAR"),),
    columns=(
        Column("actor", "VARCHAR"), Column("action", "VARCHAR"), Column("target", "VARCHAR"),
        Column("method", "VARCHAR"), Column("path", "VARCHAR"), Column("status", "INTEGER"),
        Column("recorded_at", "TIMESTAMP"),
    ),
)

JOB_TENANTS = Table(
    "admin_job_tenants",
    key=(Column("job_id", "VARCHAR"),),
    columns=(Column("tenant", "VARCHAR"),),
)


def fold(events: Sequence[AnyEvent]) -> list[Patches]:
    clusters, users, tokens = Patches(CLUSTERS), Patches(USERS), Patches(TOKENS)
    tenants, audit, job_tenants = Patches(TENANTS), Patches(AUDIT), Patches(JOB_TENANTS)
    for e in events:
        match e:
            case ClusterSaved():
                s = e.scopes
                clusters.put((e.kind, e.cluster), name=e.name or e.cluster, bio=e.bio, idc=s.idc,
                             location=s.location, cidrs=s.cidrs, hostnames=s.hostnames,
                             is_default=e.is_default, seed_peer_clusters=e.seed_peer_clusters,
                             load_limit=e.load_limit, state="active", created_at=e.at,
                             updated_at=e.at)
            case ClusterDeleted():
                clusters.put((e.kind, e.cluster), state="deleted", updated_at=e.at)
            case UserSaved():
                users.put((e.user_id,), email=e.email, role=e.role, tenant=e.tenant,
                          password_hash=e.password_hash, state=e.state, created_at=e.at,
                          updated_at=e.at)
            case TokenIssued():
                tokens.put((e.token_id,), user_id=e.user_id, kind=e.kind, name=e.name,
                           scopes=e.scopes,
                           expires_at=e.expires_at, token_hash=e.token_hash, state="active",
                           created_at=e.at)
            case TokenRevoked():
                tokens.put((e.token_id,), state="revoked")
            case TenantSaved():
                tenants.put((e.tenant,), url=e.url, bio=e.bio, priority=e.priority,
                            state="active", created_at=e.at, updated_at=e.at)
            case TenantDeleted():
                tenants.put((e.tenant,), state="deleted", updated_at=e.at)
            case AuditRecorded():
                audit.put((e.id,), actor=e.actor, action=e.action, target=e.target,
                          method=e.method, path=e.path, status=e.status, recorded_at=e.at)
            case PreheatRequested():
                job_tenants.put((e.job_id,), tenant=e.application)
    return [clusters, users, tokens, tenants, audit, job_tenants]


PROJECTION = Projection("admin", (ADMIN_STREAM, JOBS_STREAM),
                        (CLUSTERS, USERS, TOKENS, TENANTS, AUDIT, JOB_TENANTS), fold)
