"""The scheduler's shell: partition leases, consumers, publishing decisions, snapshots.

Each partition this scheduler owns has a ``PartitionWorker`` with its own core state. The
worker folds the partition's task events *and* the cluster's host and config events in the
order the log stored them — stream time, then stream name, then sequence, the order of
``damselfly events dump`` — so that replaying a dump reproduces its decisions. It publishes
what the core decided (ids derived from the trigger, so a replayed trigger is deduplicated
by JetStream). Its position in each stream is saved with the state in a periodic snapshot
(a KV bucket), never acked to the server: a new owner resumes from the snapshot, replays the
rest, and republishes decisions that JetStream then drops as duplicates.

Every worker, and the watcher of silent hosts, runs in the scheduler's one task group; a
worker is stopped by its own event and says when it has finished with another.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeAlias

import anyio
import msgspec
from anyio.abc import TaskGroup
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from damselfly.events.base import Event
from damselfly.events.bus import Publisher, dead_letter
from damselfly.events.codec import EventDecodeError, decode_delivered
from damselfly.events.grants import GRANT_TTL, GrantSigner
from damselfly.events.hosts import HostAnnounced, HostKeepalive, HostLeft, silence_limit
from damselfly.events.ids import derived_id
from damselfly.events.sched import ParentsAssigned
from damselfly.events.streams import (
    CONFIG_STREAM,
    DEDUP_WINDOW,
    HOSTS_STREAM,
    LEASE_BUCKET,
    MEMBER_BUCKET,
    SNAPSHOT_BUCKET,
    TASKS_STREAM,
    ensure_streams,
)
from damselfly.events.subjects import (
    PARTITIONS,
    cluster_config_subject,
    host_filter,
    name_of,
    task_filter,
)
from damselfly.services.scheduler import core
from damselfly.services.scheduler.lease import Leases, Members, lease_key, open_bucket
from damselfly.services.scheduler.metrics import SchedulerMetrics
from damselfly.services.scheduler.relay import Relay

log = logging.getLogger("damselfly.scheduler")

# A decision for a trigger stored this long before the newest event of the log (when an owner
# took over) was published then (and is out of the dedup window now) or comes too late for a
# peer that already fell back to the origin. Server time only: no clock of ours involved.
STALE_AFTER: Final = DEDUP_WINDOW - 20.0

# Missed heartbeats are how an ordered consumer notices that a restarted server lost it.
HEARTBEAT: Final = 1.0
MAX_BUFFERED: Final = 4096  # task events pushed to a partition and not folded yet

Key = tuple[float, str, int]
# The process's stop (set by a signal) or a partition's own.
Stop: TypeAlias = asyncio.Event | anyio.Event


async def finish_or_abandon(work: Awaitable[None], stop: Stop, grace: float = 2.0) -> bool:
    """Await ``work``; once ``stop`` is set give it ``grace`` seconds more, then cancel it.

    True when it finished (its exception, if any, is raised); False when abandoned, as when
    the server is away and every call waits out its timeout.
    """
    finished = False
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        async def abandon() -> None:
            await stop.wait()
            await anyio.sleep(grace)
            tg.cancel_scope.cancel()

        tg.start_soon(abandon)
        try:
            await work
            finished = True
        except Exception as exc:  # noqa: BLE001 - raised below, not wrapped in a group
            failure = exc
        tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return finished


async def _stopped_within(stop: Stop, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``stop``; True when it is set."""
    with anyio.move_on_after(timeout):
        await stop.wait()
    return stop.is_set()


async def _quietly(work: Awaitable[None]) -> None:
    """Await ``work`` for its effect only: on the way out, a failed call changes nothing."""
    with contextlib.suppress(Exception):
        await work


class Unpublished(Exception):
    """Told to stop while decisions could not be published: the state is ahead of the log."""


class Snapshot(msgspec.Struct, kw_only=True):
    """A partition's state and how far into each stream it has folded."""

    seqs: dict[str, int]
    state: core.State


@dataclass(order=True)
class Logged:
    """An event with its place in the log: (stream time, stream, sequence) orders the log."""

    key: Key
    event: Event = field(compare=False)
    msg: Msg = field(compare=False, repr=False)


