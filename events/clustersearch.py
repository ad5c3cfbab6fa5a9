"""The cluster search's wire messages, shared by the asking peer and the answering manager.

A starting peer asks ``events.subjects.CLUSTER_SEARCH`` (core NATS request/reply,
outside every stream: a question is not a fact) which scheduler cluster its host belongs to.
"""

from __future__ import annotations

from typing import Final

import msgspec
from nats.aio.client import Client

from damselfly.events.subjects import CLUSTER_SEARCH

FALLBACK: Final = "default"
TIMEOUT: Final = 2.0


class ClusterQuery(msgspec.Struct, frozen=True, kw_only=True):
    """The facts of a host that cluster scopes match on."""

    hostname: str = ""
    ip: str = ""
    idc: str = ""
    location: str = ""


class ClusterAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The cluster a host belongs to; ``matched`` when the host fits its scopes (not for the
    default cluster, nor for ``default`` when there is none)."""

    cluster: str
    matched: bool
    error: str = ""


async def ask_cluster(nc: Client, query: ClusterQuery, timeout: float = TIMEOUT
                      ) -> ClusterAnswer:
    """Ask the manager which cluster a host belongs to. Raises ``nats.errors.TimeoutError``
    or ``nats.errors.NoRespondersError`` when no manager answers, ``msgspec.DecodeError``
    when the answer is not one."""
    reply = await nc.request(CLUSTER_SEARCH, msgspec.json.encode(query), timeout=timeout)
    return msgspec.json.decode(reply.data, type=ClusterAnswer)
