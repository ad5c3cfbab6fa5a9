"""The thin I/O layer over JetStream: publish events, consume them safely.

Publishing sets ``Nats-Msg-Id`` from the event id, so a retry is stored once.
Consuming decodes each message, hands the typed event to a handler and acks only after it
returned; a ``TransientError`` naks with a delay; a message that cannot be decoded, that
the handler rejects with ``PoisonEvent``, or that keeps failing past ``max_deliver`` is
copied to ``df.dlq.<stream>`` with the reason and terminated. The consumer never stops on
one bad message.

Consuming in batches is for handlers that keep their own position with their state (one
transaction each): nothing is nak'd, since a redelivery after later batches would land out
of order. A failure other than ``PoisonEvent`` ends the run instead, and the caller reopens
from its position.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from damselfly.events.base import Event
from damselfly.events.codec import AnyEvent, EventDecodeError, decode_delivered, encode
from damselfly.events.subjects import dlq_subject, subject_for

log = logging.getLogger("damselfly.bus")
T = TypeVar("T")

MSG_ID: Final = "Nats-Msg-Id"
DEAD_REASON: Final = "Damselfly-Dead-Reason"
DEAD_STREAM: Final = "Damselfly-Dead-Stream"
DEAD_SEQ: Final = "Damselfly-Dead-Seq"
DEAD_SUBJECT: Final = "Damselfly-Dead-Subject"


class TransientError(Exception):
    """The handler could not apply the event now (a dependency is down); retry later."""


class PoisonEvent(Exception):
    """The handler can never apply this event; dead-letter it."""


LEADERLESS: Final = (NoStreamResponseError, ServiceUnavailableError, NoRespondersError)
"""What a publish meets while a stream has no leader (a JetStream cluster electing one after a
node died) or the client is between servers: the same publish succeeds a moment later."""
LEADERLESS_RETRY: Final = 0.25
DRAIN_PATIENCE: Final = 30.0
"""How long a draining consumer waits through empty fetches for the stream to deliver again
or to say it is drained (a cluster that lost its quorum says neither) before it gives up."""


class Publisher:
    """Publishes events to their subjects; ``publish_many`` pipelines the acks.

    An ack that does not come within ``timeout`` seconds is asked for again, up to
    ``attempts`` times in all: the event id is the message id, so the stream stores a
    resent event once, and a broker slow for a moment (a thin link full of deliveries)
    does not fail the download or the write that published it. A stream without a leader
    (``LEADERLESS``) is asked again every ``LEADERLESS_RETRY`` seconds for as long as those
    attempts would have taken, so a cluster's election fails nothing either."""

    def __init__(self, js: JetStreamContext, *, timeout: float = 5.0, attempts: int = 3) -> None:
        self._js = js
        self._timeout = timeout
        self._attempts = attempts
        self.published: Counter[str] = Counter()  # events the streams acked, by stream

    async def publish(self, event: Event) -> int:
        """Publish one event and wait for the stream's ack; returns its stream sequence.

        Raises ``nats.errors.TimeoutError`` (after every attempt), one of ``LEADERLESS``
        (after as long) or ``nats.js.errors.APIError``.
        """
        return await self._retrying(event.id, lambda: self._publish_once(event))

    async def publish_many(self, events: Iterable[Event]) -> list[int]:
        """Publish events without waiting between them, then wait for every ack (all of
        them again, as one batch, when some do not come in time)."""
        batch = list(events)
        return await self._retrying(f"{len(batch)} events", lambda: self._publish_batch(batch))

    async def _retrying(self, what: str, send: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout * self._attempts
        timeouts = 0
        leaderless = False
        while True:
            try:
                return await send()
            except NatsTimeoutError:
                timeouts += 1
                if timeouts >= self._attempts:
                    raise
                log.warning("no ack for %s within %gs; publishing again", what, self._timeout)
            except LEADERLESS as exc:
                if loop.time() >= deadline:
                    raise
                if not leaderless:
                    log.warning("%s: %s; publishing again until a leader answers", what,
                                exc or type(exc).__name__)
                    leaderless = True
                await asyncio.sleep(LEADERLESS_RETRY)

    async def _publish_once(self, event: Event) -> int:
        ack = await self._js.publish(subject_for(event), encode(event), timeout=self._timeout,
                                     headers={MSG_ID: event.id})
        self.published[ack.stream] += 1
        return ack.seq

    async def _publish_batch(self, batch: list[Event]) -> list[int]:
        futures = [
            await self._js.publish_async(subject_for(e), encode(e), headers={MSG_ID: e.id})
            for e in batch
        ]
        try:
            acks = await asyncio.wait_for(asyncio.gather(*futures), timeout=self._timeout)
        except TimeoutError:
            for future in futures:
                future.cancel()
            raise NatsTimeoutError from None
        self.published.update(a.stream for a in acks)
        return [a.seq for a in acks]


EXPECTED_LAST: Final = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE: Final = 10071
"""JetStream's error code when the subject's last sequence is not the one expected."""


async def publish_if_last(js: JetStreamContext, event: Event, last_seq: int,
                          timeout: float = 5.0) -> bool:
    """Publish ``event`` only if its subject's last stored message is still ``last_seq``
    (0: none), JetStream's optimistic concurrency: of two writers that read the same state,
    one wins. False when another write came in between; raises other NATS errors."""
    try:
        await js.publish(subject_for(event), encode(event), timeout=timeout,
                         headers={MSG_ID: event.id, EXPECTED_LAST: str(last_seq)})
    except APIError as exc:
        if exc.err_code == WRONG_LAST_SEQUENCE:
            return False
        raise
    return True


def decoded(msg: Msg) -> AnyEvent | None:
    """The event a core NATS subscription received, or None (and one warning line) when its
    bytes are no event or arrived on another event's subject."""
    try:
        return decode_delivered(msg.subject, msg.data)
    except EventDecodeError as exc:
        log.warning("undecodable message on %s: %s", msg.subject, exc)
        return None


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
DeadHandler = Callable[[int], Awaitable[None]]


@dataclass
class ConsumerStats:
    """What a consumer settled, and ``pending``: what the stream held beyond its last
    fetch (its lag)."""

    acked: int = 0
    naked: int = 0
    dead: int = 0
    pending: int = 0


async def dead_letter(js: JetStreamContext, msg: Msg, reason: str) -> None:
    """Copy a message to the dead-letter subject with the reason, then terminate it."""
    meta = msg.metadata
    one_line = reason.replace("\n", " ")[:500]
    log.error("dead-lettered %s seq %s (%s): %s", meta.stream, meta.sequence.stream,
              msg.subject, one_line, extra={"stream": meta.stream, "seq": meta.sequence.stream,
                                            "subject": msg.subject})
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
                 max_deliver: int = 5, ack_wait: float = 30.0,
                 stats: ConsumerStats | None = None) -> None:
        """``stats``: counts to add to (a reopened consumer goes on with its predecessor's)."""
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
        self.stats = stats if stats is not None else ConsumerStats()
        self._sub: JetStreamContext.PullSubscription | None = None

    async def _subscription(self) -> JetStreamContext.PullSubscription:
        if self._sub is None:
            self._sub = await self._js.pull_subscribe(
                self._filter or "", durable=self._durable, stream=self.stream,
                config=self._config)
        return self._sub

    async def _pull(self, timeout: float) -> list[Msg]:
        sub = await self._subscription()
        try:
            msgs = await sub.fetch(self._batch, timeout=timeout)
        except (TimeoutError, NatsTimeoutError):
            # nats-py raises the bare asyncio error when a poll expires partway through.
            self.stats.pending = 0
            return []
        except LEADERLESS:  # the stream elects a leader (a cluster node died): nothing now
            await asyncio.sleep(LEADERLESS_RETRY)
            return []
        self.stats.pending = msgs[-1].metadata.num_pending if msgs else 0
        return msgs

    async def _decode(self, msgs: Sequence[Msg]) -> tuple[list[Delivered], list[int]]:
        """The decodable messages, and the stream sequences of the rest, dead-lettered."""
        out: list[Delivered] = []
        dead: list[int] = []
        for msg in msgs:
            try:
                event = decode_delivered(msg.subject, msg.data)
            except EventDecodeError as exc:
                await dead_letter(self._js, msg, f"undecodable: {exc}")
                self.stats.dead += 1
                dead.append(msg.metadata.sequence.stream)
                continue
            out.append(Delivered(msg.metadata.stream, msg.metadata.sequence.stream, msg.subject,
                                 event, msg))
        return out, dead

    async def fetch(self, timeout: float = 1.0) -> list[Delivered]:
        """Fetch up to one batch; poison messages are dead-lettered and left out."""
        return (await self._decode(await self._pull(timeout)))[0]

    async def _gather(self, max_events: int) -> list[Msg]:
        """One fetch when caught up; while behind, up to ``max_events`` messages (a handler
        whose cost is per batch, not per event, catches up faster on big ones)."""
        msgs = await self._pull(1.0)
        while msgs and len(msgs) < max_events and msgs[-1].metadata.num_pending > 0:
            more = await self._pull(0.2)
            if not more:
                break
            msgs += more
        return msgs

    async def _drained(self) -> bool:
        """Whether the consumer has nothing left to deliver: an empty fetch alone may also
        be a stream that is slow or electing a leader for a moment."""
        try:
            info = await (await self._subscription()).consumer_info()
        except (TimeoutError, NatsTimeoutError, *LEADERLESS):
            return False
        return not info.num_pending

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

    async def run_batches(self, handler: BatchHandler, stop: asyncio.Event, *,
                          max_events: int | None = None, on_dead: DeadHandler | None = None,
                          drain: bool = False) -> None:
        """Hand batches of up to ``max_events`` (default: one fetch) to ``handler``, in
        stream order, until ``stop`` is set (or, with ``drain``, nothing is pending: raises
        ``TimeoutError`` after ``DRAIN_PATIENCE`` seconds of neither); ack
        them after it returned. A ``PoisonEvent`` splits the batch to dead-letter the culprit.
        ``on_dead`` gets the stream sequence of every dead-lettered message once the handler
        has seen every message before it, so a handler can step over it in its position.

        Raises whatever else the handler raised; that batch stays unacked.
        """
        try:
            await self._run_batches(handler, stop, max_events or self._batch, on_dead, drain)
        finally:
            await self.close()

    async def _run_batches(self, handler: BatchHandler, stop: asyncio.Event, max_events: int,
                           on_dead: DeadHandler | None, drain: bool) -> None:
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while not stop.is_set():
            msgs = await self._gather(max_events)
            if not msgs:
                if drain and await self._drained():
                    return
                if drain and loop.time() - idle_since > DRAIN_PATIENCE:
                    raise TimeoutError(f"{self.stream}: nothing delivered for "
                                           f"{DRAIN_PATIENCE:g} s, and the stream does not "
                                           "say it is drained")
                continue
            idle_since = loop.time()
            batch, dead = await self._decode(msgs)
            if batch:
                dead += await self._handle_batch(handler, batch)
            if on_dead is not None:
                for seq in sorted(dead):
                    await on_dead(seq)
            if drain and msgs[-1].metadata.num_pending == 0:
                return

    async def _handle_batch(self, handler: BatchHandler, batch: Sequence[Delivered]) -> list[int]:
        """Apply and ack a batch; returns the sequences of the poison events left out."""
        try:
            await handler(batch)
        except PoisonEvent:
            # Find the culprit by applying one at a time; the rest still land.
            dead: list[int] = []
            for item in batch:
                try:
                    await handler([item])
                except PoisonEvent as exc:
                    await dead_letter(self._js, item.msg, f"{type(exc).__name__}: {exc}")
                    self.stats.dead += 1
                    dead.append(item.seq)
                    continue
                await item.msg.ack()
                self.stats.acked += 1
            return dead
        for item in batch:
            await item.msg.ack()
        self.stats.acked += len(batch)
        return []

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

