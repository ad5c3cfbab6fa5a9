"""Cluster search over NATS request/reply: a starting peer asks which scheduler cluster it
belongs to, the manager answers from the clusters' scopes (``scopes.find_cluster``).

Requests go to ``df.rpc.cluster_search`` (core NATS, outside every stream: a question is not
a fact). The answer is ``default`` when no scope matches and no cluster is the default.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import duckdb
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from events.admin import ClusterScopes
from services.manager.control.scopes import Candidate, HostFacts, find_cluster
from services.manager.reader import Reader

log = logging.getLogger("damselfly.manager.search")

SUBJECT: Final = "df.rpc.cluster_search"
FALLBACK: Final = "default"


class ClusterQuery(msgspec.Struct, frozen=True, kw_only=True):
    hostname: str = ""
    ip: str = ""
    idc: str = ""
    location: str = ""


class ClusterAnswer(msgspec.Struct, frozen=True, kw_only=True):
    cluster: str
    matched: bool
    error: str = ""


async def candidates(reader: Reader) -> list[Candidate]:
    rows = await reader.records(
        "SELECT cluster, idc, location, cidrs, hostnames, is_default FROM admin_clusters "
        "WHERE kind = 'scheduler' AND state = 'active'")
    return [Candidate(str(r["cluster"]), msgspec.convert(r, ClusterScopes, strict=False),
                      bool(r["is_default"])) for r in rows]


async def answer(reader: Reader, data: bytes) -> ClusterAnswer:
    try:
        query = msgspec.json.decode(data, type=ClusterQuery)
    except msgspec.DecodeError as exc:
        return ClusterAnswer(cluster=FALLBACK, matched=False, error=f"bad query: {exc}")
    found = find_cluster(await candidates(reader), HostFacts(**msgspec.structs.asdict(query)))
    return ClusterAnswer(cluster=found or FALLBACK, matched=found is not None)


async def serve_search(nc: Client, reader: Reader, stop: asyncio.Event) -> None:
    """Answer cluster searches until ``stop`` is set."""
    async def on_query(msg: Msg) -> None:
        try:
            reply = await answer(reader, msg.data)
        except duckdb.Error as exc:  # the asker falls back instead of waiting for a timeout
            log.error("cluster search failed: %s", exc)
            reply = ClusterAnswer(cluster=FALLBACK, matched=False, error="manager cannot read "
                                  "its clusters")
        await msg.respond(msgspec.json.encode(reply))

    sub = await nc.subscribe(SUBJECT, queue="damselfly-managers", cb=on_query)
    try:
        await stop.wait()
    finally:
        await sub.unsubscribe()


async def ask_cluster(nc: Client, query: ClusterQuery, timeout: float = 2.0) -> ClusterAnswer:
    """Ask the manager which cluster a host belongs to. Raises ``nats.errors.TimeoutError``
    or ``nats.errors.NoRespondersError`` when no manager answers."""
    reply = await nc.request(SUBJECT, msgspec.json.encode(query), timeout=timeout)
    return msgspec.json.decode(reply.data, type=ClusterAnswer)
