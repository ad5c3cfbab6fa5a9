"""Host events: a daemon (peer or seed peer) joining, staying alive and leaving a cluster.

Subjects: ``df.host.<cluster>.<host>.{announced,keepalive,left}``.
"""

from __future__ import annotations

from damselfly.events.base import Event


class HostAnnounced(Event, frozen=True, kw_only=True, tag="host.announced.v1"):
    """A host joined a cluster and said how it can be reached and what it can upload."""

    cluster: str
    host_id: str
    hostname: str
    ip: str
    upload_url: str
    seed: bool = False
    idc: str = ""
    location: str = ""
    upload_limit: int = 50


class HostKeepalive(Event, frozen=True, kw_only=True, tag="host.keepalive.v1"):
    """A host is still alive; carries its current upload load."""

    cluster: str
    host_id: str
    uploads_running: int = 0
    upload_limit: int = 50


class HostLeft(Event, frozen=True, kw_only=True, tag="host.left.v1"):
    """A host left the cluster (clean shutdown, or declared dead by a scheduler)."""

    cluster: str
    host_id: str
    reason: str = ""


HostEvent = HostAnnounced | HostKeepalive | HostLeft
