"""Cluster search over NATS request/reply: a starting peer asks which scheduler cluster it
belongs to, the manager answers from the clusters' scopes (``scopes.find_cluster``).

The messages and the asking side are in ``events.clustersearch``. The answer is
``default`` when no scope matches and no cluster is the default.
"""

from __future__ import annotations

import asyncio
import logging

import duckdb
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from damselfly.events.admin import ClusterScopes
from damselfly.events.clustersearch import FALLBACK, ClusterAnswer, ClusterQuery
from damselfly.events.subjects import CLUSTER_SEARCH
from damselfly.services.manager.control.scopes import Candidate, HostFacts, affinity, find_cluster
from damselfly.services.manager.reader import Reader

log = logging.getLogger("damselfly.manager.search")


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
    clusters = await candidates(reader)
    host = HostFacts(**msgspec.structs.asdict(query))
    found = find_cluster(clusters, host)
    if found is None:
        return ClusterAnswer(cluster=FALLBACK, matched=False)
    scopes = next(c.scopes for c in clusters if c.cluster == found)
    return ClusterAnswer(cluster=found, matched=affinity(host, scopes) > 0)


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

    sub = await nc.subscribe(CLUSTER_SEARCH, queue="damselfly-managers", cb=on_query)
    try:
        await stop.wait()
    finally:
        await sub.unsubscribe()
