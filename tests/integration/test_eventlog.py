"""``events dump --since`` against a real nats-server, and the pure parts of the log tools."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime

import nats
import pytest

from damselfly.events.bus import Publisher
from damselfly.events.codec import encode
from damselfly.events.hosts import HostAnnounced
from damselfly.events.ids import new_id
from damselfly.events.streams import ensure_streams
from damselfly.services.runtime.eventlog import dump, event_line, parse_since


def _announced(host: str) -> HostAnnounced:
    return HostAnnounced(id=new_id(), at=time.time(), cluster="since", host_id=host,
                         hostname=host, ip="127.0.0.1", upload_url="http://127.0.0.1:9")


@pytest.mark.anyio
async def test_dump_since_leaves_out_what_the_stream_stored_before(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js)
    publisher = Publisher(js)
    before = await js.get_msg("DF_HOSTS", await publisher.publish(_announced("before")))
    after = await js.get_msg("DF_HOSTS", await publisher.publish(_announced("after")))
    await nc.drain()
    assert before.time is not None and after.time is not None and before.time < after.time
    # --since cuts by the time the stream stored each event: between the two of them.
    cut = (before.time.timestamp() + after.time.timestamp()) / 2
    everything, recent = io.StringIO(), io.StringIO()
    await dump(nats_url, None, everything)
    await dump(nats_url, cut, recent)
    assert '"host_id":"before"' in everything.getvalue()
    assert '"host_id":"after"' in recent.getvalue()
    assert '"host_id":"before"' not in recent.getvalue()


def test_since_takes_durations_and_iso_times() -> None:
    assert parse_since("10m", 1000.0) == 400.0
    assert parse_since("2h", 10_000.0) == 10_000.0 - 7200
    stamp = datetime(2026, 11, 28, 12, 0, tzinfo=UTC).timestamp()
    assert parse_since("2026-11-28T12:00:00", 0.0) == stamp
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday", 0.0)


def test_an_event_line_is_one_readable_line_and_survives_garbage() -> None:
    line = event_line("df.host.since.h.announced", encode(_announced("h")))
    assert "host.announced.v1" in line and "host_id=h" in line and "\n" not in line
    assert "<undecodable:" in event_line("df.host.x", b"\xff")
