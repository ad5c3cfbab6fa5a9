"""Which schedulers are alive, read from their partition leases.

Schedulers do not announce themselves in the event log; each one holds leases in a NATS KV
bucket (``services.scheduler.lease``), renewed every third of their TTL, so the leases held
right now are the live schedulers and the partitions each one owns.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError, NoKeysError

from services.scheduler.lease import LEASE_BUCKET


def group_leases(leases: dict[str, str]) -> list[dict[str, object]]:
    """``{"<cluster>-<partition>": owner}`` as one row per (cluster, scheduler). Pure."""
    owned: dict[tuple[str, str], list[int]] = {}
    for key, owner in leases.items():
        cluster, _, part = key.rpartition("-")
        if cluster and part.isdigit():
            owned.setdefault((cluster, owner), []).append(int(part))
    return [{"cluster": c, "scheduler": o, "partitions": sorted(p)}
            for (c, o), p in sorted(owned.items())]


async def live_schedulers(js: JetStreamContext) -> list[dict[str, object]]:
    """The schedulers holding leases now. Raises ``nats.errors.Error`` when NATS fails."""
    try:
        kv = await js.key_value(LEASE_BUCKET)
        keys = await kv.keys()
    except (BucketNotFoundError, NoKeysError):
        return []
    leases: dict[str, str] = {}
    for key in keys:
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            continue  # expired between listing and reading
        leases[key] = (entry.value or b"").decode()
    return group_leases(leases)
