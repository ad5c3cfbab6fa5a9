"""Host events: a daemon (peer or seed peer) joining, staying alive and leaving a cluster.

Subjects: ``df.host.<cluster>.<host>.{announced,keepalive,left}``.
"""

from __future__ import annotations

from damselfly.events.base import Event
from damselfly.events.fields import Limit, Text, Token, Url


class HostAnnounced(Event, frozen=True, kw_only=True, tag="host.announced.v1"):
    """A host joined a cluster and said how it can be reached and what it can upload."""

    cluster: Token
    host_id: Token
    hostname: Text
    ip: Text
    upload_url: Url
    seed: bool = False
    idc: Text = ""
    location: Text = ""
    upload_limit: Limit = 50


class HostKeepalive(Event, frozen=True, kw_only=True, tag="host.keepalive.v1"):
    """A host is still alive; carries its current upload load."""

    cluster: Token
    host_id: Token
    uploads_running: Limit = 0
    upload_limit: Limit = 50


class HostLeft(Event, frozen=True, kw_only=True, tag="host.left.v1"):
    """A host left the cluster (clean shutdown, or declared dead by a scheduler)."""

    cluster: Token
    host_id: Token
    reason: str = ""


HostEvent = HostAnnounced | HostKeepalive | HostLeft
