"""The broker enforces each role's permissions (``launcher.natsauth``), against a real
``nats-server`` started with the config ``damselfly up`` generates."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from damselfly.events.admin import UserSaved
from damselfly.events.base import Event
from damselfly.events.bus import Publisher
from damselfly.events.codec import EventDecodeError, decode_delivered, encode
from damselfly.events.config import ClusterConfig, ClusterConfigSet
from damselfly.events.hosts import HostAnnounced
from damselfly.events.jobs import JobProgressed, PreheatRequested
from damselfly.events.sched import ParentInfo, ParentsAssigned
from damselfly.events.streams import ensure_streams
from damselfly.events.subjects import job_subject, subject_for
from damselfly.events.tasks import PeerStarted
from damselfly.services.launcher import natsauth
from damselfly.services.launcher.broker import Broker, start_broker
from damselfly.services.runtime.natsconn import CREDS_ENV, connect

TASK = hashlib.sha256(b"https://o/f").hexdigest()


Secured = tuple[Broker, natsauth.Credentials]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secured")
    creds = natsauth.write(root, {"daemon-1": "h1"})
    broker = start_broker(root / "nats", config=creds.config)
    try:
        yield broker, creds
    finally:
        broker.stop()


@asynccontextmanager
async def as_role(secured: Secured, role: str) -> AsyncIterator[Client]:
    broker, creds = secured
    nc = await connect(broker.url, f"test-{role}", creds=str(creds.files[role]))
    try:
        yield nc
    finally:
        await nc.close()


def host() -> HostAnnounced:
    return HostAnnounced(id=f"e{time.monotonic_ns()}", at=time.time(), cluster="c",
                         host_id="h1", hostname="h1", ip="127.0.0.1",
                         upload_url="http://127.0.0.1:1")


FORGERIES: dict[str, Event] = {
    "a decision": ParentsAssigned(id="d1", cluster="c", task_id=TASK, peer_id="h2-x",
                                  trigger_id="t", parents=[ParentInfo(
                                      peer_id="h1-x", host_id="h1", upload_url="http://e")]),
    "a config": ClusterConfigSet(id="c1", cluster="c", config=ClusterConfig()),
    "a root user": UserSaved(id="u1", user_id="evil", role="root", password_hash="x"),
    "a preheat": PreheatRequested(id="p1", job_id="j1", url="https://o/f"),
}


async def refused(nc: Client, event: Event) -> bool:
    try:
        await Publisher(nc.jetstream(), timeout=1.0, attempts=1).publish(event)
    except (NatsTimeoutError, NatsError):
        return True
    return False


@pytest.fixture
async def admin(secured: Secured) -> AsyncIterator[Client]:
    async with as_role(secured, "admin") as nc:
        await ensure_streams(nc.jetstream())
        yield nc


@pytest.mark.anyio
async def test_a_peer_cannot_publish_decisions_config_admin_or_jobs(
        secured: Secured, admin: Client) -> None:
    async with as_role(secured, "peer") as peer:
        assert not await refused(peer, host())  # its own kind of event is stored
        for what, event in FORGERIES.items():
            assert await refused(peer, event), what
    stored = await admin.jetstream().stream_info("DF_SCHED")
    assert stored.state.messages == 0
    with pytest.raises(NatsError):
        await admin.jetstream().get_last_msg("DF_ADMIN", "df.admin.user.evil.saved")


@pytest.mark.anyio
async def test_a_daemon_speaks_only_for_its_own_host(
        secured: Secured, admin: Client) -> None:
    async with as_role(secured, "daemon-1") as daemon:  # host h1
        assert not await refused(daemon, host())
        assert not await refused(daemon, PeerStarted(id="s1", cluster="c", task_id=TASK,
                                                     peer_id="h1-0a0b0c0d"))
        other = HostAnnounced(id="o1", cluster="c", host_id="h2", hostname="h2",
                              ip="127.0.0.1", upload_url="http://127.0.0.1:2")
        assert await refused(daemon, other)
        assert await refused(daemon, PeerStarted(id="s2", cluster="c", task_id=TASK,
                                                 peer_id="h2-0a0b0c0d"))
        # Under its own host token, an event naming another host's peer is published, but
        # every consumer refuses it (codec.decode_delivered).
        forged = PeerStarted(id="s3", cluster="c", task_id=TASK, peer_id="h2-0a0b0c0d")
        own = subject_for(forged).replace(".h2.h2-", ".h1.h2-")
        await daemon.jetstream().publish(own, encode(forged))
        stored = await admin.jetstream().get_last_msg("DF_TASKS", own)
        assert stored.data is not None
        with pytest.raises(EventDecodeError, match="not on its own subject"):
            decode_delivered(own, stored.data)
        # Job progress too: its own host's, never another's (it once could report any
        # host's part of any job).
        assert not await refused(daemon, progress("h1"))
        assert await refused(daemon, progress("h2"))
        legacy = job_subject("j1", "progressed")  # the subject before progress had hosts
        assert await refused_raw(daemon, legacy, encode(progress("h1")))


def progress(host_id: str) -> JobProgressed:
    return JobProgressed(id=f"jp-{host_id}-{time.monotonic_ns()}", job_id="j1",
                         host_id=host_id, task_id=TASK, state="succeeded")


async def refused_raw(nc: Client, subject: str, data: bytes) -> bool:
    try:
        await nc.jetstream().publish(subject, data, timeout=1.0)
    except (NatsTimeoutError, NatsError):
        return True
    return False


@pytest.mark.anyio
async def test_an_observer_reads_but_never_publishes_nor_reads_the_admin_stream(
        secured: Secured, admin: Client) -> None:
    await Publisher(admin.jetstream()).publish(host())
    async with as_role(secured, "observer") as observer:
        assert await refused(observer, host())
        sub = await observer.jetstream().pull_subscribe("df.host.>", stream="DF_HOSTS")
        assert await sub.fetch(1, timeout=5)
        with pytest.raises(NatsError):
            await observer.jetstream().pull_subscribe("df.admin.>", stream="DF_ADMIN")


@pytest.mark.anyio
async def test_a_job_publisher_publishes_preheats_and_nothing_else(
        secured: Secured, admin: Client) -> None:
    async with as_role(secured, "jobs") as jobs:
        assert not await refused(jobs, PreheatRequested(id="p2", job_id="j2", url="https://o/f"))
        assert await refused(jobs, host())
        assert await refused(jobs, FORGERIES["a decision"])


@pytest.mark.anyio
async def test_no_credentials_or_a_wrong_password_is_one_clear_line(
        secured: Secured, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    broker, _ = secured
    wrong = tmp_path / "wrong.creds"
    wrong.write_text("peer:not-the-password\n")
    monkeypatch.setenv(CREDS_ENV, str(wrong))
    with pytest.raises(ConnectionError, match="refuses these credentials"):
        await connect(broker.url, "test-wrong", first_timeout=5)
    monkeypatch.delenv(CREDS_ENV)
    with pytest.raises((ConnectionError, NatsError)):
        nc = await nats.connect(broker.url, connect_timeout=2, max_reconnect_attempts=0,
                                allow_reconnect=False)
        await nc.close()
    assert oct(natsauth.write(tmp_path).files["peer"].stat().st_mode & 0o777) == "0o600"
