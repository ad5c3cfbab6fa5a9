"""Who may publish and read what on the broker: one NATS user per role, with per-subject
permissions the server enforces, and the server's ``authorization`` block generated from them.

``damselfly up`` writes ``DIR/nats/auth.conf`` (the server's) and one credentials file per
role, ``DIR/creds/<role>.creds`` (``user:password``, 0600), and starts every service with
``DAMSELFLY_NATS_CREDS`` pointing at its role's file (``runtime.natsconn.CREDS_ENV``). The
roles (README, "Security model"):

- ``peer``: a daemon or seed peer. Publishes hosts' and peers' task events and job progress;
  reads decisions, jobs and config. Never decisions, config, admin events or job requests,
  and never reads the admin stream (password and token hashes).
- ``scheduler``: reads hosts, tasks and config; publishes decisions and ``HostLeft`` for
  hosts it declares dead; keeps its KV buckets.
- ``manager``: reads everything; publishes config, admin and job events; answers cluster
  searches. Like the scheduler it may bring the streams to their definition.
- ``jobs``: an external job publisher (Harbor-like, CI): job requests only.
- ``observer``: ``damselfly events tail/dump``, ``replay --from-stream``: reads the streams
  but the admin one, publishes nothing.
- ``admin``: ``damselfly up`` itself, which creates the streams: everything.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from damselfly.events.streams import ADMIN_STREAM

# Request/reply and the JetStream API a consumer of the log needs: stream info, consumers
# (create, next, info, delete), acks, flow control. ``_INBOX.>`` is where replies and pushed
# messages arrive.
_READ_LOG: Final = ("$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.NAMES",
                    "$JS.API.STREAM.MSG.GET.*", "$JS.API.DIRECT.GET.>", "$JS.API.CONSUMER.>",
                    "$JS.ACK.>", "$JS.FC.>")
_NO_ADMIN_STREAM: Final = tuple(f"$JS.API.{api}.{ADMIN_STREAM}{tail}" for api, tail in (
    ("CONSUMER.*", ""), ("CONSUMER.*", ".>"), ("CONSUMER.DURABLE.CREATE", ".>"),
    ("CONSUMER.MSG.NEXT", ".>"), ("STREAM.MSG.GET", ""), ("DIRECT.GET", ""),
    ("DIRECT.GET", ".>")))
_DEFINE_STREAMS: Final = ("$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.UPDATE.*")
_INBOX: Final = ("_INBOX.>",)


@dataclass(frozen=True)
class Role:
    publish: Sequence[str]
    subscribe: Sequence[str] = _INBOX
    deny_publish: Sequence[str] = ()
    deny_subscribe: Sequence[str] = ()


ROLES: Final[Mapping[str, Role]] = {
    "peer": Role(
        publish=(*_READ_LOG, "df.host.>", "df.task.>", "df.job.*.progressed.*",
                 "df.rpc.cluster_search"),
        subscribe=(*_INBOX, "df.sched.>", "df.job.>", "df.config.>", "df.host.*.*.left"),
        deny_publish=_NO_ADMIN_STREAM),
    "scheduler": Role(
        publish=(*_READ_LOG, *_DEFINE_STREAMS, "df.sched.>", "df.host.*.*.left", "$KV.>"),
        subscribe=(*_INBOX, "df.host.>", "df.task.>", "df.config.>", "df.sched.>"),
        deny_publish=_NO_ADMIN_STREAM),
    "manager": Role(
        publish=(*_READ_LOG, *_DEFINE_STREAMS, "df.config.>", "df.admin.>", "df.job.>",
                 "_INBOX.>"),  # answering a cluster search
        subscribe=(*_INBOX, "df.rpc.cluster_search", "df.>")),
    "jobs": Role(publish=("$JS.API.INFO", "$JS.API.STREAM.INFO.*", "df.job.*.preheat_requested",
                         "df.job.*.delete_task_requested", "df.job.*.get_task_requested")),
    "observer": Role(publish=_READ_LOG, subscribe=(*_INBOX, "df.>"),
                     deny_publish=_NO_ADMIN_STREAM, deny_subscribe=("df.admin.>",)),
    "admin": Role(publish=(">",), subscribe=(">",)),
}

def peer_of(host_id: str) -> Role:
    """The ``peer`` role held to one host: host and task events only under its own
    ``<host>`` token (``events.subjects``), so it cannot speak for another daemon; the
    consumers refuse an event whose peer is not the subject's (``codec.decode_delivered``)."""
    peer = ROLES["peer"]
    own = (f"df.host.*.{host_id}.>", f"df.task.*.*.*.{host_id}.>",
           f"df.job.*.progressed.{host_id}")
    return replace(peer, publish=tuple(p for p in peer.publish if p not in (
        "df.host.>", "df.task.>", "df.job.*.progressed.*")) + own,
        subscribe=tuple(s for s in peer.subscribe if s != "df.host.*.*.left")
        + (f"df.host.*.{host_id}.left",))  # a scheduler's word that it is dead


@dataclass
class Credentials:
    """Where ``write`` put the server's config and each role's credentials file."""

    config: Path
    files: dict[str, Path] = field(default_factory=dict)


def server_config(passwords: Mapping[str, str], roles: Mapping[str, Role]) -> str:
    """The ``authorization`` block of a ``nats-server`` config: a user per name in
    ``passwords``, with the permissions of its role in ``roles``."""
    users = []
    for role, password in passwords.items():
        r = roles[role]
        permissions = {
            "publish": {"allow": list(r.publish), **({"deny": list(r.deny_publish)}
                                                     if r.deny_publish else {})},
            "subscribe": {"allow": list(r.subscribe), **({"deny": list(r.deny_subscribe)}
                                                         if r.deny_subscribe else {})}}
        users.append({"user": role, "password": password, "permissions": permissions})
    # nats-server's config format reads JSON.
    return "authorization: " + json.dumps({"users": users}, indent=2) + "\n"


def write(directory: Path, hosts: Mapping[str, str] | None = None) -> Credentials:
    """The server config and one credentials file per role under ``directory`` (0600),
    plus one per daemon in ``hosts`` (its name → its host id) held to its own host
    (``peer_of``); an earlier run's passwords are kept so a restarted cluster keeps working."""
    creds_dir = directory / "creds"
    creds_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    roles = {**ROLES, **{name: peer_of(host) for name, host in (hosts or {}).items()}}
    passwords: dict[str, str] = {}
    out = Credentials(directory / "nats" / "auth.conf")
    for role in roles:
        path = creds_dir / f"{role}.creds"
        if not path.exists():
            write_private(path, f"{role}:{secrets.token_urlsafe(24)}\n")
        passwords[role] = path.read_text().strip().partition(":")[2]
        out.files[role] = path
    out.config.parent.mkdir(parents=True, exist_ok=True)
    write_private(out.config, server_config(passwords, roles), replace=True)
    return out


def write_private(path: Path, text: str, *, replace: bool = False) -> None:
    """Write ``text`` to a file only its owner can read (0600); a new file unless
    ``replace``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
