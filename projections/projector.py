"""The shell that feeds the log into DuckDB: one consumer per stream, one writer.

Each stream's consumer starts just after the lowest watermark of the projections reading it
(``store.start_seq``), so the watermarks in DuckDB — not the server — decide where to
resume. ``Consumer.run_batches`` does the consuming; batches are applied one at a time in a
worker thread, so the event loop (and the HTTP readers) never wait on DuckDB. A rebuild
halts every consumer: what they hold is dropped, and they reopen from the reset watermarks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from typing import Final

import anyio
import duckdb
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from damselfly.events.bus import Consumer, ConsumerStats, Delivered, PoisonEvent
from damselfly.projections import by_name, store

log = logging.getLogger("damselfly.projections")

# Errors in the data rather than the machine (a value out of a column's range, say): the
# same event fails on every retry, so it is dead-lettered instead of retried.
POISON: Final = (duckdb.DataError, duckdb.IntegrityError)


class Projector:
    """Keeps every projection up to date with the streams until stopped.

    ``batch`` is the size of one fetch; while behind, up to ``max_events`` are gathered
    into one transaction (DuckDB's cost is per statement, whatever its size).
    """

    def __init__(self, js: JetStreamContext, con: duckdb.DuckDBPyConnection, *,
                 batch: int = 4096, max_events: int = 16384, retry_delay: float = 1.0) -> None:
        self._js = js
        self._con = con
        self._batch = batch
        self._max_events = max_events
        self._lock = asyncio.Lock()
        # Set to end every open consumer (on a rebuild or a stop), then replaced.
        self._halt = asyncio.Event()
        self._retry_delay = retry_delay
        self.applied = 0
        self.stats: dict[str, ConsumerStats] = {}  # per stream, across reopened consumers

    async def _apply(self, stream: str, halt: asyncio.Event, items: Sequence[Delivered]) -> None:
        """Apply a batch and its watermarks in one transaction, unless a rebuild happened
        since it was read. Raises ``PoisonEvent`` when an event in it can never be applied,
        ``duckdb.Error`` for other failures (nothing of the batch is kept either way)."""
        async with self._lock:
            if halt.is_set():
                return  # read before a rebuild; the reopened consumer reads it again
            try:
                self.applied += await asyncio.to_thread(
                    store.apply_batch, self._con, stream, [(i.seq, i.event) for i in items])
            except POISON as exc:
                raise PoisonEvent(f"cannot be projected: {type(exc).__name__}: {exc}") from exc

    async def _skip(self, stream: str, halt: asyncio.Event, seq: int) -> None:
        """Step the watermarks over a dead-lettered event."""
        async with self._lock:
            if not halt.is_set():
                await asyncio.to_thread(store.skip, self._con, stream, seq)

    async def _consume(self, stream: str, *, drain: bool = False) -> None:
        """Project ``stream`` from just after its watermarks until halted (or, with
        ``drain``, caught up). Raises ``duckdb.Error``, ``nats.errors.Error``, ``OSError``."""
        async with self._lock:
            halt = self._halt
            first = await asyncio.to_thread(store.start_seq, self._con, stream)
        log.info("projecting %s from sequence %d", stream, first)
        consumer = Consumer(self._js, stream=stream, start_seq=first, batch=self._batch,
                            stats=self.stats.setdefault(stream, ConsumerStats()))
        await consumer.run_batches(partial(self._apply, stream, halt), halt,
                                   max_events=self._max_events,
                                   on_dead=partial(self._skip, stream, halt), drain=drain)

    async def _follow(self, stream: str, stop: asyncio.Event) -> None:
        # A failed batch is never nak'd: a redelivery after later batches would fall below
        # the watermark. The consumer is reopened after the watermark instead.
        while not stop.is_set():
            try:
                await self._consume(stream)
            except (duckdb.Error, NatsError, OSError) as exc:
                log.error("projecting %s failed, resuming after the watermark: %s", stream, exc)
                await anyio.sleep(self._retry_delay)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow every stream until ``stop`` is set."""
        async with anyio.create_task_group() as tg:
            for stream in store.streams():
                tg.start_soon(self._follow, stream, stop, name=f"project {stream}")
            await stop.wait()
            self._halt.set()

    async def rebuild(self, names: list[str] | None = None) -> list[str]:
        """Drop the named projections (all by default) and replay them from the start of
        the log. Raises ``ValueError`` for an unknown name."""
        chosen = by_name(names)
        async with self._lock:
            await asyncio.to_thread(store.reset, self._con, chosen)
            self._halt.set()
            self._halt = asyncio.Event()
        return [p.name for p in chosen]


async def replay(js: JetStreamContext, con: duckdb.DuckDBPyConnection, *,
                 batch: int = 4096, max_events: int = 16384) -> int:
    """Apply everything stored so far, stream by stream, then return how many (projection,
    event) pairs were applied. For a manager that is not running (``projections rebuild
    --db``). Raises ``duckdb.Error``, ``nats.errors.Error``, ``OSError``."""
    projector = Projector(js, con, batch=batch, max_events=max_events)
    for stream in store.streams():
        await projector._consume(stream, drain=True)
    return projector.applied
