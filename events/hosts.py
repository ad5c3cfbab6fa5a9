"""Host events: a daemon (peer or seed peer) joining, staying alive and leaving a cluster.

Subjects: ``df.host.<cluster>.<host>.{announced,keepalive,left}``.
"""

from __future__ import annotations

from typing import Final

from damselfly.events.base import Event
from damselfly.events.fields import Limit, Seconds, Text, Token, Url

KEEPALIVE_MISSES: Final = 6
"""A host that announced its keepalive ``interval`` is declared dead once this many of them
passed without one (at most the scheduler's ``--keepalive-timeout``): a seed peer keeps alive
every 2 s, so the children waiting for it hear within about 12 s that it is gone."""


def silence_limit(interval: float, ceiling: float) -> float:
    """How long a host with this keepalive ``interval`` (0: not said) may stay silent."""
    return min(ceiling, KEEPALIVE_MISSES * interval) if interval > 0 else ceiling


class HostAnnounced(Event, frozen=True, kw_only=True, tag="host.announced.v1"):
    """A host joined a cluster and said how it can be reached, what it can upload and every
    how many seconds it keeps alive (``interval``; 0 in logs from before it)."""

    cluster: Token
    host_id: Token
    hostname: Text
    ip: Text
    upload_url: Url
    seed: bool = False
    idc: Text = ""
    location: Text = ""
    upload_limit: Limit = 50
    interval: Seconds = 0.0


class HostKeepalive(Event, frozen=True, kw_only=True, tag="host.keepalive.v1"):
    """A host is still alive; carries its current upload load and ``interval``, the seconds
    until its next keepalive (0 in logs from before it: the scheduler's timeout applies)."""

    cluster: Token
    host_id: Token
    uploads_running: Limit = 0
    upload_limit: Limit = 50
    interval: Seconds = 0.0


class HostLeft(Event, frozen=True, kw_only=True, tag="host.left.v1"):
    """A host left the cluster (clean shutdown, or declared dead by a scheduler)."""

    cluster: Token
    host_id: Token
    reason: str = ""


HostEvent = HostAnnounced | HostKeepalive | HostLeft
