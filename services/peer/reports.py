"""A download's piece reports, batched: one ``PiecesFinished`` per moment instead of one
event per piece.

A report goes out at once when none went out in the last ``interval``, so a lone piece
(a seed's first, a slow child's) is not delayed; while pieces keep coming, they wait for the
rest of the interval, or until ``most`` have gathered. Every follower of this peer then gets
one delivery for several pieces, and the scheduler and NATS one message (issue 14: events
per second grow with peers, not with peers × pieces).

A batch does not wait for the previous one's ack: on a busy broker an ack took about
250 ms, and waiting for it made that the reporting cadence, so the swarm learned of every
piece up to a quarter of a second late. At most ``IN_FLIGHT`` batches await their acks.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio

from damselfly.events.fields import MAX_BATCH
from damselfly.events.tasks import FinishedPiece

INTERVAL = 0.1
MOST = 16
IN_FLIGHT = 4


class PieceReports:
    """``add`` from the event loop (a worker thread goes through ``from_thread``)."""

    def __init__(self, publish: Callable[[list[FinishedPiece]], Awaitable[object]], *,
                 interval: float = INTERVAL, most: int = MOST) -> None:
        self._publish = publish
        self._interval, self._most = interval, min(most, MAX_BATCH)
        self._waiting: list[FinishedPiece] = []
        self._wake = anyio.Event()  # set by the first piece waiting, a full batch, or closing
        self._closed = False
        self.done = anyio.Event()
        self._last = -math.inf
        self._acks = anyio.Semaphore(IN_FLIGHT)

    def add(self, piece: FinishedPiece) -> None:
        self._waiting.append(piece)
        if len(self._waiting) in (1, self._most):
            self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                while not self._closed or self._waiting:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    if len(self._waiting) < self._most and not self._closed:
                        with anyio.move_on_after(self._last + self._interval - time.monotonic()):
                            await self._wake.wait()  # until the interval ends or a batch is full
                        self._wake = anyio.Event()
                    pending, self._waiting = self._waiting, []
                    self._last = time.monotonic()
                    for i in range(0, len(pending), self._most):
                        await self._acks.acquire()
                        tg.start_soon(self._send, pending[i:i + self._most])
        finally:
            self.done.set()

    async def _send(self, batch: list[FinishedPiece]) -> None:
        try:
            await self._publish(batch)
        finally:
            self._acks.release()


@asynccontextmanager
async def piece_reports(publish: Callable[[list[FinishedPiece]], Awaitable[object]], *,
                        interval: float = INTERVAL, most: int = MOST
                        ) -> AsyncIterator[PieceReports]:
    """Reports for the body of the ``async with``; leaving it publishes whatever is still
    waiting, even when leaving by an error: the pieces are on disk, so the swarm may use
    them."""
    reports = PieceReports(publish, interval=interval, most=most)
    async with anyio.create_task_group() as tg:
        tg.start_soon(reports.run)
        try:
            yield reports
        finally:
            reports.close()
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await reports.done.wait()
