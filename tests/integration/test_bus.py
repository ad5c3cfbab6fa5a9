"""The bus against a real nats-server: streams, dedup, ack/nak, dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from events import HostAnnounced, HostKeepalive, decode
from events.bus import (
    DEAD_REASON,
    DEAD_SEQ,
    Consumer,
    Delivered,
    PoisonEvent,
    Publisher,
    TransientError,
)
from events.ids import new_id
from events.streams import STREAM_NAMES, ensure_streams
from events.subjects import dlq_subject, host_subject

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


async def _run_until(consumer: Consumer, handler, done: asyncio.Event) -> None:  # type: ignore[no-untyped-def]
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
    assert dead[0].headers[DEAD_SEQ] == str(bad.seq)
    reasons = [m.headers[DEAD_REASON] for m in dead]
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
    for _ in range(200):
        if consumer.stats.dead:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert attempts == [1, 2, 3]
    assert consumer.stats.dead == 1


async def test_batches_are_acked_together_and_a_poison_batch_is_split(js: JetStreamContext) -> None:
    events = [_announced(f"h{i}") for i in range(10)]
    await Publisher(js).publish_many(events)
    applied: list[list[str]] = []

    async def apply(batch) -> None:  # type: ignore[no-untyped-def]
        hosts = [d.event.host_id for d in batch]
        if "h4" in hosts:
            raise PoisonEvent("h4 is malformed for this projection")
        applied.append(hosts)

    consumer = Consumer(js, stream="DF_HOSTS", durable="batches")
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run_batches(apply, stop))
    for _ in range(100):
        if consumer.stats.acked + consumer.stats.dead == 10:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert [h for batch in applied for h in batch] == [f"h{i}" for i in range(10) if i != 4]
    assert (consumer.stats.acked, consumer.stats.dead) == (9, 1)


async def test_a_cluster_url_list_connects_past_a_dead_server(nats_url: str) -> None:
    from services.natsconn import connect

    nc = await connect(f"nats://127.0.0.1:1,{nats_url}", "list-test")
    try:
        assert nc.is_connected
        assert nats_url.endswith(f":{nc.connected_url.port}")  # type: ignore[union-attr]
    finally:
        await nc.close()
