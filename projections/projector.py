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

import duckdb
from nats.js import JetStreamContext

from events.bus import Consumer, Delivered
from projections import by_name, store

log = logging.getLogger("damselfly.projections")


class Projector:
    """Keeps every projection up to date with the streams until stopped."""

    def __init__(self, js: JetStreamContext, con: duckdb.DuckDBPyConnection, *,
                 batch: int = 1024) -> None:
        self._js = js
        self._con = con
        self._batch = batch
        self._lock = asyncio.Lock()
        self._generation = 0
        self._restart = asyncio.Event()
        self.applied = 0

    async def _apply(self, stream: str, generation: int, items: Sequence[Delivered]) -> None:
        async with self._lock:
            if generation != self._generation:
                return  # read before a rebuild; the new consumer reads it again
            batch = [(item.seq, item.event) for item in items]
            self.applied += await asyncio.to_thread(store.apply_batch, self._con, stream, batch)

    async def _follow(self, stream: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            async with self._lock:
                generation = self._generation
                first = await asyncio.to_thread(store.start_seq, self._con, stream)
                restart = self._restart
            consumer = Consumer(self._js, stream=stream, start_seq=first, batch=self._batch)
            done = asyncio.Event()

            async def handler(items: Sequence[Delivered]) -> None:
                await self._apply(stream, generation, items)

            async def relay() -> None:
                waiters = [asyncio.ensure_future(stop.wait()),
                           asyncio.ensure_future(restart.wait())]
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                done.set()

            log.info("projecting %s from sequence %d", stream, first)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(relay())
                    group.create_task(consumer.run_batches(handler, done))
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
            self._restart.set()
            self._restart = asyncio.Event()
        return [p.name for p in chosen]
