"""Scheduling decisions, each addressed to one peer (or, for a seed trigger, one seed host).

Subjects: ``df.sched.<cluster>.<partition>.<peer or host>``. A decision's ``id`` is derived
from the event that triggered it, so a redelivered or replayed trigger is deduplicated.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from damselfly.events.base import Event
from damselfly.events.fields import (
    MAX_BATCH,
    MAX_LIST,
    Bitmap,
    ContentLength,
    Digests,
    EventId,
    Headers,
    Piece,
    PieceLength,
    TaskId,
    Text,
    Texts,
    Token,
    Tokens,
    Url,
)


class ParentInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a child needs to fetch from one parent without asking anyone.

    ``bitmap`` is the pieces the parent held when the decision was made, most significant
    bit first: piece ``i`` is held when ``bitmap[i // 8] & (0x80 >> (i % 8))``. ``grant``
    is the scheduler's signed leave for this child to fetch the task from this parent
    (``events/grants.py``); empty from a scheduler that has no key.
    """

    peer_id: Token
    host_id: Token
    upload_url: Url
    bitmap: Bitmap = b""
    seed: bool = False
    grant: Text = ""


class ParentsAssigned(Event, frozen=True, kw_only=True, tag="sched.parents_assigned.v1"):
    """The scheduler chose parents for a peer, with their bitmaps and the piece digests.

    ``source_peers`` are the peers that fetched this task from the origin: only their
    ``PieceFinished`` digests (and ``TaskMetadataReported``) are authoritative.
    ``piece_digests[i]`` is piece ``i``'s digest, ``""`` while no source has reported it.
    """

    cluster: Token
    task_id: TaskId
    peer_id: Token
    trigger_id: EventId
    parents: Annotated[list[ParentInfo], msgspec.Meta(max_length=MAX_LIST)]
    content_length: ContentLength = -1
    piece_length: PieceLength = 0
    piece_digests: Digests = msgspec.field(default_factory=list)
    source_peers: Tokens = msgspec.field(default_factory=list)


class BackToSourceOrdered(Event, frozen=True, kw_only=True, tag="sched.back_to_source_ordered.v1"):
    """The scheduler told a peer to fetch from the origin itself."""

    cluster: Token
    task_id: TaskId
    peer_id: Token
    trigger_id: EventId
    reason: str = ""


class SeedPeerTriggered(Event, frozen=True, kw_only=True, tag="sched.seed_peer_triggered.v1"):
    """The scheduler asked a seed host to fetch a task from the origin and serve the swarm."""

    cluster: Token
    task_id: TaskId
    host_id: Token
    trigger_id: EventId
    url: Url
    tag: Text = ""
    application: Text = ""
    piece_length: PieceLength = 0
    headers: Headers = msgspec.field(default_factory=dict)
    filtered_query_params: Texts = msgspec.field(default_factory=list)


class PeerQueued(Event, frozen=True, kw_only=True, tag="sched.peer_queued.v1"):
    """The scheduler holds a peer until a parent can serve it (a seed is fetching, or the
    task is at its back-to-source limit). The peer keeps waiting instead of timing out and
    going to the origin itself; it gets ``ParentsAssigned`` as soon as a holder has pieces."""

    cluster: Token
    task_id: TaskId
    peer_id: Token
    trigger_id: EventId
    reason: str = ""


class ScheduleFailed(Event, frozen=True, kw_only=True, tag="sched.schedule_failed.v1"):
    """The scheduler gave up on a peer (forbidden priority, retry limit, no source allowed)."""

    cluster: Token
    task_id: TaskId
    peer_id: Token
    trigger_id: EventId
    reason: str


class HeldPieces(msgspec.Struct, frozen=True, array_like=True):
    """One holder's new pieces in a ``HoldingsRelayed``, as a JSON array ``[peer_id,
    pieces, digests]``; ``digests`` (aligned with ``pieces``) only from a source peer."""

    peer_id: Token
    pieces: Annotated[list[Piece], msgspec.Meta(max_length=MAX_BATCH)]
    digests: Digests = msgspec.field(default_factory=list)


class HoldingsRelayed(Event, frozen=True, kw_only=True, tag="sched.holdings_relayed.v1"):
    """The pieces this peer's parents (and the task's source peers) reported since the last
    relay, gathered by the scheduler, which folds every report anyway: one event per child
    every ``relay.EVERY`` seconds instead of every parent's every report to every child
    that follows it. Not a decision: made on a timer, so replay leaves it out."""

    cluster: Token
    task_id: TaskId
    peer_id: Token
    holders: Annotated[list[HeldPieces], msgspec.Meta(max_length=MAX_LIST)]


SchedEvent = (
    ParentsAssigned | BackToSourceOrdered | SeedPeerTriggered | PeerQueued | ScheduleFailed
    | HoldingsRelayed
)