class Feed:
    """One stream's events for a partition, from a sequence on, without server-side acks.

    The position lives in the partition's snapshot next to the state it produced (a new owner
    resumes there), so the server need not track acks; it only hands out what is asked for.
    Undecodable messages are copied to the dead-letter subject and skipped.
    """

    def __init__(self, js: JetStreamContext, stream: str, subjects: list[str],
                 after_seq: int, metrics: SchedulerMetrics, part: int | str) -> None:
        self._js = js
        self._metrics, self._lag = metrics, metrics.lag.labels(stream, str(part))
        self.stream = stream
        self._subjects = subjects
        self._after = after_seq
        self._held: list[Logged] = []  # fetched, not yet handed out
        self._sub: JetStreamContext.PullSubscription | None = None

    async def _subscription(self) -> JetStreamContext.PullSubscription:
        if self._sub is None:
            policy = DeliverPolicy.BY_START_SEQUENCE if self._after else DeliverPolicy.ALL
            config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=policy,
                                    opt_start_seq=self._after + 1 if self._after else None,
                                    filter_subjects=self._subjects, inactive_threshold=60.0)
            self._sub = await self._js.pull_subscribe("", stream=self.stream, config=config)
        return self._sub

    async def drain(self) -> list[Logged]:
        """Every event stored before this call and not handed out yet.

        Raises ``nats.errors.Error`` when the server is away; what was fetched is kept for
        the next call and the consumer is made again from where it stopped.
        """
        try:
            sub = await self._subscription()
            while (pending := (await sub.consumer_info()).num_pending or 0) > 0:
                self._lag.set(pending)
                for msg in await sub.fetch(min(pending, 1024), timeout=5.0):
                    await self._hold(msg)
            self._lag.set(0)
        except (TimeoutError, NatsError):
            await self.close()
            raise
        out, self._held = self._held, []
        return out

    async def _hold(self, msg: Msg) -> None:
        self._after = msg.metadata.sequence.stream
        if logged := await _logged(self._js, msg, self.stream, self._metrics):
            self._held.append(logged)

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except (TimeoutError, NatsError):
                pass  # the server is away; it drops the inactive consumer by itself


class HostLog:
    """The cluster's host announcements and departures, read once by this scheduler (a push
    ordered consumer) and handed to each of its partitions from that partition's own
    position. Each partition pulling them itself read every host event 16 times: at 15,000
    hosts a scheduler took 23 s to learn the hosts, and a new owner as long before it
    decided anything. Keepalives are left out: the core ignores them and they are most of
    DF_HOSTS."""

    def __init__(self, js: JetStreamContext, cluster: str, metrics: SchedulerMetrics) -> None:
        self._js = js
        self._subjects = [host_filter(cluster, name=name_of(HostAnnounced)),
                          host_filter(cluster, name=name_of(HostLeft))]
        self._metrics = metrics
        self._events: list[Logged] = []  # in stream order
        # The last message received, as its consumer counts it: the server's count of what
        # it delivered is comparable with it (its stream position is not: past the last
        # match it moves on to the stream's end, a keepalive this consumer never gets).
        self._received: tuple[str, int] = ("", 0)
        self._arrived = asyncio.Event()
        self._lag = metrics.lag.labels(HOSTS_STREAM, "shared")
        self._sub: JetStreamContext.PushSubscription | None = None
        self._opening = asyncio.Lock()

    async def _on_msg(self, msg: Msg) -> None:
        meta = msg.metadata
        if logged := await _logged(self._js, msg, HOSTS_STREAM, self._metrics):
            self._events.append(logged)
        self._received = (meta.consumer or "", meta.sequence.consumer or 0)
        self._arrived.set()
        self._arrived = asyncio.Event()

    async def drain(self) -> None:
        """Wait until every host event stored before this call has arrived. Raises
        ``nats.errors.Error`` or ``TimeoutError`` when the server is away."""
        async with self._opening:
            if self._sub is None:
                self._sub = await self._js.subscribe(
                    "", stream=HOSTS_STREAM, cb=self._on_msg, ordered_consumer=True,
                    config=ConsumerConfig(filter_subjects=self._subjects),
                    pending_msgs_limit=1 << 20, idle_heartbeat=HEARTBEAT)
        sub = self._sub
        with anyio.fail_after(30):
            while (info := await sub.consumer_info()).num_pending:
                self._lag.set(info.num_pending or 0)
                await anyio.sleep(0.05)  # the server is still sending (a new log, a backlog)
            self._lag.set(0)
            delivered = (info.delivered.consumer_seq or 0) if info.delivered else 0
            while delivered and not self._has(info.name, delivered):
                await self._arrived.wait()

    def _has(self, consumer: str, delivered: int) -> bool:
        """Whether the message ``consumer`` delivered as its ``delivered``-th has arrived
        (after an ordered consumer's reset, its new consumer's count starts again)."""
        name, seq = self._received
        return name == consumer and seq >= delivered

    def after(self, seq: int) -> list[Logged]:
        start = bisect.bisect_right(self._events, seq, key=lambda e: e.key[2])
        return self._events[start:]

    def view(self, after_seq: int) -> HostView:
        return HostView(self, after_seq)

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        await _unsubscribe_quietly(sub)


