"""Tasks: one row per task with its URL, shape, how many peers took part, and its state."""

from __future__ import annotations

from collections.abc import Sequence

from damselfly.events.codec import AnyEvent
from damselfly.events.streams import TASKS_STREAM
from damselfly.events.tasks import PeerFailed, PeerRegistered, PeerSucceeded, TaskMetadataReported
from damselfly.projections.model import ADD, MAX, MIN, Column, Patches, Projection, Table

TASKS = Table(
    "tasks",
    key=(Column("task_id", "VARCHAR"),),
    columns=(
        Column("cluster", "VARCHAR"), Column("url", "VARCHAR"), Column("tag", "VARCHAR"),
        Column("application", "VARCHAR"), Column("content_length", "BIGINT"),
        Column("piece_length", "BIGINT"), Column("piece_count", "INTEGER"),
        Column("digest", "VARCHAR"), Column("peers", "INTEGER", ADD),
        Column("succeeded_peers", "INTEGER", ADD), Column("failed_peers", "INTEGER", ADD),
        Column("created_at", "TIMESTAMP", MIN), Column("updated_at", "TIMESTAMP", MAX),
    ),
    derived={"state": "CASE WHEN succeeded_peers > 0 THEN 'succeeded' "
                      "WHEN peers > 0 AND failed_peers >= peers THEN 'failed' "
                      "ELSE 'running' END"},
)


def fold(events: Sequence[AnyEvent]) -> list[Patches]:
    tasks = Patches(TASKS)
    for e in events:
        match e:
            case PeerRegistered():
                tasks.put((e.task_id,), cluster=e.cluster, url=e.url, tag=e.tag,
                          application=e.application, peers=1, created_at=e.at, updated_at=e.at)
            case TaskMetadataReported():
                tasks.put((e.task_id,), cluster=e.cluster, content_length=e.content_length,
                          piece_length=e.piece_length, piece_count=e.piece_count,
                          digest=e.digest or None, updated_at=e.at)
            case PeerSucceeded():
                tasks.put((e.task_id,), cluster=e.cluster, content_length=e.content_length,
                          piece_count=e.piece_count, succeeded_peers=1, updated_at=e.at)
            case PeerFailed():
                tasks.put((e.task_id,), cluster=e.cluster, failed_peers=1, updated_at=e.at)
    return [tasks]


PROJECTION = Projection("tasks", (TASKS_STREAM,), (TASKS,), fold)
