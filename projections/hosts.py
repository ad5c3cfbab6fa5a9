"""Hosts: every daemon (seed or normal) with its place, reachability and current load."""

from __future__ import annotations

from collections.abc import Sequence

from damselfly.events.codec import AnyEvent
from damselfly.events.hosts import HostAnnounced, HostKeepalive, HostLeft
from damselfly.events.streams import HOSTS_STREAM
from damselfly.projections.model import MAX, MIN, Column, Patches, Projection, Table

HOSTS = Table(
    "hosts",
    key=(Column("host_id", "VARCHAR"),),
    columns=(
        Column("cluster", "VARCHAR"), Column("hostname", "VARCHAR"), Column("ip", "VARCHAR"),
        Column("upload_url", "VARCHAR"), Column("seed", "BOOLEAN"), Column("idc", "VARCHAR"),
        Column("location", "VARCHAR"), Column("upload_limit", "INTEGER"),
        Column("uploads_running", "INTEGER"), Column("state", "VARCHAR"),
        Column("left_reason", "VARCHAR"), Column("announced_at", "TIMESTAMP", MIN),
        Column("last_keepalive", "TIMESTAMP", MAX),
    ),
    derived={"load": "uploads_running / NULLIF(upload_limit, 0)"},
)


def fold(events: Sequence[AnyEvent]) -> list[Patches]:
    hosts = Patches(HOSTS)
    for e in events:
        match e:
            case HostAnnounced():
                hosts.put((e.host_id,), cluster=e.cluster, hostname=e.hostname, ip=e.ip,
                          upload_url=e.upload_url, seed=e.seed, idc=e.idc, location=e.location,
                          upload_limit=e.upload_limit, state="alive", announced_at=e.at,
                          last_keepalive=e.at, uploads_running=0)
            case HostKeepalive():
                # a keepalive after a HostLeft (declared dead, then heard from) is alive again
                hosts.put((e.host_id,), cluster=e.cluster, uploads_running=e.uploads_running,
                          upload_limit=e.upload_limit, last_keepalive=e.at, state="alive")
            case HostLeft():
                hosts.put((e.host_id,), cluster=e.cluster, state="left", left_reason=e.reason,
                          uploads_running=0)
    return [hosts]


PROJECTION = Projection("hosts", (HOSTS_STREAM,), (HOSTS,), fold)
