"""The job coordinator's shell: follows DF_JOBS from its start, so that the log, not memory,
is its state; decides with ``jobbook.Book`` and publishes what it decided.

Any system may publish a ``PreheatRequested`` on ``df.job.<job>.preheat_requested``: the
coordinator starts it exactly as it starts one from the REST API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import msgspec
from nats.js import JetStreamContext

from events.base import Event
from events.bus import Consumer, Publisher
from events.jobs import JobProgressed
from services.manager.control.clusters import KEEPALIVE_TIMEOUT
from services.manager.control.jobbook import Book, Host
from services.manager.reader import Reader

log = logging.getLogger("damselfly.manager.jobs")


async def live_hosts(reader: Reader) -> list[Host]:
    rows = await reader.records(
        "SELECT host_id, cluster, seed FROM hosts WHERE state = 'alive' AND last_keepalive >= "
        "make_timestamp(CAST(? * 1000000 AS BIGINT))", [time.time() - KEEPALIVE_TIMEOUT])
    return [Host(str(r["host_id"]), str(r["cluster"]), bool(r["seed"])) for r in rows]


class Coordinator:
    def __init__(self, js: JetStreamContext, reader: Reader, publisher: Publisher, *,
                 preheat_timeout: float = 1800.0, collect_window: float = 5.0,
                 tick: float = 1.0) -> None:
        self._js = js
        self._reader = reader
        self._publisher = publisher
        self._tick = tick
        self.book = Book(preheat_timeout=preheat_timeout, collect_window=collect_window)

    async def _publish(self, events: Sequence[Event]) -> None:
        if events:
            now = time.time()
            await self._publisher.publish_many(msgspec.structs.replace(e, at=now) for e in events)

    async def _start_unstarted(self) -> None:
        jobs = self.book.unstarted()
        if jobs:
            hosts = await live_hosts(self._reader)
            for job in jobs:
                out = self.book.start(job, hosts)
                for e in out:  # fold now: the stream echoes them later, harmlessly
                    self.book.evolve(e)  # type: ignore[arg-type]
                await self._publish(out)

    async def run(self, stop: asyncio.Event) -> None:
        """Replay DF_JOBS, then follow it and tick until ``stop`` is set. Decisions wait
        for the replay, so a restart never re-decides a job the log already settled."""
        consumer = Consumer(self._js, stream="DF_JOBS", nak_delay=self._tick)
        replayed = False
        try:
            while not stop.is_set():
                try:
                    items = await consumer.fetch(timeout=self._tick)
                except TimeoutError:  # nats-py 2.16 may let asyncio's timeout through
                    items = []
                for item in items:
                    self.book.evolve(item.event)
                    await item.msg.ack()
                    if replayed and isinstance(item.event, JobProgressed):
                        await self._publish(self._settle(item.event.job_id))
                if not replayed and (not items or items[-1].msg.metadata.num_pending == 0):
                    replayed = True
                    log.info("job coordinator caught up: %d open jobs", len(self.book.jobs))
                    for job_id in list(self.book.jobs):
                        await self._publish(self._settle(job_id))
                if replayed:
                    await self._start_unstarted()
                    await self._publish(self._expire())
        finally:
            await consumer.close()

    def _settle(self, job_id: str) -> list[Event]:
        out = self.book.settle(job_id)
        for e in out:
            self.book.evolve(e)  # type: ignore[arg-type]
        return out

    def _expire(self) -> list[Event]:
        out = self.book.expire(time.time())
        for e in out:
            self.book.evolve(e)  # type: ignore[arg-type]
        return out