class HostView:
    """One partition's reading of the shared ``HostLog`` (a ``Feed`` to the partition)."""

    def __init__(self, log: HostLog, after_seq: int) -> None:
        self._log, self._after = log, after_seq

    async def drain(self) -> list[Logged]:
        await self._log.drain()
        out = self._log.after(self._after)
        if out:
            self._after = out[-1].key[2]
        return out

    async def close(self) -> None:
        """The log stays open for the other partitions."""


async def _logged(js: JetStreamContext, msg: Msg, stream: str,
                  metrics: SchedulerMetrics) -> Logged | None:
    """The message's event in its place in the log, or None once an undecodable one is
    copied to the dead-letter subject."""
    meta = msg.metadata
    try:
        event = decode_delivered(msg.subject, msg.data)
    except EventDecodeError as exc:
        await _dead_letter_quietly(js, msg, f"undecodable: {exc}", metrics)
        return None
    return Logged((meta.timestamp.timestamp(), stream, meta.sequence.stream), event, msg)


async def _unsubscribe_quietly(sub: JetStreamContext.PushSubscription | None) -> None:
    """End a push subscription; a server that is away drops its consumer by itself."""
    if sub is not None:
        with contextlib.suppress(TimeoutError, NatsError):
            await sub.unsubscribe()


async def _dead_letter_quietly(js: JetStreamContext, msg: Msg, reason: str,
                               metrics: SchedulerMetrics) -> None:
    """Copy a message the partition skips to the dead-letter subject, if the server lets us."""
    metrics.dead_lettered.labels(msg.metadata.stream).inc()
    try:
        await dead_letter(js, msg, reason)
    except (TimeoutError, NatsError) as err:
        log.error("skipped %s (%s); no dead-letter copy: %s", msg.subject, reason, err)


class LiveFeed:
    """A partition's task events pushed as they are stored (an ordered consumer, no acks).

    Push delivery, because nats-py's pull ``fetch`` costs a task and a timer per message and
    would cap the fold rate well below what the core can do.
    """

    def __init__(self, js: JetStreamContext, subject: str, after_seq: int,
                 metrics: SchedulerMetrics, part: int) -> None:
        self._js = js
        self._metrics, self._lag = metrics, metrics.lag.labels(TASKS_STREAM, str(part))
        self._subject = subject
        self._after = after_seq
        self._buffer: list[Logged] = []
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._sub: JetStreamContext.PushSubscription | None = None

    async def _on_msg(self, msg: Msg) -> None:
        self._lag.set(msg.metadata.num_pending)
        logged = await _logged(self._js, msg, TASKS_STREAM, self._metrics)
        if logged is None:
            return
        self._buffer.append(logged)
        self._arrived.set()
        if len(self._buffer) >= MAX_BUFFERED:
            # Holding the callback holds flow control: the server pauses instead of filling
            # memory while a new owner replays a long backlog.
            self._room.clear()
            await self._room.wait()

    async def fetch(self, batch: int, timeout: float) -> list[Logged]:
        """Up to ``batch`` events; waits up to ``timeout`` when none has arrived."""
        if self._sub is None:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=self._after + 1) if self._after else None
            self._sub = await self._js.subscribe(
                self._subject, stream=TASKS_STREAM, cb=self._on_msg, ordered_consumer=True,
                config=config, pending_msgs_limit=1 << 20, idle_heartbeat=HEARTBEAT)
        if not self._buffer:
            with anyio.move_on_after(timeout) as waited:
                await self._arrived.wait()
            if waited.cancelled_caught:
                return []
        out = self._buffer[:batch]
        del self._buffer[:batch]
        if not self._buffer:
            self._arrived.clear()
        if len(self._buffer) < MAX_BUFFERED:
            self._room.set()
        return out

    def unread(self, items: list[Logged]) -> None:
        """Put fetched events back, first in line, when the round could not use them."""
        if items:
            self._buffer[:0] = items
            self._arrived.set()

    async def close(self) -> None:
        sub, self._sub = self._sub, None
        await _unsubscribe_quietly(sub)


