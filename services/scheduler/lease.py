"""Partition leases in a NATS KV bucket: at most one scheduler owns a partition at a time.

A lease is a key ``<cluster>-<partition>`` holding the owner's id. Taking it is ``create``
(fails while someone holds it); keeping it is ``update`` against the revision we wrote, every
third of the TTL; the bucket's TTL removes the key of an owner that stopped renewing, so a
killed owner's partitions are free again after at most one TTL.

Members of a cluster say they are alive the same way (``<cluster>.<scheduler>`` in another
bucket with the same TTL), so that each can keep to its fair share of the partitions.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue

from damselfly.events.streams import replicas
from damselfly.events.subjects import safe_token

log = logging.getLogger("damselfly.scheduler.lease")



async def open_bucket(js: JetStreamContext, bucket: str, ttl: float | None = None) -> KeyValue:
    """The bucket, created when missing (with the streams' replicas). Raises
    ``nats.js.errors.APIError``."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(bucket=bucket, ttl=ttl, history=1,
                                         replicas=replicas() or 1)
    except BadRequestError:  # created concurrently by another scheduler
        return await js.key_value(bucket)


def lease_key(cluster: str, part: int) -> str:
    return f"{cluster}-{part}"


class Leases:
    """Take, renew and give back partition leases for one owner."""

    def __init__(self, kv: KeyValue, owner: str) -> None:
        self._kv = kv
        self._owner = owner.encode()

    async def take(self, key: str) -> int | None:
        """The lease's revision, or None when another owner holds it."""
        try:
            return await self._kv.create(key, self._owner)
        except KeyWrongLastSequenceError:
            return None

    async def renew(self, key: str, revision: int) -> int | None:
        """The new revision, or None when the lease was lost (expired and taken)."""
        try:
            return await self._kv.update(key, self._owner, last=revision)
        except KeyWrongLastSequenceError:
            log.warning("lost lease %s", key)
            return None

    async def give_back(self, key: str, revision: int) -> None:
        """Free the lease now, so that a standby takes over without waiting for the TTL."""
        try:
            await self._kv.delete(key, last=revision)
        except KeyWrongLastSequenceError:
            pass


class Members:
    """The live schedulers of one cluster."""

    def __init__(self, kv: KeyValue, cluster: str, member: str) -> None:
        self._kv = kv
        self._cluster = cluster
        self._key = f"{cluster}.{safe_token(member)}"

    async def heartbeat(self) -> int:
        """Say this member is alive; returns how many members are (at least 1)."""
        await self._kv.put(self._key, b"")
        try:
            keys = await self._kv.keys()  # nats-py 2.16 returns one key when given filters
        except NoKeysError:
            keys = []
        return max(1, sum(k.startswith(f"{self._cluster}.") for k in keys))

    async def leave(self) -> None:
        await self._kv.delete(self._key)
