"""Subject builders and parsers. Pure: no connection needed.

The family comes before the cluster so that no two streams' subjects overlap
(``df.<c>.host.>`` would overlap ``df.job.>`` for a cluster named ``job``).

| stream      | subjects                                        |
|-------------|-------------------------------------------------|
| DF_HOSTS    | df.host.<c>.<host>.{announced,keepalive,left}   |
| DF_TASKS    | df.task.<c>.<p>.<task>.<peer>.<name>            |
| DF_SCHED    | df.sched.<c>.<p>.<peer or host>                 |
| DF_JOBS     | df.job.<job>.<name>                             |
| DF_CONFIG   | df.config.<scope>                               |
| DF_ADMIN    | df.admin.<family>.<key>.<name>                  |
| DF_DLQ      | df.dlq.<stream>                                 |
"""

from __future__ import annotations

import re
from typing import Final

from damselfly.events.admin import (
    AuditRecorded,
    ClusterDeleted,
    ClusterSaved,
    TenantDeleted,
    TenantSaved,
    TokenIssued,
    TokenRevoked,
    UserSaved,
)
from damselfly.events.base import Event, tag_of
from damselfly.events.config import ClusterConfigSet
from damselfly.events.fields import TOKEN_PATTERN
from damselfly.events.hosts import HostAnnounced, HostKeepalive, HostLeft
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
from damselfly.events.sched import (
    BackToSourceOrdered,
    HoldingsRelayed,
    ParentsAssigned,
    PeerQueued,
    ScheduleFailed,
    SeedPeerTriggered,
)
from damselfly.events.tasks import (
    BackToSourceStarted,
    PeerFailed,
    PeerLeft,
    PeerRegistered,
    PeerStarted,
    PeerSucceeded,
    PieceFailed,
    PieceFinished,
    PiecesFinished,
    RescheduleRequested,
    TaskMetadataReported,
)

PARTITIONS: Final = 16
ALL: Final = "df.>"
"""Every subject of every stream (``damselfly events tail``'s default)."""
CLUSTER_SEARCH: Final = "df.rpc.cluster_search"
"""Core NATS request/reply, outside every stream: a question is not a fact."""
_TOKEN: Final = re.compile(TOKEN_PATTERN)


class SubjectError(ValueError):
    """A subject token is empty or holds a character NATS reserves (``.``, ``*``, ``>``, space)."""


def token(value: str) -> str:
    if not _TOKEN.match(value):
        raise SubjectError(f"not a valid subject token: {value!r}")
    return value


def safe_token(value: str) -> str:
    """Turn any string (a hostname, say) into a valid token."""
    cleaned = re.sub(r"[^A-Za-z0-9_\-]", "_", value)[:100]
    return cleaned or "_"


def partition(task_id: str) -> int:
    """The partition a task belongs to; task ids are hex digests."""
    return int(task_id[:8], 16) % PARTITIONS


def host_subject(cluster: str, host_id: str, name: str) -> str:
    return f"df.host.{token(cluster)}.{token(host_id)}.{name}"


def host_filter(cluster: str, host_id: str = "*", name: str = "*") -> str:
    """A subscription filter over host events; ``*`` for any token."""
    return f"df.host.{cluster}.{host_id}.{name}"


def host_of(peer_id: str) -> str:
    """The host a peer runs on: a peer id is ``<host_id>-<8 hex>`` (``downloader``); an id
    with nothing before its last ``-`` is its own host, so the token is never empty."""
    return peer_id.rpartition("-")[0] or peer_id


def task_subject(cluster: str, task_id: str, peer_id: str, name: str) -> str:
    """``df.task.<cluster>.<partition>.<task>.<host>.<peer>.<name>``: the host token lets
    the broker hold each daemon to its own host's subjects (``launcher.natsauth``)."""
    return (f"df.task.{token(cluster)}.{partition(task_id)}.{token(task_id)}."
            f"{token(host_of(peer_id))}.{token(peer_id)}.{name}")


