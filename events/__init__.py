"""Damselfly's event catalogue: every control fact of the system, versioned and typed."""

from damselfly.events.admin import (
    AuditRecorded,
    ClusterDeleted,
    ClusterSaved,
    ClusterScopes,
    TenantDeleted,
    TenantSaved,
    TokenIssued,
    TokenRevoked,
    UserSaved,
)
from damselfly.events.base import Event
from damselfly.events.codec import AnyEvent, EventDecodeError, decode, encode, event_types
from damselfly.events.config import ClusterConfig, ClusterConfigSet
from damselfly.events.hosts import HostAnnounced, HostKeepalive, HostLeft
from damselfly.events.jobs import (
    DeleteTaskRequested,
    GetTaskRequested,
    JobFailed,
    JobProgressed,
    JobStarted,
    JobSucceeded,
    PreheatRequested,
)
from damselfly.events.sched import (
    BackToSourceOrdered,
    ParentInfo,
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

__all__ = [
    "AuditRecorded", "ClusterDeleted", "ClusterSaved", "ClusterScopes", "TenantDeleted",
    "TenantSaved", "TokenIssued", "TokenRevoked", "UserSaved",
    "AnyEvent", "BackToSourceOrdered", "BackToSourceStarted", "ClusterConfig",
    "ClusterConfigSet", "DeleteTaskRequested", "Event", "EventDecodeError", "GetTaskRequested",
    "HostAnnounced", "HostKeepalive", "HostLeft", "JobFailed", "JobProgressed", "JobStarted",
    "JobSucceeded", "ParentInfo", "ParentsAssigned", "PeerFailed", "PeerLeft", "PeerQueued",
    "PeerRegistered",
    "PeerStarted", "PeerSucceeded", "PieceFailed", "PieceFinished", "PiecesFinished",
    "PreheatRequested",
    "RescheduleRequested", "ScheduleFailed", "SeedPeerTriggered", "TaskMetadataReported",
    "decode", "encode", "event_types",
]
