"""A publish whose ack is late, or whose stream has no leader for a moment, is asked again
under the same message id (stored once)."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import PubAck
from nats.js.errors import NoStreamResponseError

from damselfly.events.bus import MSG_ID, Publisher
from damselfly.events.hosts import HostLeft

pytestmark = pytest.mark.anyio


class SlowBroker:
    """Acks nothing for the first ``late`` publishes, then acks in order."""

    def __init__(self, late: int) -> None:
        self.late = late
        self.ids: list[str] = []

    async def publish(self, subject: str, payload: bytes, timeout: float,
                      headers: dict[str, str]) -> PubAck:
        self.ids.append(headers[MSG_ID])
        if len(self.ids) <= self.late:
            raise NatsTimeoutError
        return PubAck(stream="DF_HOSTS", seq=len(self.ids))

    async def publish_async(self, subject: str, payload: bytes,
                            headers: dict[str, str]) -> asyncio.Future[PubAck]:
        self.ids.append(headers[MSG_ID])
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        if len(self.ids) > self.late:
            future.set_result(PubAck(stream="DF_HOSTS", seq=len(self.ids)))
        return future


def event(n: int) -> HostLeft:
    return HostLeft(id=f"e{n}", cluster="c", host_id="h")


async def test_a_late_ack_is_asked_again_with_the_same_id() -> None:
    broker = SlowBroker(late=2)
    publisher = Publisher(broker, timeout=0.01, attempts=3)  # type: ignore[arg-type]
    assert await publisher.publish(event(1)) == 3
    assert broker.ids == ["e1", "e1", "e1"]


async def test_no_ack_after_every_attempt_is_a_timeout() -> None:
    publisher = Publisher(SlowBroker(late=9), timeout=0.01, attempts=3)  # type: ignore[arg-type]
    with pytest.raises(NatsTimeoutError):
        await publisher.publish(event(1))


async def test_a_batch_with_late_acks_is_sent_again_whole() -> None:
    broker = SlowBroker(late=1)
    publisher = Publisher(broker, timeout=0.01, attempts=2)  # type: ignore[arg-type]
    assert await publisher.publish_many([event(1), event(2)]) == [3, 4]
    assert broker.ids == ["e1", "e2", "e1", "e2"]
    with pytest.raises(NatsTimeoutError):
        await Publisher(SlowBroker(late=9), timeout=0.01,  # type: ignore[arg-type]
                        attempts=2).publish_many([event(1)])



class LeaderlessBroker(SlowBroker):
    """Answers "no response from stream" (503) to the first ``late`` publishes, as a stream
    does while its cluster elects a new leader."""

    async def publish(self, subject: str, payload: bytes, timeout: float,
                      headers: dict[str, str]) -> PubAck:
        self.ids.append(headers[MSG_ID])
        if len(self.ids) <= self.late:
            raise NoStreamResponseError
        return PubAck(stream="DF_HOSTS", seq=len(self.ids))


async def test_a_stream_without_a_leader_is_asked_again_until_one_answers() -> None:
    broker = LeaderlessBroker(late=5)  # more than ``attempts``: an election is no timeout
    publisher = Publisher(broker, timeout=1.0, attempts=2)  # type: ignore[arg-type]
    assert await publisher.publish(event(1)) == 6
    assert broker.ids == ["e1"] * 6


async def test_a_stream_that_stays_leaderless_fails_the_publish_in_time() -> None:
    publisher = Publisher(LeaderlessBroker(late=99), timeout=0.2,  # type: ignore[arg-type]
                          attempts=2)
    with anyio.fail_after(5), pytest.raises(NoStreamResponseError):
        await publisher.publish(event(1))
