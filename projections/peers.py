"""Peers per task: each download's state, bytes from the origin and from peers, duration."""

from __future__ import annotations

from collections.abc import Sequence

from damselfly.events.codec import AnyEvent
from damselfly.events.streams import TASKS_STREAM
from damselfly.events.tasks import (
    BackToSourceStarted,
    PeerFailed,
    PeerLeft,
    PeerRegistered,
    PeerStarted,
    PeerSucceeded,
    PieceFailed,
    PieceFinished,
    RescheduleRequested,
    singles,
)
from damselfly.projections.model import ADD, MAX, MIN, Column, Patches, Projection, Table

PEERS = Table(
    "peers",
    key=(Column("task_id", "VARCHAR"), Column("peer_id", "VARCHAR")),
    columns=(
        Column("cluster", "VARCHAR"), Column("host_id", "VARCHAR"), Column("priority", "INTEGER"),
        Column("state", "VARCHAR"), Column("back_to_source", "BOOLEAN"),
        Column("reason", "VARCHAR"), Column("content_length", "BIGINT"),
        Column("pieces", "INTEGER", ADD), Column("failed_pieces", "INTEGER", ADD),
        Column("bytes_from_origin", "BIGINT", ADD), Column("bytes_from_peers", "BIGINT", ADD),
        Column("reschedules", "INTEGER", ADD), Column("registered_at", "TIMESTAMP", MIN),
        Column("updated_at", "TIMESTAMP", MAX), Column("finished_at", "TIMESTAMP"),
    ),
    derived={"duration_ms": "epoch_ms(finished_at) - epoch_ms(registered_at)"},
)


def fold(events: Sequence[AnyEvent]) -> list[Patches]:
    peers = Patches(PEERS)
    put = peers.put
    # Piece events only add up and move ``updated_at`` forward, which commutes with every
    # other event, so they are summed in plain lists and merged once per peer at the end.
    pieces: dict[tuple[str, str], list[float]] = {}
    for e in singles(events):
        match e:
            case PieceFinished():
                acc = pieces.get((e.task_id, e.peer_id))
                if acc is None:
                    acc = pieces[(e.task_id, e.peer_id)] = [0, 0, 0, 0, e.at]
                acc[0] += 1
                acc[2 if e.parent_id else 1] += e.length
                acc[4] = max(acc[4], e.at)
            case PieceFailed():
                acc = pieces.get((e.task_id, e.peer_id))
                if acc is None:
                    acc = pieces[(e.task_id, e.peer_id)] = [0, 0, 0, 0, e.at]
                acc[3] += 1
                acc[4] = max(acc[4], e.at)
            case PeerRegistered():
                put((e.task_id, e.peer_id), cluster=e.cluster, host_id=e.host_id,
                    priority=e.priority, state="registered", registered_at=e.at, updated_at=e.at)
            case PeerStarted():
                put((e.task_id, e.peer_id), cluster=e.cluster, state="running", updated_at=e.at)
            case BackToSourceStarted():
                put((e.task_id, e.peer_id), cluster=e.cluster, state="back_to_source",
                    back_to_source=True, reason=e.reason or None, updated_at=e.at)
            case RescheduleRequested():
                put((e.task_id, e.peer_id), cluster=e.cluster, reschedules=1, updated_at=e.at)
            case PeerSucceeded():
                put((e.task_id, e.peer_id), cluster=e.cluster, state="succeeded",
                    content_length=e.content_length, finished_at=e.at, updated_at=e.at)
            case PeerFailed():
                put((e.task_id, e.peer_id), cluster=e.cluster, state="failed", reason=e.reason,
                    finished_at=e.at, updated_at=e.at)
            case PeerLeft():
                put((e.task_id, e.peer_id), cluster=e.cluster, state="left", updated_at=e.at)
    for key, (count, origin, from_peers, failed, last) in pieces.items():
        put(key, pieces=count, bytes_from_origin=origin, bytes_from_peers=from_peers,
            failed_pieces=failed, updated_at=last)
    return [peers]


PROJECTION = Projection("peers", (TASKS_STREAM,), (PEERS,), fold)
