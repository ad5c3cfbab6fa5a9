"""The job coordinator's shell: follows DF_JOBS from its start, so that the log, not memory,
is its state; decides with ``jobbook.Book`` and publishes what it decided. Which hosts are
alive or gone it reads from the hosts projection (DF_HOSTS folded): a target whose latest
host event is ``HostLeft`` — a clean stop, or a scheduler's "keepalive timeout" — has its
unfinished part failed at once, so the job ends without waiting for its deadline.

Any system may publish a ``PreheatRequested`` on ``df.job.<job>.preheat_requested``: the
coordinator starts it exactly as it starts one from the REST API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence

import duckdb
import msgspec
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from damselfly.events.base import Event
from damselfly.events.bus import Consumer, Publisher
from damselfly.events.streams import JOBS_STREAM
from damselfly.services.manager.control.clusters import KEEPALIVE_TIMEOUT
from damselfly.services.manager.control.jobbook import Book, Host
from damselfly.services.manager.reader import Reader

log = logging.getLogger("damselfly.manager.jobs")


async def live_hosts(reader: Reader) -> list[Host]:
    rows = await reader.records(
        "SELECT host_id, cluster, seed FROM hosts WHERE state = 'alive' AND last_keepalive >= "
        "make_timestamp(CAST(? * 1000000 AS BIGINT))", [time.time() - KEEPALIVE_TIMEOUT])
    return [Host(str(r["host_id"]), str(r["cluster"]), bool(r["seed"])) for r in rows]


async def left_hosts(reader: Reader, host_ids: Collection[str]) -> dict[str, str]:
    """Those of ``host_ids`` whose latest host event is ``HostLeft``, with its reason."""
    rows = await reader.records(
        "SELECT host_id, coalesce(left_reason, '') AS reason FROM hosts "
        "WHERE state = 'left' AND list_contains(?, host_id)", [sorted(host_ids)])
    return {str(r["host_id"]): str(r["reason"]) for r in rows}


class Coordinator:
    def __init__(self, js: JetStreamContext, reader: Reader, publisher: Publisher, *,
                 preheat_timeout: float = 1800.0, collect_window: float = 5.0,
                 no_host_grace: float = 10.0, tick: float = 1.0) -> None:
        self._js = js
        self._reader = reader
        self._publisher = publisher
        self._tick = tick
        self.book = Book(preheat_timeout=preheat_timeout, collect_window=collect_window,
                         no_host_grace=no_host_grace)
        self._replayed = False

    async def _decide(self, events: Sequence[Event]) -> None:
        """Publish decisions, then fold them: a decision that failed to publish is made
        again on the next tick."""
        if not events:
            return
        now = time.time()
        await self._publisher.publish_many(msgspec.structs.replace(e, at=now) for e in events)
        for e in events:
            self.book.evolve(e)  # type: ignore[arg-type]

    async def _step(self, consumer: Consumer) -> None:
        items = await consumer.fetch(timeout=self._tick)
        for item in items:
            self.book.evolve(item.event)
            await item.msg.ack()
        if not self._replayed:
            if items and items[-1].msg.metadata.num_pending > 0:
                return
            self._replayed = True
            log.info("job coordinator caught up: %d open jobs", len(self.book.jobs))
        unstarted = self.book.unstarted()
        if unstarted:
            hosts = await live_hosts(self._reader)
            now = time.time()
            await self._decide([e for job in unstarted for e in self.book.start(job, hosts, now)])
        waiting = {host for hosts in self.book.unfinished().values() for host in hosts}
        if waiting:
            await self._decide(self.book.abandon(await left_hosts(self._reader, waiting)))
        await self._decide(self.book.settle_all() + self.book.expire(time.time()))

    async def run(self, stop: asyncio.Event) -> None:
        """Replay DF_JOBS, then follow it and tick until ``stop`` is set. Decisions wait
        for the replay, so a restart never re-decides a job the log already settled."""
        consumer = Consumer(self._js, stream=JOBS_STREAM)
        try:
            while not stop.is_set():
                try:
                    await self._step(consumer)
                except (NatsError, duckdb.Error, OSError) as exc:  # retried on the next tick
                    log.warning("job coordinator: %r", exc)
                    await asyncio.sleep(self._tick)
        finally:
            await consumer.close()
