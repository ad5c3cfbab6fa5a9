"""Which schedulers are alive, read from the NATS KV buckets they keep fresh.

Schedulers do not announce themselves in the event log. Each one heartbeats a membership
key ``<cluster>.<scheduler>`` and holds partition leases ``<cluster>-<partition>`` (see
``services.scheduler.lease``); both expire when it stops renewing them, so what the
buckets hold now is who is alive and which partitions each one owns.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from damselfly.events.streams import LEASE_BUCKET, MEMBER_BUCKET
from damselfly.events.subjects import safe_token


def group_schedulers(leases: dict[str, str], members: list[str]) -> list[dict[str, object]]:
    """One row per (cluster, scheduler) from ``{"<cluster>-<partition>": owner}`` and
    ``["<cluster>.<scheduler>"]``; a member owning nothing has no partitions. Pure."""
    owned: dict[tuple[str, str], list[int]] = {}
    for member in members:
        cluster, _, name = member.partition(".")
        owned.setdefault((cluster, name), [])
    for key, owner in leases.items():
        cluster, _, part = key.rpartition("-")
        if cluster and part.isdigit():
            owned.setdefault((cluster, safe_token(owner)), []).append(int(part))
    return [{"cluster": c, "scheduler": s, "partitions": sorted(p)}
            for (c, s), p in sorted(owned.items())]


async def _bucket(js: JetStreamContext, name: str) -> tuple[KeyValue | None, list[str]]:
    try:
        kv = await js.key_value(name)
        return kv, await kv.keys()
    except (BucketNotFoundError, NoKeysError):
        return None, []


async def live_schedulers(js: JetStreamContext) -> list[dict[str, object]]:
    """The schedulers alive now. Raises ``nats.errors.Error`` when NATS fails."""
    _, members = await _bucket(js, MEMBER_BUCKET)
    kv, keys = await _bucket(js, LEASE_BUCKET)
    leases: dict[str, str] = {}
    for key in keys:
        assert kv is not None
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            continue  # expired between listing and reading
        leases[key] = (entry.value or b"").decode()
    return group_schedulers(leases, members)
