"""Scheduler clusters and seed-peer clusters (create, read, update, delete: scopes and
config), and the schedulers and seed peers in them with their liveness.

Writes become ``ClusterSaved``/``ClusterDeleted`` (DF_ADMIN) and ``ClusterConfigSet``
(DF_CONFIG, which the schedulers apply); reads come from the projections.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Annotated, Final, Literal

import msgspec
from fastapi import APIRouter, HTTPException, Query, Request
from nats.errors import Error as NatsError
from pydantic import BaseModel, ConfigDict, Field

from damselfly.events.admin import ClusterDeleted, ClusterKind, ClusterSaved, ClusterScopes
from damselfly.events.clustersearch import FALLBACK
from damselfly.events.config import DEFAULT_WEIGHTS, ClusterConfig, ClusterConfigSet
from damselfly.events.ids import new_id
from damselfly.services.manager.control.auth import Caller, allow, create_once, reader_of, record
from damselfly.services.manager.control.scopes import valid_scopes
from damselfly.services.manager.reader import Reader
from damselfly.services.manager.schedulers import live_schedulers

router = APIRouter(prefix="/api/v1", tags=["clusters"])

ID: Final = r"^[A-Za-z0-9_\-]{1,64}$"
KEEPALIVE_TIMEOUT: Final = 30.0  # a host silent this long (six keepalives) shows inactive
KINDS: Final[dict[ClusterKind, str]] = {"scheduler": "scheduler-clusters",
                                       "seed_peer": "seed-peer-clusters"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Scopes(Strict):
    idc: list[str] = []
    location: list[str] = []
    cidrs: list[str] = []
    hostnames: list[str] = []


class Config(Strict):
    """Scheduler limits and evaluator weights; fields left out keep their current value."""

    candidate_parent_limit: Annotated[int, Field(ge=1, le=20)] | None = None
    filter_parent_limit: Annotated[int, Field(ge=1, le=1000)] | None = None
    back_to_source_limit: Annotated[int, Field(ge=0, le=1000)] | None = None
    retry_limit: Annotated[int, Field(ge=0, le=100)] | None = None
    weights: dict[str, Annotated[float, Field(ge=0, le=1)]] | None = None


class ClusterChange(Strict):
    """A cluster's fields; on update, those left out keep their value. ``scopes``,
    ``config`` and ``seed_peer_cluster_ids`` are a scheduler cluster's, ``load_limit`` a
    seed-peer cluster's."""

    name: str | None = None
    bio: str | None = None
    scopes: Scopes | None = None
    is_default: bool | None = None
    seed_peer_cluster_ids: list[Annotated[str, Field(pattern=ID)]] | None = None
    load_limit: Annotated[int, Field(ge=0)] | None = None
    config: Config | None = None


class ClusterCreate(ClusterChange):
    id: Annotated[str, Field(pattern=ID)]


async def _cluster(reader: Reader, kind: ClusterKind, cluster: str) -> dict[str, object] | None:
    rows = await reader.records("SELECT * FROM admin_clusters WHERE kind = ? AND cluster = ? "
                                "AND state = 'active'", [kind, cluster])
    return rows[0] if rows else None


async def _config(reader: Reader, cluster: str) -> ClusterConfig:
    rows = await reader.records("SELECT * FROM cluster_configs WHERE cluster = ?", [cluster])
    if not rows:
        return ClusterConfig()
    row = dict(rows[0])
    row["weights"] = msgspec.json.decode(str(row["weights"]))
    return msgspec.convert(row, ClusterConfig, strict=False)


def _merged_config(current: ClusterConfig, change: Config) -> ClusterConfig:
    values = change.model_dump(exclude_none=True)
    unknown = sorted(set(values.get("weights", {})) - set(DEFAULT_WEIGHTS))
    if unknown:
        raise HTTPException(422, f"unknown evaluator weights {', '.join(unknown)}; "
                                 f"known: {', '.join(sorted(DEFAULT_WEIGHTS))}")
    return msgspec.structs.replace(current, **values)


SCOPE_FIELDS: Final = ("idc", "location", "cidrs", "hostnames")
SAVED_FIELDS: Final = ("name", "bio", "is_default", "seed_peer_clusters", "load_limit")


class ClusterSavedFields(msgspec.Struct, kw_only=True):
    """What a change may set on a ``ClusterSaved``, typed as the event types it."""

    name: str = ""
    bio: str = ""
    scopes: ClusterScopes = msgspec.field(default_factory=ClusterScopes)
    is_default: bool = False
    seed_peer_clusters: list[str] = msgspec.field(default_factory=list)
    load_limit: int = 0


