"""The shell that feeds the log into DuckDB: one consumer per stream, one writer.

Each stream's consumer starts just after the lowest watermark of the projections reading it
(``store.start_seq``), so the watermarks in DuckDB — not the server — decide where to
resume. Batches are applied one at a time in a worker thread, so the event loop (and the
HTTP readers) never wait on DuckDB. A rebuild bumps a generation: consumers of the old
generation drop what they hold and reopen from the reset watermarks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Final

import duckdb
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from events.bus import Consumer, Delivered, dead_letter
from projections import by_name, store

log = logging.getLogger("damselfly.projections")


async def _fetch(consumer: Consumer, timeout: float = 1.0) -> list[Delivered]:
    try:
        return await consumer.fetch(timeout)
    except TimeoutError:  # nats-py 2.16 may raise asyncio's timeout, which fetch lets through
        return []


async def _gather(consumer: Consumer, max_events: int) -> list[Delivered]:
    """One fetch when caught up; while behind, up to ``max_events`` for one transaction
    (DuckDB's cost is per statement, whatever its size, so big batches make replays fast)."""
    items = await _fetch(consumer)
    while items and len(items) < max_events and items[-1].msg.metadata.num_pending > 0:
        more = await _fetch(consumer, 0.2)
        if not more:
            break
        items += more
    return items


# Errors in the data rather than the machine (a value out of a column's range, say): the
# same event fails on every retry, so it is dead-lettered instead of retried.
POISON: Final = (duckdb.DataError, duckdb.IntegrityError)


async def apply_and_ack(js: JetStreamContext, con: duckdb.DuckDBPyConnection, stream: str,
                        items: Sequence[Delivered]) -> int:
    """Apply a batch in one transaction and ack it. If an event in it can never be applied,
    apply the events one by one instead: the culprit is dead-lettered and stepped over, the
    rest land. Raises ``duckdb.Error`` for other failures (nothing of the batch is kept)."""
    try:
        applied = await asyncio.to_thread(store.apply_batch, con, stream,
                                          [(item.seq, item.event) for item in items])
    except POISON as exc:
        if len(items) > 1:
            return sum([await apply_and_ack(js, con, stream, [item]) for item in items])
        (item,) = items
        await asyncio.to_thread(store.skip, con, stream, item.seq)
        await dead_letter(js, item.msg, f"cannot be projected: {type(exc).__name__}: {exc}")
        return 0
    for item in items:
        await item.msg.ack()
    return applied


class Projector:
    """Keeps every projection up to date with the streams until stopped."""

    def __init__(self, js: JetStreamContext, con: duckdb.DuckDBPyConnection, *,
                 batch: int = 4096, max_events: int = 16384, retry_delay: float = 1.0) -> None:
        self._js = js
        self._con = con
        self._batch = batch
        self._max_events = max_events
        self._lock = asyncio.Lock()
        self._generation = 0
        self._retry_delay = retry_delay
        self.applied = 0

    async def _apply(self, stream: str, generation: int, items: Sequence[Delivered]) -> bool:
        """Apply a batch unless a rebuild happened since it was read; then ack it."""
        async with self._lock:
            if generation != self._generation:
                return False  # read before a rebuild; the new consumer reads it again
            self.applied += await apply_and_ack(self._js, self._con, stream, items)
        return True

    async def _follow(self, stream: str, stop: asyncio.Event) -> None:
        # A failed batch is never nak'd: a redelivery after later batches would fall below
        # the watermark. The consumer is reopened after the watermark instead.
        while not stop.is_set():
            async with self._lock:
                generation = self._generation
                first = await asyncio.to_thread(store.start_seq, self._con, stream)
            consumer = Consumer(self._js, stream=stream, start_seq=first, batch=self._batch)
            log.info("projecting %s from sequence %d", stream, first)
            try:
                while not stop.is_set() and generation == self._generation:
                    items = await _gather(consumer, self._max_events)
                    if items and not await self._apply(stream, generation, items):
                        break
            except (duckdb.Error, NatsError, OSError) as exc:
                log.error("projecting %s failed, resuming after the watermark: %s", stream, exc)
                await asyncio.sleep(self._retry_delay)
            finally:
                await consumer.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow every stream until ``stop`` is set."""
        async with asyncio.TaskGroup() as group:
            for stream in store.streams():
                group.create_task(self._follow(stream, stop))

    async def rebuild(self, names: list[str] | None = None) -> list[str]:
        """Drop the named projections (all by default) and replay them from the start of
        the log. Raises ``ValueError`` for an unknown name."""
        chosen = by_name(names)
        async with self._lock:
            await asyncio.to_thread(store.reset, self._con, chosen)
            self._generation += 1
        return [p.name for p in chosen]


async def replay(js: JetStreamContext, con: duckdb.DuckDBPyConnection, *,
                 batch: int = 4096, max_events: int = 16384) -> int:
    """Apply everything stored so far, stream by stream, then return how many (projection,
    event) pairs were applied. For a manager that is not running (``projections rebuild
    --db``)."""
    applied = 0
    for stream in store.streams():
        first = await asyncio.to_thread(store.start_seq, con, stream)
        consumer = Consumer(js, stream=stream, start_seq=first, batch=batch)
        try:
            while items := await _gather(consumer, max_events):
                applied += await apply_and_ack(js, con, stream, items)
                if items[-1].msg.metadata.num_pending == 0:
                    break
        finally:
            await consumer.close()
    return applied
