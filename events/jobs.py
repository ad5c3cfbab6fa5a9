"""Jobs: preheat, delete-task and get-task, requested by the manager or any external system.

Subjects: ``df.job.<job>.<name>``; a host's progress ``df.job.<job>.progressed.<host>``.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from damselfly.events.base import Event
from damselfly.events.fields import (
    Headers,
    PieceLength,
    Result,
    Sealed,
    TaskId,
    TaskIds,
    Text,
    Texts,
    Token,
    Tokens,
    Url,
    Urls,
)

PreheatKind = Literal["file", "image"]
PreheatScope = Literal["single_seed_peer", "all_seed_peers", "all_peers"]
HostJobState = Literal["running", "succeeded", "failed"]
"""Where one host's part of a job stands."""


class PreheatRequested(Event, frozen=True, kw_only=True, tag="job.preheat_requested.v1"):
    """Someone asked the swarm to fetch a file or an image before anyone needs it.

    ``kind`` is ``file`` or ``image``; ``scope`` is ``single_seed_peer``, ``all_seed_peers``
    or ``all_peers``. ``urls`` are further files (or manifests) of the same job, each preheated
    like ``url`` (Dragonfly's ``args.urls``). Credentials are never here in clear:
    ``sealed_credentials`` is sealed for the manager (see ``events.secrets``).
    """

    job_id: Token
    url: Url
    urls: Urls = msgspec.field(default_factory=list)
    kind: PreheatKind = "file"
    scope: PreheatScope = "single_seed_peer"
    tag: Text = ""
    application: Text = ""
    platform: Text = ""
    piece_length: PieceLength = 0
    headers: Headers = msgspec.field(default_factory=dict)
    filtered_query_params: Texts = msgspec.field(default_factory=list)
    scheduler_cluster_ids: Texts = msgspec.field(default_factory=list)
    sealed_credentials: Sealed = ""


class JobStarted(Event, frozen=True, kw_only=True, tag="job.started.v1"):
    """A job's work began: the tasks it expanded to and the hosts it targets."""

    job_id: Token
    task_ids: TaskIds = msgspec.field(default_factory=list)
    host_ids: Tokens = msgspec.field(default_factory=list)


class JobProgressed(Event, frozen=True, kw_only=True, tag="job.progressed.v1"):
    """One host's part of a job changed state (``running``, ``succeeded``, ``failed``)."""

    job_id: Token
    host_id: Token
    task_id: TaskId
    state: HostJobState
    reason: str = ""


class JobSucceeded(Event, frozen=True, kw_only=True, tag="job.succeeded.v1"):
    """A job finished on every host it targeted."""

    job_id: Token
    result: Result = msgspec.field(default_factory=dict)


class JobFailed(Event, frozen=True, kw_only=True, tag="job.failed.v1"):
    """A job failed; ``reason`` says why in one line."""

    job_id: Token
    reason: str


class DeleteTaskRequested(Event, frozen=True, kw_only=True, tag="job.delete_task_requested.v1"):
    """Someone asked every peer (of the given clusters) to drop a task."""

    job_id: Token
    task_id: TaskId
    scheduler_cluster_ids: Texts = msgspec.field(default_factory=list)


class GetTaskRequested(Event, frozen=True, kw_only=True, tag="job.get_task_requested.v1"):
    """Someone asked which peers hold a task."""

    job_id: Token
    task_id: TaskId
    scheduler_cluster_ids: Texts = msgspec.field(default_factory=list)


class SyncPeersRequested(Event, frozen=True, kw_only=True, tag="job.sync_peers_requested.v1"):
    """Someone asked every peer (of the given clusters) which tasks it holds: a census of
    the swarm, each holding answered as a ``JobProgressed`` (Dragonfly's ``sync_peers``)."""

    job_id: Token
    scheduler_cluster_ids: Texts = msgspec.field(default_factory=list)


JobEvent = (
    PreheatRequested
    | JobStarted
    | JobProgressed
    | JobSucceeded
    | JobFailed
    | DeleteTaskRequested
    | GetTaskRequested
    | SyncPeersRequested
)