def _saved(kind: ClusterKind, cluster: str, current: dict[str, object], change: ClusterChange,
           actor: str) -> ClusterSaved:
    """The cluster as ``change`` leaves it: given fields replace the stored ones."""
    given = change.model_dump(exclude_none=True, exclude={"id", "config", "scopes"})
    if "seed_peer_cluster_ids" in given:
        given["seed_peer_clusters"] = given.pop("seed_peer_cluster_ids")
    fields = {**{k: current[k] for k in SAVED_FIELDS if current.get(k) is not None}, **given}
    scopes = (change.scopes.model_dump() if change.scopes is not None
              else {k: current[k] for k in SCOPE_FIELDS if current.get(k) is not None})
    saved = msgspec.convert({**fields, "scopes": scopes}, ClusterSavedFields)
    problems = valid_scopes(saved.scopes)
    if problems:
        raise HTTPException(422, "; ".join(problems))
    return ClusterSaved(id=new_id(), at=time.time(), cluster=cluster, kind=kind,
                        name=saved.name or cluster, bio=saved.bio, scopes=saved.scopes,
                        is_default=saved.is_default, seed_peer_clusters=saved.seed_peer_clusters,
                        load_limit=saved.load_limit, actor=actor)


def _view(saved: ClusterSaved, config: ClusterConfig | None) -> dict[str, object]:
    out: dict[str, object] = {"id": saved.cluster, "number": cluster_number(saved.cluster),
                              **msgspec.to_builtins(saved)}
    for private in ("type", "cluster", "actor"):
        out.pop(private, None)
    if config is not None:
        out["config"] = msgspec.to_builtins(config)
    return out


def cluster_number(cluster: str) -> int:
    """Dragonfly's integer id for a cluster: 1 for ``default`` (Dragonfly's first cluster,
    what Harbor's ``cluster_ids: [1]`` means), else the first 52 bits of its name's sha256
    (exact in JSON everywhere, and the same after any replay)."""
    if cluster == FALLBACK:
        return 1
    return int(hashlib.sha256(cluster.encode()).hexdigest()[:13], 16)


def by_number(given: str, clusters: Iterable[str]) -> str:
    """The cluster ``given`` names: itself, or the one whose integer id it is."""
    if given.isdecimal():
        for cluster in clusters:
            if cluster != given and cluster_number(cluster) == int(given):
                return cluster
    return given


async def known_clusters(reader: Reader) -> set[str]:
    """Scheduler clusters that exist: created through the API or announced by a host."""
    rows = await reader.records(
        "SELECT cluster FROM admin_clusters WHERE kind = 'scheduler' AND state = 'active' "
        "UNION SELECT cluster FROM hosts")
    return {str(r["cluster"]) for r in rows}


async def _check_links(reader: Reader, change: ClusterChange) -> None:
    wanted = set(change.seed_peer_cluster_ids or ())
    if not wanted:
        return
    rows = await reader.records("SELECT cluster FROM admin_clusters WHERE kind = 'seed_peer' "
                                "AND state = 'active'")
    unknown = sorted(wanted - {str(r["cluster"]) for r in rows})
    if unknown:
        raise HTTPException(404, f"unknown seed-peer clusters: {', '.join(unknown)}")