class PartitionWorker:
    """Folds one partition and publishes its decisions while this scheduler holds its lease."""

    def __init__(self, nc: Client, publisher: Publisher, snapshots: KeyValue,
                 cluster: str, part: int, metrics: SchedulerMetrics, hosts: HostLog, *,
                 batch: int = 256, poll: float = 0.5, snapshot_every: float = 5.0,
                 grants: GrantSigner | None = None) -> None:
        self._nc = nc
        self._grants = grants
        self._log = logging.LoggerAdapter(log, {"partition": part})  # a field of JSON lines
        self._metrics = metrics
        self._hosts = hosts
        self._answering: list[float] = []  # when each decision's cause was stored
        self._js = nc.jetstream()
        self._publisher = publisher
        self._snapshots = snapshots
        self.cluster = cluster
        self.part = part
        self._batch = batch
        self._poll = poll
        self._snapshot_every = snapshot_every
        self.state = core.new_state(cluster)
        self.seqs = {TASKS_STREAM: 0, HOSTS_STREAM: 0, CONFIG_STREAM: 0}
        self.folded = 0
        self._stale_before = float("-inf")
        self._side: list[Logged] = []
        self._saved_seqs: dict[str, int] = {}
        self._relay = Relay()

    @property
    def snapshot_key(self) -> str:
        return lease_key(self.cluster, self.part)

    async def restore(self) -> None:
        """Start from the partition's last snapshot, if there is one."""
        try:
            entry = await self._snapshots.get(self.snapshot_key)
        except KeyNotFoundError:
            return
        if entry.value:
            try:
                snap = msgspec.msgpack.decode(zlib.decompress(entry.value), type=Snapshot)
            except (zlib.error, msgspec.DecodeError) as exc:  # e.g. an older state layout
                self._log.warning("partition %d: unusable snapshot (%s); replaying from the "
                                  "start", self.part, exc)
                return
            self.state, self.seqs = snap.state, dict(snap.seqs)
            self._saved_seqs = dict(self.seqs)
            self._log.info("partition %d restored at %s", self.part, self.seqs)

    async def _find_stale_bound(self) -> None:
        try:
            last = (await self._js.stream_info(TASKS_STREAM)).state.last_seq
            newest = (await self._js.get_msg(TASKS_STREAM, seq=last)).time if last else None
        except (TimeoutError, NatsError) as exc:
            self._log.warning("partition %d: no newest event (%s); republishing whatever "
                              "replays", self.part, exc)
            return
        if newest is not None:
            self._stale_before = newest.timestamp() - STALE_AFTER

    async def save(self) -> None:
        """Write a snapshot when anything was folded since the last one."""
        if self.seqs == self._saved_seqs or not self._nc.is_connected:
            return
        data = zlib.compress(msgspec.msgpack.encode(Snapshot(seqs=self.seqs, state=self.state)))
        try:
            await self._snapshots.put(self.snapshot_key, data)
        except NatsError as exc:  # too big or the server is away: replay just runs longer
            self._log.warning("partition %d: snapshot of %d bytes not saved: %s", self.part,
                              len(data), exc)
            return
        self._saved_seqs = dict(self.seqs)

    async def run(self, stop: Stop, *, on_stop_save: Callable[[], bool]) -> None:
        """Fold and decide until ``stop``; then save a snapshot if ``on_stop_save()``."""
        await self.restore()
        await self._find_stale_bound()
        tasks = LiveFeed(self._js, task_filter(self.cluster, self.part), self.seqs[TASKS_STREAM],
                         self._metrics, self.part)
        feeds: list[Feed | HostView] = [
            self._hosts.view(self.seqs[HOSTS_STREAM]),
            Feed(self._js, CONFIG_STREAM, [cluster_config_subject(self.cluster)],
                 self.seqs[CONFIG_STREAM], self._metrics, self.part)]
        last_save = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    if not await finish_or_abandon(self.round(tasks, feeds, stop), stop):
                        return  # abandoned mid-round: no snapshot past what was published
                except Unpublished:
                    return  # no snapshot past decisions that never went out
                except (TimeoutError, NatsError) as exc:
                    self._log.warning("partition %d: %s; retrying", self.part,
                                      exc or type(exc).__name__)
                    await _stopped_within(stop, 1.0)
                    continue
                if time.monotonic() - last_save >= self._snapshot_every:
                    await self.save()
                    last_save = time.monotonic()
            if on_stop_save():
                await self.save()
        finally:
            if self._nc.is_connected:  # else the server drops the idle consumers by itself
                await tasks.close()
                for feed in feeds:
                    await feed.close()

    async def round(self, tasks: LiveFeed, feeds: list[Feed | HostView], stop: Stop) -> None:
        """One fetch: fold task and side events in log order, then publish the decisions."""
        known = self._side[-1].key if self._side else None
        relay_due = self._relay.due(time.monotonic())
        items = await tasks.fetch(self._batch, self._poll if relay_due is None
                                  else min(self._poll, relay_due))
        drained, failure = await _drain_together(feeds)
        for side in drained:
            bisect.insort(self._side, side)
        if failure is not None:
            tasks.unread(items)
            raise failure
        # Side events stored after the last task event fetched wait for a later task event,
        # or for a poll that found none: by then every task event stored before the side
        # events drained last round has been pushed to us.
        horizon = items[-1].key if items else known
        out: list[Event] = []
        for item in items:
            await self._fold_side(item.key, out, inclusive=False)
            out += await self._fold(item)
        if horizon is not None:
            await self._fold_side(horizon, out, inclusive=True)
        await self._publish(out, stop)
        await self._publish_relays()

    async def _fold_side(self, upto: Key, out: list[Event], *, inclusive: bool) -> None:
        n = 0
        for side in self._side:
            if side.key > upto or (side.key == upto and not inclusive):
                break
            n += 1
        folding, self._side = self._side[:n], self._side[n:]
        for side in folding:
            out += await self._fold(side)

    async def _fold(self, item: Logged) -> list[Event]:
        """The decisions ``item`` causes; an event the core fails on is skipped (and copied to
        the dead-letter subject) rather than stopping the partition on every restart."""
        if item.key[2] <= self.seqs[item.key[1]]:
            return []
        try:
            return self._step(item)
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, dead-lettered
            self._log.exception("partition %d: core failed on %s", self.part,
                                type(item.event).__name__)
            await _dead_letter_quietly(self._js, item.msg,
                                       f"scheduler core: {type(exc).__name__}: {exc}",
                                       self._metrics)
            return []

    def _step(self, item: Logged) -> list[Event]:
        stored, stream, seq = item.key
        self.seqs[stream] = seq
        self.folded += 1
        self._metrics.folded.labels(stream).inc()
        decisions = core.step(self.state, item.event)
        if stored < self._stale_before:
            return []
        self._relay.note(item.event)
        self._answering += [stored] * len(decisions)
        return decisions

    async def _publish(self, out: list[Event], stop: Stop) -> None:
        now = time.time()  # a decision happens when it is made; replay ignores ``at``
        out = [self._granted(msgspec.structs.replace(d, at=now)) for d in out]
        answering, self._answering = self._answering, []
        while out:
            try:
                await self._publisher.publish_many(out)
                self._metrics.decisions.inc(len(out))
                published = time.time()
                for stored in answering:
                    self._metrics.decision_latency.observe(max(published - stored, 0.0))
                return
            except (TimeoutError, NatsError) as exc:
                if stop.is_set():
                    raise Unpublished(f"{len(out)} decisions") from exc
                self._log.warning("partition %d: publishing %d decisions failed (%s); retrying",
                                  self.part, len(out), exc)
                await anyio.sleep(0.5)

    def _granted(self, decision: Event) -> Event:
        """A ``ParentsAssigned`` with an upload grant for each parent (the core stays pure:
        a grant is a signature and an expiry, not a choice, so replay leaves it out)."""
        if self._grants is None or not isinstance(decision, ParentsAssigned):
            return decision
        expires = decision.at + GRANT_TTL
        parents = [msgspec.structs.replace(p, grant=self._grants.grant(
            decision.task_id, decision.peer_id, p.host_id, expires)) for p in decision.parents]
        return msgspec.structs.replace(decision, parents=parents)

    async def _publish_relays(self) -> None:
        """Relay the parents' new pieces to their children when a relay is due. A relay
        that cannot go out is dropped, not retried: the next one, the decisions' bitmaps
        and a child's stall timer cover what it would have said."""
        relays = self._relay.flush(self.state, time.monotonic())
        if not relays:
            return
        now = time.time()
        try:
            await self._publisher.publish_many(
                msgspec.structs.replace(r, at=now) for r in relays)
        except (TimeoutError, NatsError) as exc:
            self._log.warning("partition %d: %d relays not published (%s)", self.part,
                              len(relays), exc)
            return
        self._metrics.relays.inc(len(relays))