def task_filter(cluster: str = "*", part: int | str = "*", task_id: str = "*", peer_id: str = "*",
                name: str = "*") -> str:
    """A subscription filter over task events; ``*`` for any token. A whole partition is
    ``>``, which also matches the subjects written before they named the host."""
    if task_id == peer_id == name == "*":
        return f"df.task.{cluster}.{part}.>"
    host = "*" if peer_id == "*" else host_of(peer_id)
    return f"df.task.{cluster}.{part}.{task_id}.{host}.{peer_id}.{name}"


def sched_subject(cluster: str, task_id: str, addressee: str) -> str:
    return f"df.sched.{token(cluster)}.{partition(task_id)}.{token(addressee)}"


def sched_filter(cluster: str, part: int | str = "*", addressee: str = "*") -> str:
    """A subscription filter over decisions; ``*`` for any token."""
    return f"df.sched.{cluster}.{part}.{addressee}"


def job_subject(job_id: str, name: str) -> str:
    return f"df.job.{token(job_id)}.{name}"


def job_progress_subject(job_id: str, host_id: str) -> str:
    """One host's progress on a job: the host is a token of its own, so the broker can hold
    a daemon to its own host's progress (``JobProgressed`` once used ``job_subject``)."""
    return f"df.job.{token(job_id)}.progressed.{token(host_id)}"


def job_filter(name: str = "*") -> str:
    """Every job's events of one kind (``preheat_requested``, say)."""
    return f"df.job.*.{name}"


def config_subject(scope: str) -> str:
    return f"df.config.{scope}"


def cluster_config_subject(cluster: str) -> str:
    return config_subject(f"cluster.{token(cluster)}")


def admin_subject(family: str, key: str, name: str) -> str:
    return f"df.admin.{family}.{token(key)}.{name}"


def dlq_subject(stream: str) -> str:
    return f"df.dlq.{token(stream)}"


def subject_for(event: Event) -> str:
    """The one subject an event is published on."""
    match event:
        case HostAnnounced() | HostKeepalive() | HostLeft():
            return host_subject(event.cluster, event.host_id, _name(event))
        case (PeerRegistered() | PeerStarted() | BackToSourceStarted() | TaskMetadataReported()
              | PieceFinished() | PiecesFinished() | PieceFailed() | PeerSucceeded()
              | PeerFailed() | PeerLeft() | RescheduleRequested()):
            return task_subject(event.cluster, event.task_id, event.peer_id, _name(event))
        case (ParentsAssigned() | BackToSourceOrdered() | PeerQueued() | ScheduleFailed()
              | HoldingsRelayed()):
            return sched_subject(event.cluster, event.task_id, event.peer_id)
        case SeedPeerTriggered():
            return sched_subject(event.cluster, event.task_id, event.host_id)
        case JobProgressed():
            return job_progress_subject(event.job_id, event.host_id)
        case (PreheatRequested() | JobStarted() | JobSucceeded() | JobFailed()
              | DeleteTaskRequested() | GetTaskRequested() | SyncPeersRequested()):
            return job_subject(event.job_id, _name(event))
        case ClusterConfigSet():
            return cluster_config_subject(event.cluster)
        case ClusterSaved() | ClusterDeleted():
            return admin_subject(f"{event.kind}_cluster", event.cluster, _name(event))
        case UserSaved():
            return admin_subject("user", event.user_id, _name(event))
        case TokenIssued() | TokenRevoked():
            return admin_subject("token", event.token_id, _name(event))
        case TenantSaved() | TenantDeleted():
            return admin_subject("tenant", event.tenant, _name(event))
        case AuditRecorded():
            return admin_subject("audit", safe_token(event.actor), _name(event))
    raise TypeError(f"no subject for {type(event).__name__}")


def _name(event: Event) -> str:
    return name_of(type(event))


def name_of(kind: type[Event]) -> str:
    """The subject's last token for an event type: the middle of its tag
    (``task.piece_finished.v1`` → ``piece_finished``)."""
    return tag_of(kind).split(".")[1]