def _routes(kind: ClusterKind, path: str) -> None:
    noun = kind.replace("_", "-") + " cluster"
    is_scheduler = kind == "scheduler"

    async def create(request: Request, who: Caller, body: ClusterCreate) -> dict[str, object]:
        allow(who, scope="cluster", write=True, everywhere=True)
        reader = reader_of(request)
        await _check_links(reader, body)
        saved = _saved(kind, body.id, {}, body, who.user_id)
        events: list[ClusterSaved | ClusterConfigSet] = [saved]
        config = None
        if is_scheduler:
            config = _merged_config(await _config(reader, body.id), body.config or Config())
            events.append(ClusterConfigSet(id=new_id(), at=saved.at, cluster=body.id,
                                           config=config))
        await create_once(request, who, f"{kind}_cluster.create", body.id, *events,
                          deleted=ClusterDeleted,
                          taken=f"{noun} {body.id} exists; update it with PATCH")
        return _view(saved, config)

    async def list_all(request: Request, who: Caller) -> list[dict[str, object]]:
        allow(who, scope="cluster")
        rows = await reader_of(request).records(
            "SELECT * FROM admin_clusters WHERE kind = ? AND state = 'active' ORDER BY cluster",
            [kind])
        return [{"number": cluster_number(str(r["cluster"])), **r} for r in rows]

    async def named(reader: Reader, given: str) -> str:
        """A cluster in a path is its name or its integer id (``number`` in the answers)."""
        if not given.isdecimal():
            return given
        rows = await reader.records("SELECT cluster FROM admin_clusters WHERE kind = ? "
                                    "AND state = 'active'", [kind])
        return by_number(given, (str(r["cluster"]) for r in rows))

    async def get_one(request: Request, who: Caller, cluster: str) -> dict[str, object]:
        allow(who, scope="cluster")
        reader = reader_of(request)
        cluster = await named(reader, cluster)
        row = await _cluster(reader, kind, cluster)
        if row is None:
            raise HTTPException(404, f"no {noun} {cluster}")
        if is_scheduler:
            row["config"] = msgspec.to_builtins(await _config(reader, cluster))
        return {"number": cluster_number(cluster), **row}

    async def update(request: Request, who: Caller, cluster: str, body: ClusterChange
                     ) -> dict[str, object]:
        allow(who, scope="cluster", write=True, everywhere=True)
        reader = reader_of(request)
        cluster = await named(reader, cluster)
        current = await _cluster(reader, kind, cluster)
        if current is None:
            raise HTTPException(404, f"no {noun} {cluster}")
        await _check_links(reader, body)
        saved = _saved(kind, cluster, current, body, who.user_id)
        events: list[ClusterSaved | ClusterConfigSet] = [saved]
        config = None
        if is_scheduler:
            config = await _config(reader, cluster)
            if body.config is not None:
                config = _merged_config(config, body.config)
                events.append(ClusterConfigSet(id=new_id(), at=saved.at, cluster=cluster,
                                               config=config))
        await record(request, who, f"{kind}_cluster.update", cluster, *events)
        return _view(saved, config)

    async def delete(request: Request, who: Caller, cluster: str) -> dict[str, object]:
        allow(who, scope="cluster", write=True, everywhere=True)
        cluster = await named(reader_of(request), cluster)
        if await _cluster(reader_of(request), kind, cluster) is None:
            raise HTTPException(404, f"no {noun} {cluster}")
        await record(request, who, f"{kind}_cluster.delete", cluster,
                     ClusterDeleted(id=new_id(), at=time.time(), cluster=cluster, kind=kind,
                                    actor=who.user_id))
        return {"id": cluster, "deleted": True}

    router.add_api_route(f"/{path}", create, methods=["POST"], status_code=201,
                         summary=f"Create a {noun}")
    router.add_api_route(f"/{path}", list_all, methods=["GET"], summary=f"List {noun}s")
    router.add_api_route(f"/{path}/{{cluster}}", get_one, methods=["GET"],
                         summary=f"Get a {noun}")
    router.add_api_route(f"/{path}/{{cluster}}", update, methods=["PATCH"],
                         summary=f"Update a {noun}")
    router.add_api_route(f"/{path}/{{cluster}}", delete, methods=["DELETE"],
                         summary=f"Delete a {noun}")


for _kind, _path in KINDS.items():
    _routes(_kind, _path)


@router.get("/seed-peers")
async def seed_peers(request: Request, who: Caller, cluster: str = "",
                     state: Literal["", "active", "inactive"] = "",
                     limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, object]]:
    """Seed peers, ``active`` while their keepalives keep coming, else ``inactive``."""
    allow(who, scope="cluster")
    return await _hosts(reader_of(request), True, cluster, state, limit)


@router.get("/cluster-peers")
async def cluster_peers(request: Request, who: Caller, cluster: str = "",
                        state: Literal["", "active", "inactive"] = "",
                        limit: Annotated[int, Query(ge=1, le=1000)] = 200
                        ) -> list[dict[str, object]]:
    """Normal peers (hosts that are not seed peers), active or inactive by keepalive."""
    allow(who, scope="cluster")
    return await _hosts(reader_of(request), False, cluster, state, limit)


async def _hosts(reader: Reader, seed: bool, cluster: str, state: str, limit: int
                 ) -> list[dict[str, object]]:
    return await reader.records(
        "SELECT * FROM (SELECT *, CASE WHEN hosts.state = 'alive' AND last_keepalive >= "
        "make_timestamp(CAST(? * 1000000 AS BIGINT)) THEN 'active' ELSE 'inactive' END "
        "AS liveness FROM hosts WHERE seed = ? AND (? = '' OR cluster = ?)) "
        "WHERE ? = '' OR liveness = ? ORDER BY cluster, host_id LIMIT ?",
        [time.time() - KEEPALIVE_TIMEOUT, seed, cluster, cluster, state, state, limit])


@router.get("/schedulers")
async def schedulers(request: Request, who: Caller) -> list[dict[str, object]]:
    """The schedulers alive now (their membership heartbeats), with the partitions each
    owns; a stopped scheduler drops out when its heartbeat expires."""
    allow(who, scope="cluster")
    try:
        live = await live_schedulers(request.app.state.js)
    except (NatsError, TimeoutError) as exc:
        raise HTTPException(503, f"cannot read scheduler heartbeats: {exc}") from None
    return [{**s, "state": "active"} for s in live]
