"""Downloads: one row per finished or failed download, with what it cost and why it failed."""

from __future__ import annotations

from collections.abc import Sequence

from damselfly.events.codec import AnyEvent
from damselfly.events.streams import TASKS_STREAM
from damselfly.events.tasks import PeerFailed, PeerSucceeded
from damselfly.projections.model import Column, Patches, Projection, Table

DOWNLOADS = Table(
    "downloads",
    key=(Column("task_id", "VARCHAR"), Column("peer_id", "VARCHAR")),
    columns=(
        Column("cluster", "VARCHAR"), Column("ok", "BOOLEAN"), Column("reason", "VARCHAR"),
        Column("content_length", "BIGINT"), Column("piece_count", "INTEGER"),
        Column("bytes_from_origin", "BIGINT"), Column("bytes_from_peers", "BIGINT"),
        Column("cost_ms", "DOUBLE"), Column("finished_at", "TIMESTAMP"),
    ),
)


def fold(events: Sequence[AnyEvent]) -> list[Patches]:
    downloads = Patches(DOWNLOADS)
    for e in events:
        match e:
            case PeerSucceeded():
                downloads.put((e.task_id, e.peer_id), cluster=e.cluster, ok=True, reason="",
                              content_length=e.content_length, piece_count=e.piece_count,
                              bytes_from_origin=e.bytes_from_origin,
                              bytes_from_peers=e.bytes_from_peers, cost_ms=e.cost_ms,
                              finished_at=e.at)
            case PeerFailed():
                downloads.put((e.task_id, e.peer_id), cluster=e.cluster, ok=False,
                              reason=e.reason, finished_at=e.at)
    return [downloads]


PROJECTION = Projection("downloads", (TASKS_STREAM,), (DOWNLOADS,), fold)
