"""The bus against a real nats-server: streams, dedup, ack/nak, dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from damselfly.events.bus import (
    DEAD_REASON,
    DEAD_SEQ,
    Consumer,
    Delivered,
    PoisonEvent,
    Publisher,
    TransientError,
)
from damselfly.events.codec import decode
from damselfly.events.hosts import HostAnnounced, HostKeepalive
from damselfly.events.ids import new_id
from damselfly.events.streams import STREAM_NAMES, ensure_streams
from damselfly.events.subjects import dlq_subject, host_subject
from tests.support.wait import eventually

pytestmark = pytest.mark.anyio


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    nc: Client = await nats.connect(nats_url)
    js = nc.jetstream()
    for name in STREAM_NAMES:  # every test starts from empty streams
        try:
            await js.delete_stream(name)
        except nats.js.errors.NotFoundError:
            pass
    await ensure_streams(js)
    yield js
    await nc.drain()


def _announced(host: str, event_id: str | None = None) -> HostAnnounced:
    return HostAnnounced(id=event_id or new_id(), at=1.0, cluster="default", host_id=host,
                         hostname=host, ip="127.0.0.1", upload_url="http://127.0.0.1:1")


async def test_ensure_streams_twice_is_harmless(js: JetStreamContext) -> None:
    await Publisher(js).publish(_announced("h1"))
    await ensure_streams(js)
    await ensure_streams(js)
    names = {s.config.name for s in await js.streams_info()}
    assert set(STREAM_NAMES) <= names
    assert (await js.stream_info("DF_HOSTS")).state.messages == 1


async def test_an_event_published_twice_with_one_id_is_stored_once(js: JetStreamContext) -> None:
    publisher = Publisher(js)
    event = _announced("h1")
    first = await publisher.publish(event)
    second = await publisher.publish(event)
    many = await publisher.publish_many([event, _announced("h2")])
    assert first == second == many[0]
    assert (await js.stream_info("DF_HOSTS")).state.messages == 2


async def test_publish_many_keeps_order(js: JetStreamContext) -> None:
    events = [_announced(f"h{i}") for i in range(50)]
    seqs = await Publisher(js).publish_many(events)
    assert seqs == sorted(seqs) and len(set(seqs)) == 50
    consumer = Consumer(js, stream="DF_HOSTS")
    got = await consumer.fetch()
    await consumer.close()
    assert [d.event for d in got] == events


async def _run_until(consumer: Consumer, handler: Callable[[Delivered], Awaitable[None]],
                     done: asyncio.Event) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(handler, stop))
    try:
        await asyncio.wait_for(done.wait(), timeout=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


async def test_poison_messages_are_dead_lettered_and_the_consumer_goes_on(
        js: JetStreamContext) -> None:
    good_before, good_after = _announced("before"), _announced("after")
    publisher = Publisher(js)
    await publisher.publish(good_before)
    bad = await js.publish(host_subject("default", "x", "announced"), b'{"type": "nope"}')
    await js.publish(host_subject("default", "y", "announced"), b"\xff\x00 not json")
    rejected = _announced("rejected")
    await publisher.publish(rejected)
    await publisher.publish(good_after)

    seen: list[HostAnnounced] = []
    done = asyncio.Event()

    async def handler(item: Delivered) -> None:
        if item.event == rejected:
            raise PoisonEvent("host id is on the deny list")
        assert isinstance(item.event, HostAnnounced)
        seen.append(item.event)
        if item.event == good_after:
            done.set()

    consumer = Consumer(js, stream="DF_HOSTS", durable="poison-test")
    await _run_until(consumer, handler, done)
    assert seen == [good_before, good_after]
    assert consumer.stats.dead == 3

    dlq = await js.pull_subscribe(dlq_subject("DF_HOSTS"), stream="DF_DLQ")
    dead = await dlq.fetch(3, timeout=5)
    headers = [m.headers or {} for m in dead]  # a dead letter without headers fails below
    assert headers[0].get(DEAD_SEQ) == str(bad.seq)
    reasons = [h.get(DEAD_REASON, "") for h in headers]
    assert reasons[0].startswith("undecodable:") and reasons[1].startswith("undecodable:")
    assert reasons[2] == "PoisonEvent: host id is on the deny list"
    assert decode(dead[2].data) == rejected
    # Nothing is left for the durable consumer: the poison was terminated, not parked.
    info = await js.consumer_info("DF_HOSTS", "poison-test")
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_transient_error_is_retried_then_acked(js: JetStreamContext) -> None:
    event = HostKeepalive(id=new_id(), cluster="default", host_id="h1")
    await Publisher(js).publish(event)
    attempts: list[int] = []
    done = asyncio.Event()

    async def flaky(item: Delivered) -> None:
        attempts.append(item.msg.metadata.num_delivered)
        if len(attempts) < 3:
            raise TransientError("duckdb is busy")
        done.set()

    consumer = Consumer(js, stream="DF_HOSTS", durable="flaky", nak_delay=0.1)
    await _run_until(consumer, flaky, done)
    assert attempts == [1, 2, 3]
    assert (consumer.stats.naked, consumer.stats.acked, consumer.stats.dead) == (2, 1, 0)


async def test_an_event_that_keeps_failing_is_dead_lettered_after_max_deliver(
        js: JetStreamContext) -> None:
    event = HostKeepalive(id=new_id(), cluster="default", host_id="h1")
    await Publisher(js).publish(event)
    attempts: list[int] = []

    async def broken(item: Delivered) -> None:
        attempts.append(item.msg.metadata.num_delivered)
        raise RuntimeError("bug")

    consumer = Consumer(js, stream="DF_HOSTS", durable="broken", nak_delay=0.05, max_deliver=3)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(broken, stop))

    async def dead_lettered() -> int:
        return consumer.stats.dead

    await eventually(dead_lettered)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert attempts == [1, 2, 3]
    assert consumer.stats.dead == 1


def _host_id(item: Delivered) -> str:
    assert isinstance(item.event, HostAnnounced), item.event
    return item.event.host_id


async def test_batches_are_acked_together_and_a_poison_batch_is_split(js: JetStreamContext) -> None:
    events = [_announced(f"h{i}") for i in range(10)]
    publisher = Publisher(js)
    seqs = await publisher.publish_many(events[:6])
    garbled = await js.publish(host_subject("default", "x", "announced"), b"not json")
    await publisher.publish_many(events[6:])
    tail = await js.publish(host_subject("default", "y", "announced"), b"not json either")
    calls: list[list[str]] = []
    stepped_over: list[int] = []

    async def apply(batch: Sequence[Delivered]) -> None:
        hosts = [_host_id(d) for d in batch]
        calls.append(hosts)
        if "h4" in hosts:
            raise PoisonEvent("h4 is malformed for this projection")

    async def on_dead(seq: int) -> None:
        stepped_over.append(seq)

    consumer = Consumer(js, stream="DF_HOSTS", durable="batches", batch=4)
    # Drained: it returns by itself once nothing is pending.
    await asyncio.wait_for(consumer.run_batches(apply, asyncio.Event(), max_events=100,
                                                on_dead=on_dead, drain=True), timeout=20)
    # Three fetches gathered into one batch; the poison split it into single events.
    assert calls[0] == [f"h{i}" for i in range(10)]
    assert calls[1:] == [[f"h{i}"] for i in range(10)]
    assert stepped_over == [seqs[4], garbled.seq, tail.seq]
    assert (consumer.stats.acked, consumer.stats.dead) == (9, 3)

    async def settled() -> ConsumerInfo | None:  # acks and terms go out without waiting
        info = await js.consumer_info("DF_HOSTS", "batches")
        return info if info.num_ack_pending == 0 else None

    info = await eventually(settled)
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_failed_batch_ends_the_run_and_stays_unacked(js: JetStreamContext) -> None:
    await Publisher(js).publish_many([_announced(f"h{i}") for i in range(3)])

    async def broken(batch: Sequence[Delivered]) -> None:
        raise RuntimeError("disk full")

    consumer = Consumer(js, stream="DF_HOSTS", durable="failing")
    with pytest.raises(RuntimeError, match="disk full"):
        await asyncio.wait_for(consumer.run_batches(broken, asyncio.Event()), timeout=20)
    # Not nak'd: a redelivery after later batches would arrive out of order.
    assert (consumer.stats.acked, consumer.stats.naked, consumer.stats.dead) == (0, 0, 0)
    info = await js.consumer_info("DF_HOSTS", "failing")
    assert info.num_ack_pending == 3 and info.num_redelivered == 0


async def test_a_cluster_url_list_connects_past_a_dead_server(nats_url: str) -> None:
    from damselfly.services.runtime.natsconn import connect

    nc = await connect(f"nats://127.0.0.1:1,{nats_url}", "list-test")
    try:
        assert nc.is_connected
        assert nc.connected_url is not None
        assert nats_url.endswith(f":{nc.connected_url.port}")
    finally:
        await nc.close()
