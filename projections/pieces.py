"""Pieces per peer per minute: how many pieces and bytes came from the origin or from peers.

Aggregating at write time keeps the dashboards fast however many piece events there are.
"""

from __future__ import annotations

from collections.abc import Sequence

from events.codec import AnyEvent
from events.tasks import PieceFailed, PieceFinished
from projections.model import ADD, Column, Patches, Projection, Table

PIECE_MINUTES = Table(
    "piece_minutes",
    key=(Column("minute", "TIMESTAMP"), Column("cluster", "VARCHAR"),
         Column("task_id", "VARCHAR"), Column("peer_id", "VARCHAR")),
    columns=(
        Column("pieces_from_origin", "INTEGER", ADD), Column("bytes_from_origin", "BIGINT", ADD),
        Column("pieces_from_peers", "INTEGER", ADD), Column("bytes_from_peers", "BIGINT", ADD),
        Column("failed_pieces", "INTEGER", ADD), Column("corrupt_pieces", "INTEGER", ADD),
        Column("cost_ms", "DOUBLE", ADD),
    ),
)


def fold(events: Sequence[AnyEvent]) -> list[Patches]:
    minutes = Patches(PIECE_MINUTES)
    put = minutes.put
    for e in events:
        match e:
            case PieceFinished():
                key = (e.at // 60 * 60, e.cluster, e.task_id, e.peer_id)
                if e.parent_id:
                    put(key, pieces_from_peers=1, bytes_from_peers=e.length, cost_ms=e.cost_ms)
                else:
                    put(key, pieces_from_origin=1, bytes_from_origin=e.length, cost_ms=e.cost_ms)
            case PieceFailed():
                put((e.at // 60 * 60, e.cluster, e.task_id, e.peer_id), failed_pieces=1,
                    corrupt_pieces=int(e.corrupt))
    return [minutes]


PROJECTION = Projection("pieces", ("DF_TASKS",), (PIECE_MINUTES,), fold)
