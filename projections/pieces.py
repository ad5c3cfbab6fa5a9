"""Pieces per peer per minute: how many pieces and bytes came from the origin or from peers.

Aggregating at write time keeps the dashboards fast however many piece events there are.
"""

from __future__ import annotations

from collections.abc import Sequence

from damselfly.events.codec import AnyEvent
from damselfly.events.streams import TASKS_STREAM
from damselfly.events.tasks import PieceFailed, PieceFinished, singles
from damselfly.projections.model import ADD, Column, Patches, Projection, Table

PIECE_MINUTES = Table(
    "piece_minutes",
    key=(Column("minute", "TIMESTAMP"), Column("cluster", "VARCHAR"),
         Column("task_id", "VARCHAR"), Column("peer_id", "VARCHAR")),
    columns=(
        Column("pieces_from_origin", "INTEGER", ADD), Column("bytes_from_origin", "BIGINT", ADD),
        Column("pieces_from_peers", "INTEGER", ADD), Column("bytes_from_peers", "BIGINT", ADD),
        Column("failed_pieces", "INTEGER", ADD), Column("corrupt_pieces", "INTEGER", ADD),
        # Exact sums: a float's depend on how the events were batched, so a rebuild would
        # not give the rows the live projection made.
        Column("cost_ms", "DECIMAL(18,3)", ADD),
    ),
)


def fold(events: Sequence[AnyEvent]) -> list[Patches]:
    minutes = Patches(PIECE_MINUTES)
    # The hot path: every column here adds up, so sum piece events per key in plain lists
    # and hand each key to ``Patches`` once.
    sums: dict[tuple[float, str, str, str], list[float]] = {}
    for e in singles(events):
        match e:
            case PieceFinished():
                key = (e.at // 60 * 60, e.cluster, e.task_id, e.peer_id)
                acc = sums.get(key)
                if acc is None:
                    acc = sums[key] = [0, 0, 0, 0, 0, 0, 0.0]
                column = 2 if e.parent_id else 0
                acc[column] += 1
                acc[column + 1] += e.length
                acc[6] += round(e.cost_ms * 1000)  # whole microseconds: ints add exactly
            case PieceFailed():
                key = (e.at // 60 * 60, e.cluster, e.task_id, e.peer_id)
                acc = sums.get(key)
                if acc is None:
                    acc = sums[key] = [0, 0, 0, 0, 0, 0, 0.0]
                acc[4] += 1
                acc[5] += int(e.corrupt)
    for key, (po, bo, pp, bp, failed, corrupt, cost) in sums.items():
        minutes.put(key, pieces_from_origin=po, bytes_from_origin=bo, pieces_from_peers=pp,
                    bytes_from_peers=bp, failed_pieces=failed, corrupt_pieces=corrupt,
                    cost_ms=cost / 1000)
    return [minutes]


PROJECTION = Projection("pieces", (TASKS_STREAM,), (PIECE_MINUTES,), fold)
