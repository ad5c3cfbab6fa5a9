"""Jobs (preheat, delete-task, get-task, sync-peers) and their outcome on each host they
targeted (for sync-peers: every task each host holds)."""

from __future__ import annotations

from collections.abc import Sequence

from damselfly.events.codec import AnyEvent
from damselfly.events.jobs import (
    DeleteTaskRequested,
    GetTaskRequested,
    JobFailed,
    JobProgressed,
    JobStarted,
    JobSucceeded,
    PreheatRequested,
    SyncPeersRequested,
)
from damselfly.events.streams import JOBS_STREAM
from damselfly.projections.model import MAX, MIN, Column, Patches, Projection, Table

JOBS = Table(
    "jobs",
    key=(Column("job_id", "VARCHAR"),),
    columns=(
        Column("kind", "VARCHAR"), Column("url", "VARCHAR"), Column("urls", "VARCHAR[]"),
        Column("task_id", "VARCHAR"),
        Column("preheat_type", "VARCHAR"), Column("scope", "VARCHAR"),
        Column("clusters", "VARCHAR[]"), Column("state", "VARCHAR"),
        Column("reason", "VARCHAR"), Column("task_ids", "VARCHAR[]"),
        Column("host_count", "INTEGER"), Column("requested_at", "TIMESTAMP", MIN),
        Column("started_at", "TIMESTAMP"), Column("finished_at", "TIMESTAMP"),
        Column("updated_at", "TIMESTAMP", MAX),
    ),
)

JOB_HOSTS = Table(
    "job_hosts",
    key=(Column("job_id", "VARCHAR"), Column("host_id", "VARCHAR"), Column("task_id", "VARCHAR")),
    columns=(Column("state", "VARCHAR"), Column("reason", "VARCHAR"),
             Column("updated_at", "TIMESTAMP", MAX)),
)


def fold(events: Sequence[AnyEvent]) -> list[Patches]:
    jobs = Patches(JOBS)
    hosts = Patches(JOB_HOSTS)
    for e in events:
        match e:
            case PreheatRequested():
                jobs.put((e.job_id,), kind="preheat", url=e.url, urls=[e.url, *e.urls],
                         preheat_type=e.kind,
                         scope=e.scope, clusters=e.scheduler_cluster_ids, state="pending",
                         requested_at=e.at, updated_at=e.at)
            case DeleteTaskRequested() | GetTaskRequested():
                kind = "delete_task" if isinstance(e, DeleteTaskRequested) else "get_task"
                jobs.put((e.job_id,), kind=kind, task_id=e.task_id,
                         clusters=e.scheduler_cluster_ids, state="pending", requested_at=e.at,
                         updated_at=e.at)
            case SyncPeersRequested():
                jobs.put((e.job_id,), kind="sync_peers", clusters=e.scheduler_cluster_ids,
                         state="pending", requested_at=e.at, updated_at=e.at)
            case JobStarted():
                jobs.put((e.job_id,), state="running", task_ids=e.task_ids,
                         host_count=len(e.host_ids), started_at=e.at, updated_at=e.at)
            case JobProgressed():
                hosts.put((e.job_id, e.host_id, e.task_id), state=e.state, reason=e.reason,
                          updated_at=e.at)
                jobs.put((e.job_id,), updated_at=e.at)
            case JobSucceeded():
                jobs.put((e.job_id,), state="succeeded", finished_at=e.at, updated_at=e.at)
            case JobFailed():
                jobs.put((e.job_id,), state="failed", reason=e.reason, finished_at=e.at,
                         updated_at=e.at)
    return [jobs, hosts]


PROJECTION = Projection("jobs", (JOBS_STREAM,), (JOBS, JOB_HOSTS), fold)
