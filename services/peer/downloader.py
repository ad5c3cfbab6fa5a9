"""One peer's download of one task, following the protocol in ``docs/protocol.md``.

Register, wait for the scheduler's decision, then either fetch pieces from the parents it
names (rarest first, several in flight, each verified against the source peers' digests) or
fetch from the origin. No decision in time means back to source. Bytes are streamed to the
task file in worker threads, so memory stays flat and the event loop stays free.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Final, Literal, TypedDict
from urllib.parse import urlsplit

import anyio
from anyio import from_thread, to_thread
from anyio.abc import TaskGroup
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from damselfly.events.base import Event
from damselfly.events.bus import Publisher, decoded
from damselfly.events.fields import MAX_BATCH
from damselfly.events.ids import new_id
from damselfly.events.sched import (
    BackToSourceOrdered,
    HoldingsRelayed,
    ParentsAssigned,
    PeerQueued,
    ScheduleFailed,
)
from damselfly.events.secrets import public_headers, public_url
from damselfly.events.subjects import sched_subject
from damselfly.events.taskid import geometry_error, piece_length_for, piece_range
from damselfly.events.tasks import (
    BackToSourceStarted,
    FinishedPiece,
    PeerFailed,
    PeerLeft,
    PeerRegistered,
    PeerStarted,
    PeerSucceeded,
    PieceFailed,
    PiecesFinished,
    RescheduleRequested,
    TaskMetadataReported,
)
from damselfly.services.peer.digests import RunningDigest, parse_digest, same_digest
from damselfly.services.peer.fetchbook import (
    Accept,
    Action,
    Book,
    Fetch,
    Fetched,
    GiveUp,
    Input,
    Refused,
    Reject,
    Reschedule,
    Settings,
    Shaped,
    Stopping,
    Tick,
    decide,
    wake_at,
)
from damselfly.services.peer.metrics import TransferStats
from damselfly.services.peer.origins import Sources
from damselfly.services.peer.parents import ParentClient, PieceError
from damselfly.services.peer.reports import PieceReports, piece_reports
from damselfly.services.peer.request import DownloadRequest
from damselfly.services.peer.sources import Source, SourceError, SourceStream
from damselfly.services.peer.storage import DiskFullError, Storage, TaskFile, TaskMeta
from damselfly.services.peer.upload import mint_token

log = logging.getLogger("damselfly.peer")

CHUNK: Final = 1 << 16
IMPORTED: Final = "imported a local file"
"""The ``straight_to_source`` reason of an import, the one download that may read a file."""
Decision = ParentsAssigned | BackToSourceOrdered | ScheduleFailed
Inbound = Decision | PeerQueued | HoldingsRelayed | Fetched | Refused


class _Ids(TypedDict):
    """The fields every task event of this download shares."""

    id: str
    at: float
    cluster: str
    task_id: str
    peer_id: str


class DownloadFailed(Exception):
    """The download cannot finish; the message is the one-line reason a user sees."""


def _first_leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (possibly nested) task-group exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


@dataclass
class PeerContext:
    """Everything a download needs from its daemon (built once, in ``daemon.py``)."""

    cluster: str
    host_id: str
    secret: str
    nc: Client
    js: JetStreamContext
    publisher: Publisher
    storage: Storage
    sources: Sources
    parents: ParentClient
    stats: TransferStats
    settings: Settings = field(default_factory=Settings)
    active: Callable[[], Collection[str]] = frozenset

    async def publish(self, event: Event) -> None:
        await self.publisher.publish(event)

    async def forget(self, metas: list[TaskMeta]) -> None:
        """Say that this daemon no longer serves tasks it collected."""
        for meta in metas:
            if meta.peer_id:
                await self.publish(PeerLeft(id=new_id(), at=time.time(), cluster=self.cluster,
                                            task_id=meta.task_id, peer_id=meta.peer_id,
                                            reason="garbage-collected"))


DownloadState = Literal["pending", "running", "succeeded", "failed", "cancelled"]
"""What the local API reports (and ``paused`` for a stored task nobody is downloading)."""


class Download:
    """Run with ``run()``; ``status()`` at any time; cancel through ``cancel()``."""

    def __init__(self, ctx: PeerContext, request: DownloadRequest, task_id: str, *,
                 straight_to_source: str = "") -> None:
        """``straight_to_source`` (a reason) skips waiting for a decision: a seed peer the
        scheduler triggered, or a local file being imported."""
        self.ctx = ctx
        self.request = request
        self.task_id = task_id
        self.peer_id = f"{ctx.host_id}-{new_id()[:8]}"
        self.straight_to_source = straight_to_source
        self.state: DownloadState = "pending"
        self.error = ""
        self.bytes_from_origin = 0
        self.bytes_from_peers = 0
        self.finished = anyio.Event()
        self.tf: TaskFile | None = None
        self._scope = anyio.CancelScope()
        self._stop = threading.Event()
        self._started = time.monotonic()
        # Decisions, relayed holdings and fetch outcomes, in arrival order.
        self._inbox: asyncio.Queue[Inbound] = asyncio.Queue()
        self._book = Book(self.peer_id, ctx.settings)
        self._subs: list[Subscription] = []
        self._pieces: PieceReports | None = None  # while fetching (from parents or origin)
        self._whole: RunningDigest | None = None  # of the requested digest, as pieces land
        self._catching_up = False

    # ---- life cycle -------------------------------------------------------------------
    def status(self) -> dict[str, object]:
        tf = self.tf
        return {
            "task_id": self.task_id, "peer_id": self.peer_id, "state": self.state,
            "error": self.error, "url": self.request.url,
            "content_length": tf.meta.content_length if tf else -1,
            "completed_length": tf.completed_length() if tf else 0,
            "bytes_from_origin": self.bytes_from_origin,
            "bytes_from_peers": self.bytes_from_peers,
        }

    def cancel(self) -> None:
        self._stop.set()
        self._scope.cancel()

    async def run(self) -> None:
        """Never raises for a failed download: the reason lands in ``error``."""
        with self._scope:
            try:
                await self._run()
            except Exception as exc:  # one task's failure never stops the daemon
                leaf = _first_leaf(exc)
                if not isinstance(leaf, DownloadFailed | SourceError | OSError | ValueError):
                    log.error("task %s: unexpected failure", self.task_id[:12], exc_info=exc,
                              extra=self._log_ids())
                if isinstance(leaf, DiskFullError):  # leave the next task the space
                    self.ctx.storage.remove(self.task_id)
                    self.tf = None
                await self._fail(str(leaf) or repr(leaf))
            finally:
                self._stop.set()
                with anyio.CancelScope(shield=True):
                    for sub in self._subs:
                        await sub.unsubscribe()
        if self._scope.cancelled_caught:
            self.state, self.error = "cancelled", "cancelled"
        self.finished.set()

    async def _fail(self, reason: str) -> None:
        self.state, self.error = "failed", reason.splitlines()[0] if reason else "failed"
        log.warning("task %s failed: %s", self.task_id[:12], self.error, extra=self._log_ids())
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await self.ctx.publish(PeerFailed(**self._ids(), reason=self.error))
            except NatsError as exc:  # the broker is what failed: the daemon goes on
                log.warning("task %s: PeerFailed not published: %s", self.task_id[:12],
                            exc or type(exc).__name__, extra=self._log_ids())

    def _log_ids(self) -> dict[str, str]:
        """The ids a JSON log line carries as fields."""
        return {"task_id": self.task_id, "peer_id": self.peer_id, "host_id": self.ctx.host_id}

    def _ids(self) -> _Ids:
        return {"id": new_id(), "at": time.time(), "cluster": self.ctx.cluster,
                "task_id": self.task_id, "peer_id": self.peer_id}

    async def _run(self) -> None:
        self.tf = tf = self._create()
        tf.touch()
        if tf.complete:
            if self.straight_to_source:
                await self._announce_held(tf)
            self.state = "succeeded"
            return
        self.state = "running"
        if self.straight_to_source:
            await self._register()
            await self._from_source(self.straight_to_source)
        else:
            self._subs.append(await self.ctx.nc.subscribe(
                sched_subject(self.ctx.cluster, self.task_id, self.peer_id), cb=self._on_decision))
            await self._register()
            decision = await self._next_decision()
            while not tf.complete:
                match decision:
                    case None if self._book.queued:
                        await self._from_source(
                            "the scheduler queued this peer and no parent came within "
                            f"{self.ctx.settings.queue_timeout:g}s")
                    case None:
                        await self._from_source(
                            f"no scheduler answered within {self.ctx.settings.schedule_timeout:g}s")
                    case BackToSourceOrdered():
                        await self._from_source(decision.reason or "ordered by the scheduler")
                    case ScheduleFailed():
                        raise DownloadFailed(f"the scheduler gave up: {decision.reason}")
                    case ParentsAssigned():
                        decision = await self._from_parents(decision)
        await self._succeed(tf)

    def _create(self) -> TaskFile:
        """The task file (new, or what an earlier download left), and a fresh running
        digest over it when the request names one."""
        if self.request.digest:
            self._whole = RunningDigest(parse_digest(self.request.digest)[0])
        tf = self.ctx.storage.create(self.task_id, self.request)
        tf.meta.peer_id = self.peer_id
        return tf

    def _held_prefix(self, tf: TaskFile, whole: RunningDigest) -> int:
        """Where the run of held pieces that ``whole`` has reached ends, in bytes."""
        piece = whole.hashed // tf.meta.piece_length
        while piece < tf.piece_count and piece in tf.bitmap:
            piece += 1
        return min(piece * tf.meta.piece_length, tf.meta.content_length)

    async def _catch_up(self, tf: TaskFile, whole: RunningDigest) -> None:
        """Hash the held prefix in a worker thread until it stops growing."""
        try:
            while (end := self._held_prefix(tf, whole)) > whole.hashed:
                await to_thread.run_sync(whole.catch_up, tf.data_path, end)
        finally:
            self._catching_up = False

    async def _report_pieces(self, pieces: list[FinishedPiece]) -> None:
        await self.ctx.publish(PiecesFinished(**self._ids(), pieces=pieces))

    async def _announce_held(self, tf: TaskFile) -> None:
        """Tell the swarm (again) that this peer holds a whole task it fetched earlier."""
        await self._register()
        await self._report_metadata(tf)
        held = [FinishedPiece(piece, piece_range(piece, tf.meta.content_length,
                                                 tf.meta.piece_length)[1], digest)
                for piece, digest in enumerate(tf.meta.piece_digests)]
        await self.ctx.publisher.publish_many(
            PiecesFinished(**self._ids(), pieces=held[i:i + MAX_BATCH])
            for i in range(0, len(held), MAX_BATCH))
        await self._succeed(tf)

    async def _register(self) -> None:
        r = self.request
        await self.ctx.publish(PeerRegistered(
            **self._ids(), host_id=self.ctx.host_id, url=public_url(r.url), tag=r.tag,
            application=r.application, priority=r.priority, piece_length=r.piece_length,
            headers=public_headers(r.headers), filtered_query_params=r.filtered_query_params,
            disable_back_to_source=r.disable_back_to_source))

    async def _succeed(self, tf: TaskFile) -> None:
        if self.request.digest:
            tf = await self._verified(tf)
        tf.meta.done = True
        tf.touch()
        await self.ctx.publish(PeerSucceeded(
            **self._ids(), content_length=tf.meta.content_length, piece_count=tf.piece_count,
            bytes_from_origin=self.bytes_from_origin, bytes_from_peers=self.bytes_from_peers,
            cost_ms=(time.monotonic() - self._started) * 1000))
        self.state = "succeeded"

    async def _verified(self, tf: TaskFile) -> TaskFile:
        """The task file, once its bytes hash to the requested digest. On a mismatch the
        file is dropped and fetched from the origin once more (a parent, or a cache in
        front of the origin, may have been wrong); a second mismatch fails the download."""
        mismatch = await self._mismatch(tf)
        if not mismatch:
            return tf
        if self.request.disable_back_to_source:
            raise DownloadFailed(mismatch)
        log.warning("task %s: %s; fetching it from the origin again", self.task_id[:12],
                    mismatch, extra=self._log_ids())
        self.tf = tf = self._create()
        await self._from_source(f"{mismatch}; fetching it from the origin again")
        if again := await self._mismatch(tf):
            raise DownloadFailed(f"{again} from the origin too")
        return tf

    async def _mismatch(self, tf: TaskFile) -> str:
        """Why the file is not the requested digest (its files then removed), or ""."""
        whole = self._whole
        assert whole is not None
        await to_thread.run_sync(whole.catch_up, tf.data_path, tf.meta.content_length)
        actual = whole.value()
        if same_digest(self.request.digest, actual):
            return ""
        self.ctx.storage.remove(self.task_id)
        self.tf = None
        return f"digest mismatch: expected {self.request.digest}, got {actual}"

    async def _shape(self, content_length: int, piece_length: int) -> None:
        tf = self.tf
        assert tf is not None
        if reason := geometry_error(content_length, piece_length):
            raise DownloadFailed(reason)  # before any space is reserved for it
        if not tf.shaped:
            active = {*self.ctx.active(), self.task_id}
            await self.ctx.forget(self.ctx.storage.reserve(tf, content_length, active))
        tf.shape(content_length, piece_length)

    # ---- decisions --------------------------------------------------------------------
    async def _on_decision(self, msg: Msg) -> None:
        event = decoded(msg)
        if event is None:
            return
        if isinstance(event, ParentsAssigned | BackToSourceOrdered | ScheduleFailed | PeerQueued
                      | HoldingsRelayed) and event.peer_id == self.peer_id:
            self._inbox.put_nowait(event)

    async def _next_decision(self) -> Decision | None:
        """The scheduler's answer, or None when none comes in time. ``PeerQueued`` means
        "a parent is coming": the wait stretches to ``queue_timeout`` (bounded, in case
        every scheduler dies while holding this peer)."""
        timeout = self.ctx.settings.schedule_timeout
        while True:
            with anyio.move_on_after(timeout) as scope:
                decision = await self._inbox.get()
            if scope.cancelled_caught:
                return None
            if isinstance(decision, PeerQueued):
                decide(self._book, decision, time.monotonic())
                timeout = self.ctx.settings.queue_timeout
            elif isinstance(decision, Decision):
                return decision

    # ---- back to source ---------------------------------------------------------------
    async def _from_source(self, reason: str) -> None:
        if self.request.disable_back_to_source:
            raise DownloadFailed(f"back-to-source is disabled and {reason}")
        if urlsplit(self.request.url).scheme == "file" and self.straight_to_source != IMPORTED:
            # The daemon may read files its caller cannot: a local file enters the swarm
            # only through an import, never by a seed trigger, a job or a download.
            raise DownloadFailed(f"{self.request.url} is a local file: only an import "
                                 "(damselfly import, POST /v1/imports) reads one")
        source = self.ctx.sources.for_url(self.request.url)
        await self.ctx.publish(BackToSourceStarted(**self._ids(), reason=reason))
        tf = self.tf
        assert tf is not None
        if tf.shaped:
            await self._report_metadata(tf)
        # The pump hands each piece's report over and goes on: it never waits for an ack
        # (it did, per piece, and a seed took in its origin at 0.8 of its link).
        async with piece_reports(self._report_pieces) as self._pieces:
            await to_thread.run_sync(self._pump, source, tf)
        await self._report_metadata(tf)

    async def _report_metadata(self, tf: TaskFile) -> None:
        await self.ctx.publish(TaskMetadataReported(
            **self._ids(), content_length=tf.meta.content_length,
            piece_length=tf.meta.piece_length, piece_count=tf.piece_count,
            piece_digests=tf.meta.piece_digests if tf.complete else [],
            digest=self.request.digest))

    def _pump(self, source: Source, tf: TaskFile) -> None:
        """Fetch every missing run of pieces from the origin, retrying transient failures
        with exponential backoff; an attempt that made progress resets the count."""
        settings = self.ctx.settings
        failures = 0
        while not tf.shaped or not tf.complete:
            held = len(tf.bitmap)
            try:
                self._pump_run(source, tf)
                failures = 0
            except SourceError as exc:
                failures = 0 if len(tf.bitmap) > held else failures + 1
                if not exc.transient or failures >= settings.source_attempts:
                    tries = f" after {failures} attempts" if exc.transient else ""
                    raise DownloadFailed(f"back-to-source failed{tries}: {exc}") from exc
                if self._stop.wait(settings.source_backoff * 2 ** (failures - 1)):
                    raise DownloadFailed("cancelled") from exc

    def _pump_run(self, source: Source, tf: TaskFile) -> None:
        first = 0
        end = -1
        if tf.shaped:
            missing = tf.bitmap.missing()
            first = missing[0]
            last = first
            while last + 1 < tf.piece_count and last + 1 not in tf.bitmap:
                last += 1
            end = -1 if last == tf.piece_count - 1 else (last + 1) * tf.meta.piece_length
        stream = source.open(self.request.url, self.request.headers,
                             first * tf.meta.piece_length if tf.shaped else 0, end)
        try:
            if not tf.shaped:
                if stream.total_length < 0:
                    raise DownloadFailed("the origin did not say the content length")
                length = stream.total_length
                from_thread.run(self._shape, length,
                                piece_length_for(length, self.request.piece_length))
                from_thread.run(self._report_metadata, tf)
            start = first * tf.meta.piece_length
            stop = tf.meta.content_length if end < 0 else end
            buf = memoryview(bytearray(CHUNK))
            self._skip(stream, start - stream.start, buf)
            piece = first
            while piece < tf.piece_count and piece * tf.meta.piece_length < stop:
                offset, length = piece_range(piece, tf.meta.content_length, tf.meta.piece_length)
                digest = hashlib.sha256()
                done = 0
                while done < length:
                    if self._stop.is_set():
                        raise DownloadFailed("cancelled")
                    n = stream.readinto(buf[: min(CHUNK, length - done)])
                    if n == 0:
                        raise SourceError(f"the origin closed the connection at byte "
                                          f"{offset + done} of {tf.meta.content_length}",
                                          transient=True)
                    digest.update(buf[:n])
                    tf.write(offset + done, buf[:n])
                    done += n
                from_thread.run_sync(self._source_piece_done, piece, length,
                                     f"sha256:{digest.hexdigest()}")
                if self._whole is not None:  # every piece before this run's is held
                    self._whole.catch_up(tf.data_path, offset + length)
                piece += 1
        finally:
            stream.close()

    @staticmethod
    def _skip(stream: SourceStream, nbytes: int, buf: memoryview) -> None:
        """Discard bytes an origin sent although the range did not ask for them."""
        if nbytes < 0:
            raise SourceError("the origin answered with bytes before the range asked for",
                              transient=False)
        while nbytes:
            n = stream.readinto(buf[: min(len(buf), nbytes)])
            if n == 0:
                raise SourceError("the origin closed the connection early", transient=True)
            nbytes -= n

    def _source_piece_done(self, piece: int, length: int, digest: str) -> None:
        assert self.tf is not None and self._pieces is not None
        self.tf.mark(piece, digest)
        self.bytes_from_origin += length
        self.ctx.stats.fetched(urlsplit(self.request.url).scheme, length)
        self._pieces.add(FinishedPiece(piece, length, digest))

    # ---- from parents -----------------------------------------------------------------
    async def _from_parents(self, decision: ParentsAssigned) -> Decision | None:
        """Fetch from parents until done (returns None), until a decision other than new
        parents arrives (returns it, once the requests in flight have ended), or until a
        reschedule goes unanswered (None). The rules are ``fetchbook``'s; this loop feeds it
        every input in arrival order and carries out what it returns."""
        tf = self.tf
        assert tf is not None
        book = self._book
        stopping: Decision | None = None
        item: Inbound | None = decision
        async with piece_reports(self._report_pieces) as self._pieces, \
                anyio.create_task_group() as tg:
            await self._adopt(decision)
            await self.ctx.publish(PeerStarted(**self._ids()))
            while True:
                now = time.monotonic()
                event: Input
                match item:
                    case None:
                        event = Tick()
                    case BackToSourceOrdered() | ScheduleFailed():
                        stopping, event = stopping or item, Stopping()
                    case ParentsAssigned() if stopping is not None:
                        event = Tick()  # this peer is already leaving its parents
                    case ParentsAssigned():
                        if item is not decision:
                            await self._adopt(item)
                        event = item
                    case _:
                        event = item
                if tf.shaped and not book.piece_count:
                    decide(book, Shaped(tf.piece_count, frozenset(tf.bitmap.held())), now)
                for action in decide(book, event, now):
                    if isinstance(action, GiveUp):
                        return None
                    self._carry_out(tg, tf, action)
                if tf.shaped and tf.complete:
                    break
                if stopping is not None and not book.in_flight:
                    return stopping
                due = wake_at(book, now)
                item = None
                with anyio.move_on_after(0.5 if due is None else min(due - now, 0.5)):
                    item = await self._inbox.get()
        return None

    def _carry_out(self, tg: TaskGroup, tf: TaskFile, action: Action) -> None:
        match action:
            case Fetch():
                tg.start_soon(self._fetch, tf, action)
            case Accept():
                length = piece_range(action.piece, tf.meta.content_length,
                                     tf.meta.piece_length)[1]
                tf.mark(action.piece, action.digest)
                self.bytes_from_peers += length
                self.ctx.stats.fetched("peers", length)
                assert self._pieces is not None
                # No digest: only a source peer's count, and every follower has the
                # source's already (a third of each report that every follower received).
                self._pieces.add(FinishedPiece(action.piece, length, "", action.parent,
                                               round(action.cost_ms, 1)))
                if self._whole is not None and not self._catching_up:
                    self._catching_up = True
                    tg.start_soon(self._catch_up, tf, self._whole)
            case Reject():
                self.ctx.stats.pieces_corrupt += action.corrupt
                tg.start_soon(self.ctx.publish, PieceFailed(
                    **self._ids(), piece=action.piece, parent_id=action.parent,
                    corrupt=action.corrupt, reason=action.reason))
            case Reschedule():
                tg.start_soon(self.ctx.publish, RescheduleRequested(
                    **self._ids(), blocklist=list(action.blocklist), reason=action.reason))

    async def _adopt(self, decision: ParentsAssigned) -> None:
        """Take the task's geometry from the decision (the scheduler assigns parents only
        once the task's size is known; what they hold next, it relays)."""
        if decision.content_length >= 0 and decision.piece_length > 0:
            await self._shape(decision.content_length, decision.piece_length)

    async def _fetch(self, tf: TaskFile, fetch: Fetch) -> None:
        """One request; its outcome goes to the inbox (bytes land in the task file first)."""
        offset, length = piece_range(fetch.piece, tf.meta.content_length, tf.meta.piece_length)
        started = time.monotonic()
        outcome: Fetched | Refused
        try:
            digest = await to_thread.run_sync(
                self.ctx.parents.fetch, fetch.upload_url, self.task_id,
                fetch.grant or mint_token(self.ctx.secret, self.task_id), offset, length, tf,
                fetch.holders)
            outcome = Fetched(fetch.piece, fetch.parent, digest,
                              (time.monotonic() - started) * 1000)
        except PieceError as exc:
            outcome = Refused(fetch.piece, fetch.parent, exc.kind, str(exc), exc.retry_after,
                              exc.offer)
        self._inbox.put_nowait(outcome)
