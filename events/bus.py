"""The thin I/O layer over JetStream: publish events, consume them safely.

Publishing sets ``Nats-Msg-Id`` from the event id, so a retry is stored once.
Consuming decodes each message, hands the typed event to a handler and acks only after it
returned; a ``TransientError`` naks with a delay; a message that cannot be decoded, that
the handler rejects with ``PoisonEvent``, or that keeps failing past ``max_deliver`` is
copied to ``df.dlq.<stream>`` with the reason and terminated. The consumer never stops on
one bad message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from events.base import Event
from events.codec import AnyEvent, EventDecodeError, decode, encode
from events.subjects import dlq_subject, subject_for

log = logging.getLogger("damselfly.bus")

MSG_ID: Final = "Nats-Msg-Id"
DEAD_REASON: Final = "Damselfly-Dead-Reason"
DEAD_STREAM: Final = "Damselfly-Dead-Stream"
DEAD_SEQ: Final = "Damselfly-Dead-Seq"
DEAD_SUBJECT: Final = "Damselfly-Dead-Subject"


class TransientError(Exception):
    """The handler could not apply the event now (a dependency is down); retry later."""


class PoisonEvent(Exception):
    """The handler can never apply this event; dead-letter it."""


class Publisher:
    """Publishes events to their subjects; ``publish_many`` pipelines the acks."""

    def __init__(self, js: JetStreamContext, *, timeout: float = 5.0) -> None:
        self._js = js
        self._timeout = timeout

    async def publish(self, event: Event) -> int:
        """Publish one event and wait for the stream's ack; returns its stream sequence.

        Raises ``nats.errors.TimeoutError`` or ``nats.js.errors.APIError``.
        """
        ack = await self._js.publish(subject_for(event), encode(event), timeout=self._timeout,
                                     headers={MSG_ID: event.id})
        return ack.seq

    async def publish_many(self, events: Iterable[Event]) -> list[int]:
        """Publish events without waiting between them, then wait for every ack."""
        futures = [
            await self._js.publish_async(subject_for(e), encode(e), headers={MSG_ID: e.id})
            for e in events
        ]
        acks = await asyncio.wait_for(asyncio.gather(*futures), timeout=self._timeout)
        return [a.seq for a in acks]


@dataclass(frozen=True)
class Delivered:
    """One decoded event with its place in the stream."""

    stream: str
    seq: int
    subject: str
    event: AnyEvent
    msg: Msg = field(repr=False)


EventHandler = Callable[[Delivered], Awaitable[None]]
BatchHandler = Callable[[Sequence[Delivered]], Awaitable[None]]


@dataclass
class ConsumerStats:
    acked: int = 0
    naked: int = 0
    dead: int = 0


async def dead_letter(js: JetStreamContext, msg: Msg, reason: str) -> None:
    """Copy a message to the dead-letter subject with the reason, then terminate it."""
    meta = msg.metadata
    one_line = reason.replace("\n", " ")[:500]
    log.error("dead-lettered %s seq %s (%s): %s", meta.stream, meta.sequence.stream,
              msg.subject, one_line)
    await js.publish(
        dlq_subject(meta.stream), msg.data,
        headers={DEAD_REASON: one_line, DEAD_STREAM: meta.stream,
                 DEAD_SEQ: str(meta.sequence.stream), DEAD_SUBJECT: msg.subject,
                 MSG_ID: f"dlq-{meta.stream}-{meta.sequence.stream}"},
    )
    await msg.term()


class Consumer:
    """A pull consumer on one stream that feeds decoded events to a handler.

    ``durable`` keeps its position on the server across restarts; without it the consumer
    is ephemeral and starts at ``start_seq`` (or the stream's first message).
    """

    def __init__(self, js: JetStreamContext, *, stream: str, filter_subject: str | None = None,
                 durable: str | None = None, start_seq: int | None = None,
                 deliver_new: bool = False, batch: int = 256, nak_delay: float = 1.0,
                 max_deliver: int = 5, ack_wait: float = 30.0) -> None:
        self._js = js
        self.stream = stream
        self._filter = filter_subject
        self._durable = durable
        self._batch = batch
        self._nak_delay = nak_delay
        self._max_deliver = max_deliver
        if start_seq is not None:
            policy, seq = DeliverPolicy.BY_START_SEQUENCE, start_seq
        else:
            policy, seq = (DeliverPolicy.NEW if deliver_new else DeliverPolicy.ALL), None
        self._config = ConsumerConfig(
            durable_name=durable, deliver_policy=policy, opt_start_seq=seq,
            ack_policy=AckPolicy.EXPLICIT, max_deliver=max_deliver, ack_wait=ack_wait,
            filter_subject=filter_subject, max_ack_pending=max(batch * 4, 1024),
        )
        self.stats = ConsumerStats()
        self._sub: JetStreamContext.PullSubscription | None = None

    async def _subscription(self) -> JetStreamContext.PullSubscription:
        if self._sub is None:
            self._sub = await self._js.pull_subscribe(
                self._filter or "", durable=self._durable, stream=self.stream,
                config=self._config)
        return self._sub

    async def fetch(self, timeout: float = 1.0) -> list[Delivered]:
        """Fetch up to one batch; poison messages are dead-lettered and left out."""
        sub = await self._subscription()
        try:
            msgs = await sub.fetch(self._batch, timeout=timeout)
        except (TimeoutError, NatsTimeoutError):
            # nats-py raises the bare asyncio error when a poll expires partway through.
            return []
        out: list[Delivered] = []
        for msg in msgs:
            try:
                event = decode(msg.data)
            except EventDecodeError as exc:
                await dead_letter(self._js, msg, f"undecodable: {exc}")
                self.stats.dead += 1
                continue
            out.append(Delivered(msg.metadata.stream, msg.metadata.sequence.stream, msg.subject,
                                 event, msg))
        return out

    async def _settle_failure(self, item: Delivered, exc: Exception) -> None:
        if isinstance(exc, PoisonEvent) or item.msg.metadata.num_delivered >= self._max_deliver:
            await dead_letter(self._js, item.msg, f"{type(exc).__name__}: {exc}")
            self.stats.dead += 1
        else:
            log.warning("will retry %s seq %s: %s", item.stream, item.seq, exc)
            await item.msg.nak(delay=self._nak_delay)
            self.stats.naked += 1

    async def run(self, handler: EventHandler, stop: asyncio.Event) -> None:
        """Hand each event to ``handler`` until ``stop`` is set; ack after it succeeded."""
        try:
            await self._run(handler, stop)
        finally:
            await self.close()

    async def _run(self, handler: EventHandler, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for item in await self.fetch():
                try:
                    await handler(item)
                except Exception as exc:  # noqa: BLE001 - every failure is settled, never fatal
                    await self._settle_failure(item, exc)
                    continue
                await item.msg.ack()
                self.stats.acked += 1

    async def run_batches(self, handler: BatchHandler, stop: asyncio.Event) -> None:
        """Hand whole batches to ``handler`` (one transaction each); ack all after it."""
        try:
            await self._run_batches(handler, stop)
        finally:
            await self.close()

    async def _run_batches(self, handler: BatchHandler, stop: asyncio.Event) -> None:
        while not stop.is_set():
            batch = await self.fetch()
            if not batch:
                continue
            try:
                await handler(batch)
            except PoisonEvent:
                # Find the culprit by applying one at a time; the rest still land.
                for item in batch:
                    try:
                        await handler([item])
                    except Exception as exc:  # noqa: BLE001
                        await self._settle_failure(item, exc)
                        continue
                    await item.msg.ack()
                    self.stats.acked += 1
                continue
            except Exception as exc:  # noqa: BLE001
                for item in batch:
                    await self._settle_failure(item, exc)
                continue
            for item in batch:
                await item.msg.ack()
            self.stats.acked += len(batch)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

