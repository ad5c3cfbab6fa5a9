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
from typing import Final, NamedTuple

from events.admin import (
    AuditRecorded,
    ClusterDeleted,
    ClusterSaved,
    TenantDeleted,
    TenantSaved,
    TokenIssued,
    TokenRevoked,
    UserSaved,
)
from events.base import Event
from events.config import ClusterConfigSet
from events.hosts import HostAnnounced, HostKeepalive, HostLeft
from events.jobs import (
    DeleteTaskRequested,
    GetTaskRequested,
    JobFailed,
    JobProgressed,
    JobStarted,
    JobSucceeded,
    PreheatRequested,
)
from events.sched import (
    BackToSourceOrdered,
    ParentsAssigned,
    PeerQueued,
    ScheduleFailed,
    SeedPeerTriggered,
)
from events.tasks import (
    BackToSourceStarted,
    PeerFailed,
    PeerLeft,
    PeerRegistered,
    PeerStarted,
    PeerSucceeded,
    PieceFailed,
    PieceFinished,
    RescheduleRequested,
    TaskMetadataReported,
)

PARTITIONS: Final = 16
_TOKEN: Final = re.compile(r"^[A-Za-z0-9_\-]+$")


class SubjectError(ValueError):
    """A subject token is empty or holds a character NATS reserves (``.``, ``*``, ``>``, space)."""


def token(value: str) -> str:
    if not _TOKEN.match(value):
        raise SubjectError(f"not a valid subject token: {value!r}")
    return value


def safe_token(value: str) -> str:
    """Turn any string (a hostname, say) into a valid token."""
    cleaned = re.sub(r"[^A-Za-z0-9_\-]", "_", value)
    return cleaned or "_"


def partition(task_id: str) -> int:
    """The partition a task belongs to; task ids are hex digests."""
    return int(task_id[:8], 16) % PARTITIONS


def host_subject(cluster: str, host_id: str, name: str) -> str:
    return f"df.host.{token(cluster)}.{token(host_id)}.{name}"


def task_subject(cluster: str, task_id: str, peer_id: str, name: str) -> str:
    return f"df.task.{token(cluster)}.{partition(task_id)}.{token(task_id)}.{token(peer_id)}.{name}"


def task_filter(cluster: str = "*", part: int | str = "*", task_id: str = "*", peer_id: str = "*",
                name: str = "*") -> str:
    """A subscription filter over task events; ``*`` for any token."""
    return f"df.task.{cluster}.{part}.{task_id}.{peer_id}.{name}"


def sched_subject(cluster: str, task_id: str, addressee: str) -> str:
    return f"df.sched.{token(cluster)}.{partition(task_id)}.{token(addressee)}"


def job_subject(job_id: str, name: str) -> str:
    return f"df.job.{token(job_id)}.{name}"


def config_subject(scope: str) -> str:
    return f"df.config.{scope}"


def admin_subject(family: str, key: str, name: str) -> str:
    return f"df.admin.{family}.{token(key)}.{name}"


def dlq_subject(stream: str) -> str:
    return f"df.dlq.{token(stream)}"


class TaskSubject(NamedTuple):
    cluster: str
    partition: int
    task_id: str
    peer_id: str
    name: str


def parse_task_subject(subject: str) -> TaskSubject:
    parts = subject.split(".")
    if len(parts) != 7 or parts[:2] != ["df", "task"]:
        raise SubjectError(f"not a task subject: {subject!r}")
    return TaskSubject(parts[2], int(parts[3]), parts[4], parts[5], parts[6])


def subject_for(event: Event) -> str:
    """The one subject an event is published on."""
    match event:
        case HostAnnounced() | HostKeepalive() | HostLeft():
            return host_subject(event.cluster, event.host_id, _name(event))
        case (PeerRegistered() | PeerStarted() | BackToSourceStarted() | TaskMetadataReported()
              | PieceFinished() | PieceFailed() | PeerSucceeded() | PeerFailed() | PeerLeft()
              | RescheduleRequested()):
            return task_subject(event.cluster, event.task_id, event.peer_id, _name(event))
        case ParentsAssigned() | BackToSourceOrdered() | PeerQueued() | ScheduleFailed():
            return sched_subject(event.cluster, event.task_id, event.peer_id)
        case SeedPeerTriggered():
            return sched_subject(event.cluster, event.task_id, event.host_id)
        case (PreheatRequested() | JobStarted() | JobProgressed() | JobSucceeded() | JobFailed()
              | DeleteTaskRequested() | GetTaskRequested()):
            return job_subject(event.job_id, _name(event))
        case ClusterConfigSet():
            return config_subject(f"cluster.{token(event.cluster)}")
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
    """The subject's last token: the middle of the tag (``peer.piece_finished.v1`` → ``piece_finished``)."""
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag.split(".")[1]