async def _drain_together(feeds: list[Feed | HostView]
                          ) -> tuple[list[Logged], Exception | None]:
    """Drain every feed at once: what those that answered gave, and the last failure."""
    results: list[list[Logged] | Exception] = [[] for _ in feeds]

    async def drain(i: int) -> None:
        try:
            results[i] = await feeds[i].drain()
        except Exception as exc:  # noqa: BLE001 - returned; the other feed keeps its events
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(feeds)):
            tg.start_soon(drain, i)
    drained: list[Logged] = []
    failure: Exception | None = None
    for result in results:
        if isinstance(result, Exception):
            failure = result
        else:
            drained += result
    return drained, failure


@dataclass
class _Owned:
    revision: int
    renewed: float
    worker: PartitionWorker
    stop: anyio.Event = field(default_factory=anyio.Event)
    finished: anyio.Event = field(default_factory=anyio.Event)  # set when the worker ends
    shutting_down: bool = False


class Scheduler:
    """Leases its fair share of the partitions (all of them when alone, a ``1/n`` share of
    ``n`` live schedulers), runs a worker for each, and declares silent hosts dead."""

    def __init__(self, nc: Client, *, cluster: str, scheduler_id: str, lease_ttl: float = 6.0,
                 keepalive_timeout: float = 30.0, data_dir: Path | None = None,
                 poll: float = 0.5, snapshot_every: float = 5.0,
                 metrics: SchedulerMetrics | None = None,
                 grants: GrantSigner | None = None) -> None:
        self._nc = nc
        self._grants = grants
        self._js = nc.jetstream()
        self.metrics = metrics or SchedulerMetrics()
        self._hosts = HostLog(self._js, cluster, self.metrics)
        self.cluster = cluster
        self.scheduler_id = scheduler_id
        self._ttl = lease_ttl
        self._keepalive_timeout = keepalive_timeout
        self._data_dir = data_dir
        self._poll = poll
        self._snapshot_every = snapshot_every
        self._publisher = Publisher(self._js)
        self.owned: dict[int, _Owned] = {}
        self.metrics.count_partitions(lambda: len(self.owned))
        self._share = PARTITIONS
        self._retired: list[_Owned] = []  # workers told to stop, maybe still finishing

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], None] | None = None) -> None:
        """Run until ``stop`` is set; then save snapshots and give the leases back.

        Raises ``nats.js.errors.APIError`` when the streams or buckets cannot be set up.
        """
        await ensure_streams(self._js)
        leases = Leases(await open_bucket(self._js, LEASE_BUCKET, ttl=self._ttl),
                        self.scheduler_id)
        members = Members(await open_bucket(self._js, MEMBER_BUCKET, ttl=self._ttl),
                          self.cluster, self.scheduler_id)
        snapshots = await open_bucket(self._js, SNAPSHOT_BUCKET)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._declare_silent_hosts_dead, stop, name="silent hosts")
            try:
                while not stop.is_set():
                    await finish_or_abandon(self._tend(tg, members, leases, snapshots), stop)
                    if on_ready is not None:
                        self._write_status()
                        on_ready()
                        on_ready = None
                    await _stopped_within(stop, self._ttl / 3)
            finally:
                # Shielded: the workers' last snapshots and the leases are worth the wait
                # even when the caller cancels (each call below has its own timeout).
                with anyio.CancelScope(shield=True):
                    await self._shut_down(members, leases)
                    if self._nc.is_connected:  # else the server drops the idle consumer
                        await self._hosts.close()
                tg.cancel_scope.cancel()  # the watcher, when it did not see ``stop``

    async def _shut_down(self, members: Members, leases: Leases) -> None:
        """Stop every worker, wait until each has saved its snapshot, give the leases back."""
        for owned in self.owned.values():
            owned.shutting_down = True
            owned.stop.set()
        for owned in [*self.owned.values(), *self._retired]:
            await owned.finished.wait()
        if self._nc.is_connected:  # else the leases and membership expire by themselves
            async with anyio.create_task_group() as tg:
                tg.start_soon(_quietly, members.leave())
                for part, owned in self.owned.items():
                    tg.start_soon(_quietly,
                                  leases.give_back(lease_key(self.cluster, part), owned.revision))
        self.owned.clear()

    async def _tend(self, tg: TaskGroup, members: Members, leases: Leases,
                    snapshots: KeyValue) -> None:
        try:
            self._share = -(-PARTITIONS // await members.heartbeat())
        except (TimeoutError, NatsError) as exc:
            log.warning("membership heartbeat: %s", exc)
        for part in range(PARTITIONS):
            try:
                changed = await self._tend_one(tg, part, leases, snapshots)
            except (TimeoutError, NatsError) as exc:
                log.warning("lease of partition %d: %s", part, exc)
                owned = self.owned.get(part)
                changed = owned is not None and time.monotonic() - owned.renewed > self._ttl
                if changed:
                    self._retire(part)  # not renewed within the TTL: someone else may own it
            if changed:
                self._write_status()
        for part in sorted(self.owned)[self._share:]:
            await self._hand_over(part, leases)

    async def _hand_over(self, part: int, leases: Leases) -> None:
        """Give a partition beyond our share back, with a fresh snapshot for the next owner."""
        owned = self._retire(part, save=True)
        await owned.finished.wait()
        with contextlib.suppress(TimeoutError, NatsError):
            await leases.give_back(lease_key(self.cluster, part), owned.revision)
        log.info("scheduler %s handed partition %d over", self.scheduler_id, part)
        self._write_status()

    async def _tend_one(self, tg: TaskGroup, part: int, leases: Leases,
                        snapshots: KeyValue) -> bool:
        """Take, renew or give back one partition's lease; True when ownership changed."""
        key = lease_key(self.cluster, part)
        owned = self.owned.get(part)
        if owned is None:
            if len(self.owned) >= self._share:
                return False
            revision = await leases.take(key)
            if revision is None:
                return False
            self._start(tg, part, revision, snapshots)
            return True
        if owned.finished.is_set():  # the worker died: give the partition back for a fresh start
            await leases.give_back(key, owned.revision)
            del self.owned[part]
            return True
        revision = await leases.renew(key, owned.revision)
        if revision is None:
            self._retire(part)
            return True
        owned.revision, owned.renewed = revision, time.monotonic()
        return False

    def _retire(self, part: int, *, save: bool = False) -> _Owned:
        """Tell a partition's worker to stop (saving a snapshot first with ``save``); the
        shutdown waits for it if it has not ended by then."""
        owned = self.owned.pop(part)
        owned.shutting_down = save
        owned.stop.set()
        self._retired = [o for o in self._retired if not o.finished.is_set()] + [owned]
        return owned

    def _start(self, tg: TaskGroup, part: int, revision: int, snapshots: KeyValue) -> None:
        worker = PartitionWorker(self._nc, self._publisher, snapshots, self.cluster, part,
                                 self.metrics, self._hosts, poll=self._poll,
                                 snapshot_every=self._snapshot_every, grants=self._grants)
        owned = _Owned(revision, time.monotonic(), worker)
        self.owned[part] = owned
        tg.start_soon(_run_worker, owned, name=f"partition {part}")
        log.info("scheduler %s owns partition %d", self.scheduler_id, part,
                 extra={"partition": part})

    def _write_status(self) -> None:
        if self._data_dir is None:
            return
        self._data_dir.mkdir(parents=True, exist_ok=True)
        path = self._data_dir / "partitions.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"scheduler_id": self.scheduler_id, "cluster": self.cluster,
                                   "partitions": sorted(self.owned)}))
        tmp.replace(path)

    async def _declare_silent_hosts_dead(self, stop: Stop) -> None:
        """Publish ``HostLeft`` for hosts silent past the keepalive timeout, into the log, so
        that a replay sees the same departure at the same place. A failure ends only this
        watcher (and is logged), not the scheduler."""
        try:
            await self._watch_hosts(stop)
        except Exception:
            log.exception("silent-host watcher failed; no more hosts are declared dead")

    async def _watch_hosts(self, stop: Stop) -> None:
        seen: dict[str, tuple[float, str]] = {}
        limits: dict[str, float] = {}  # how long each may stay silent (its interval said)

        async def on_host(msg) -> None:  # type: ignore[no-untyped-def]
            try:
                event = decode_delivered(msg.subject, msg.data)
            except EventDecodeError:
                return
            if isinstance(event, HostAnnounced | HostKeepalive):
                seen[event.host_id] = (time.monotonic(), event.id)
                limits[event.host_id] = silence_limit(event.interval, self._keepalive_timeout)
            elif isinstance(event, HostLeft):
                seen.pop(event.host_id, None)

        sub = await self._nc.subscribe(host_filter(self.cluster), cb=on_host)
        try:
            period = min(self._keepalive_timeout / 4, 1.0)
            checked = time.monotonic()
            while not await _stopped_within(stop, period):
                now = time.monotonic()
                # Not their fault: their keepalives cannot reach us, or this process stalled
                # and has not read what arrived meanwhile.
                stalled, checked = now - checked > period + 2.0, now
                if stalled or not self._nc.is_connected:
                    for host_id, (_, last_id) in list(seen.items()):
                        seen[host_id] = (now, last_id)
                    continue
                for owned in list(self.owned.values()):
                    hosts = owned.worker.state.hosts
                    for host_id in hosts.keys() - seen.keys():  # a set difference: C speed
                        seen[host_id] = (now, "unseen")
                        limits.setdefault(host_id, silence_limit(hosts[host_id].interval,
                                                                 self._keepalive_timeout))
                if not self.owned:
                    continue
                for host_id, (last, last_id) in list(seen.items()):
                    if now - last > limits.get(host_id, self._keepalive_timeout):
                        seen.pop(host_id)
                        limits.pop(host_id, None)
                        left = HostLeft(id=derived_id(host_id, "keepalive-timeout", last_id),
                                        at=time.time(), cluster=self.cluster, host_id=host_id,
                                        reason="keepalive timeout")
                        try:
                            await self._publisher.publish(left)
                            log.info("declared host %s dead (keepalive timeout)", host_id,
                                     extra={"host_id": host_id})
                        except (TimeoutError, NatsError) as exc:
                            log.warning("could not declare %s dead: %s", host_id, exc)
        finally:
            await sub.unsubscribe()


async def _run_worker(owned: _Owned) -> None:
    """Run a partition's worker and set ``owned.finished`` when it ends, however it ends.
    A failure is logged, not raised: the next tend gives the partition back for a fresh
    start instead of ending the scheduler."""
    try:
        await owned.worker.run(owned.stop, on_stop_save=lambda: owned.shutting_down)
    except Exception:
        log.exception("partition %d worker failed", owned.worker.part)
    finally:
        owned.finished.set()
