"""The upload server: other peers fetch piece bytes here over HTTP Range.

``GET /v1/tasks/<task>/content`` answers 206 by sendfile for a range of pieces this peer
holds, 416 for a range it does not hold, 404 for a task it does not know, 401 without the
scheduler's upload grant (or, where no grant key is set, the cluster's token), 503 when the
concurrent-upload limit is reached, and on a seed peer 429 with an offer of other pieces
(super-seeding). Also ``/healthz`` and Prometheus ``/metrics``.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import itertools
import random
import time
from collections.abc import Callable
from typing import Final

from aiohttp import web

from damselfly.events.grants import GrantError, GrantVerifier
from damselfly.services.peer.metrics import TransferStats, daemon_registry, exposition
from damselfly.services.peer.oci import RangeError, parse_range
from damselfly.services.peer.storage import Storage, TaskFile
from damselfly.services.peer.wire import Compressibility, accepts, send_compressed

OFFER_HEADER: Final = "X-Damselfly-Offer"
"""On a seed's 429: the pieces (comma-separated numbers) it would send this child now."""
HOLDERS_HEADER: Final = "X-Damselfly-Holders"
"""On a request: how many parents the child knows to hold the piece (rarest served first)."""
UNRANKED: Final = 1 << 20
"""The rank of a request without ``HOLDERS_HEADER`` (a plain client): after the swarm's."""


def mint_token(secret: str, task_id: str) -> str:
    """The bearer token for one task: an HMAC only holders of the cluster secret can make."""
    return hmac.new(secret.encode(), task_id.encode(), hashlib.sha256).hexdigest()


class Pacer:
    """Paces uploads to ``rate`` bytes/s on average (0: unlimited) by delaying each
    transfer's start until the bytes before it have had their time."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._free_at = 0.0

    def delay(self, nbytes: int, max_wait: float | None = None) -> float | None:
        """Reserve ``nbytes`` and return how long to wait before sending them; ``None``
        (nothing reserved) when that wait would exceed ``max_wait``."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        start = max(now, self._free_at)
        if max_wait is not None and start - now > max_wait:
            return None
        self._free_at = start + nbytes / self.rate
        return start - now


class Slots:
    """``size`` upload slots. A request that finds none free waits, and a freed slot goes
    to the waiting request with the lowest ``rank`` (the fewest holders its child knows of),
    first come first served among equals: a piece this parent has just received reaches
    the children that can get it nowhere else before the ones they could have from anyone,
    instead of queueing behind them (each queued transfer cost the swarm a piece-time per
    hop)."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    async def acquire(self, rank: int) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (rank, next(self._arrivals), turn))
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.release()  # handed a slot just as it gave up: pass it on
            turn.cancel()  # left in the heap, skipped when its turn comes
            raise

    def release(self) -> None:
        while self._waiting:
            turn = heapq.heappop(self._waiting)[2]
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1


class SentPieces:
    """Super-seeding (pure): which child each piece went to, so a seed sends each piece once
    before it sends any twice, and leaves the copies to the children.

    A child is refused a piece (``take`` is False) while it is on its way to another child;
    after it arrived, for ``spread`` seconds or as long as the send took if longer (time
    for that child to report it and pass it on); and, while the seed is still handing out
    first copies of the task (one was taken less than ``spread`` seconds ago), whenever it
    was delivered before. ``offer`` names pieces the child would be given at once: first
    copies when there are any. A seed that stops handing out first copies (nobody asks for
    the ones left) serves second copies again after ``spread`` seconds, so no child waits
    on a piece whose only receiver left. Once the seed holds the whole task and every piece
    has gone out once (the endgame), nothing is refused: there is nothing left to hand out
    first, and refusing would leave the seed's uplink idle while children wait for each
    other's copies of the last pieces."""

    def __init__(self, spread: float, keep: int = 1 << 16, stuck: float = 30.0,
                 rng: random.Random | None = None) -> None:
        self.spread = spread
        self._keep = keep
        self._stuck = stuck  # a send older than this is over, whatever happened to it
        self._rng = rng or random.Random()
        self._last: dict[tuple[str, int], tuple[str, float, float | None]] = {}
        self._copied: dict[str, set[int]] = {}  # task: pieces delivered at least once
        self._copies = 0  # pieces in _copied
        self._first_taken: dict[str, float] = {}  # task: when a first copy last went out

    def take(self, task_id: str, piece: int, child: str, now: float, *,
             whole: int = 0) -> bool:
        """Whether ``child`` may have ``piece`` now; if so it is recorded as going to it.
        ``whole``: the task's piece count when this seed holds every piece, else 0."""
        if self.spread <= 0 or 0 < whole <= len(self._copied.get(task_id, ())):
            return True
        last = self._last.get((task_id, piece))
        if last is not None and last[0] != child and self._fresh(last, now):
            return False
        copied = self._copied.get(task_id, set())
        if piece in copied and (last is None or last[0] != child) and self._first_pass(
                task_id, now):
            return False
        if piece not in copied:
            self._first_taken[task_id] = now
        if len(self._last) >= self._keep:
            self._last = {k: v for k, v in self._last.items() if self._fresh(v, now)}
        self._last[(task_id, piece)] = (child, now, None)
        return True

    def sent(self, task_id: str, piece: int, now: float, delivered: bool = True) -> None:
        """The send ``take`` allowed has ended; one that did not deliver (refused busy, or
        cut off) leaves the piece free for the next child at once."""
        last = self._last.get((task_id, piece))
        if last is not None and last[2] is None:
            if delivered:
                self._last[(task_id, piece)] = (last[0], last[1], now)
                self._copy(task_id, piece)
            else:
                del self._last[(task_id, piece)]

    def offer(self, task_id: str, held: list[int], now: float, n: int = 4) -> list[int]:
        """Up to ``n`` of the ``held`` pieces a child would be given now, in a random
        order (so children refused together ask for different ones): first copies while
        there are any, else pieces not refused by the time rule."""
        copied = self._copied.get(task_id, set())
        free = [p for p in held if p not in copied
                and not self._fresh(self._last.get((task_id, p)), now)]
        if not free and not self._first_pass(task_id, now):
            free = [p for p in held if not self._fresh(self._last.get((task_id, p)), now)]
        return self._rng.sample(free, min(n, len(free)))

    def _first_pass(self, task_id: str, now: float) -> bool:
        return now - self._first_taken.get(task_id, -1e18) < self.spread

    def _copy(self, task_id: str, piece: int) -> None:
        copied = self._copied.setdefault(task_id, set())
        if piece not in copied:
            copied.add(piece)
            self._copies += 1
        while self._copies > self._keep and len(self._copied) > 1:
            oldest = next(iter(self._copied))  # forget the oldest other task's copies
            if oldest == task_id:  # keep the task being served: move it to the end
                self._copied[task_id] = self._copied.pop(task_id)
                continue
            self._copies -= len(self._copied.pop(oldest))
            self._first_taken.pop(oldest, None)

    def _fresh(self, last: tuple[str, float, float | None] | None, now: float) -> bool:
        if last is None:
            return False
        _, started, finished = last
        if finished is None:
            return now - started < self._stuck
        # As long as the send took, at least: on a thin link the child needs that long to
        # pass the piece on to the next.
        return now - finished < max(self.spread, finished - started)

    def __len__(self) -> int:
        return len(self._last) + self._copies


def _rank(request: web.Request) -> int:
    try:
        return max(0, int(request.headers.get(HOLDERS_HEADER, UNRANKED)))
    except ValueError:
        return UNRANKED


async def _sendfile(request: web.Request, tf: TaskFile, start: int, stop: int
                    ) -> web.StreamResponse:
    """Bytes ``[start, stop)`` of the task by sendfile from the task's own open file (a
    duplicate of its descriptor, so a task removed meanwhile is still read whole): aiohttp's
    ``FileResponse`` opened and stat-ed the file in a worker thread for every piece, a fifth
    of a swarm child's CPU. Answered inside the handler, so the upload slot is held until
    the last byte is on its way."""
    size = tf.meta.content_length
    ranged = "Range" in request.headers
    response = web.StreamResponse(status=206 if ranged else 200, headers={
        "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"})
    if ranged:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    response.content_length = stop - start
    with tf.reader() as f:
        await response.prepare(request)
        if request.method != "HEAD" and stop > start:
            if request.transport is None:
                raise ConnectionResetError("the peer closed the connection")
            await asyncio.get_running_loop().sendfile(request.transport, f, start, stop - start)
        await response.write_eof()
    return response


def upload_app(storage: Storage, secret: str, stats: TransferStats, *, max_uploads: int = 4,
               rate_limit: float = 0.0, max_queue_wait: float = 2.0, max_slot_wait: float = 5.0,
               spread: float = 0.0, compress: bool = True, grants: GrantVerifier | None = None,
               host_id: str = "") -> web.Application:
    """The piece server. At most ``max_uploads`` responses are sent at once; more requests
    wait their turn, rarest piece first (``Slots``), for up to ``max_slot_wait`` seconds (well
    inside a child's 10 s socket timeout) and then get 503 (so a piece a child waits for
    finishes at the full share of this uplink rather than crawling beside 50 others, and a
    queue never becomes a storm of retries). Under a rate limit a request that would wait
    longer than ``max_queue_wait`` for the pacer gets 503 at once: a child then asks
    another parent instead of timing out on this one.

    ``spread`` > 0 (a seed peer's super-seeding, see ``SentPieces``): a piece on its way to
    one child, just delivered, or (while first copies are going out) delivered at all, is
    refused to others with 429 and an offer of pieces they may have instead, so the seed's
    uplink carries pieces nobody has yet and the children pass the ones they got to each
    other.

    ``compress``: a child that accepts zstd gets the pieces of a task whose bytes compress
    compressed (``wire.py``); every other answer goes out by sendfile.

    ``grants``: the schedulers' public key. With it a request must carry an upload grant
    for the task and this host (``host_id``), and a cluster-secret token is refused; without
    it, the HMAC of the task id under ``secret`` (any holder of the secret can make one)."""
    pacer = Pacer(rate_limit)
    squeezable = Compressibility()
    slots = Slots(max_uploads)
    sent = SentPieces(spread)

    def refuse(status: int, reason: str, **headers: str) -> web.Response:
        stats.upload_responses[status] += 1
        return web.Response(status=status, text=reason + "\n", headers=headers)

    async def content(request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if grants is not None:
            try:
                grants.check(given, task_id, host_id, time.time())
            except GrantError as exc:
                return refuse(401, str(exc))
        elif not hmac.compare_digest(given, mint_token(secret, task_id)):
            return refuse(401, "missing or wrong upload token")
        tf = storage.get(task_id)
        if tf is None or not tf.shaped:
            return refuse(404, f"unknown task {task_id}")
        size = tf.meta.content_length
        try:
            start, stop = parse_range(request.headers.get("Range", ""), size) or (0, size)
        except RangeError as exc:  # malformed, several ranges, outside, or bytes=-0
            return refuse(416, str(exc), **{"Content-Range": f"bytes */{size}"})
        pl = tf.meta.piece_length
        held = all(p in tf.bitmap for p in range(start // pl, (stop - 1) // pl + 1))
        if start >= stop or not held:
            return refuse(416, "range not held", **{"Content-Range": f"bytes */{size}"})
        piece, now = start // pl, time.monotonic()
        whole = tf.piece_count if tf.complete else 0
        if not sent.take(task_id, piece, request.remote or "", now, whole=whole):
            offer = sent.offer(task_id, tf.bitmap.held(), now)
            return refuse(429, "piece sent to another peer: fetch it from the peers",
                          **{"Retry-After": f"{spread:g}",
                             OFFER_HEADER: ",".join(map(str, offer))})
        delivered = False
        try:
            response = await send(request, tf, start, stop)
            delivered = response.status == 206
            return response
        finally:
            sent.sent(task_id, piece, time.monotonic(), delivered)

    async def send(request: web.Request, tf: TaskFile, start: int, stop: int
                   ) -> web.StreamResponse:
        nbytes = stop - start
        try:
            async with asyncio.timeout(max_slot_wait):  # no task per request, as wait_for made
                await slots.acquire(_rank(request))
        except TimeoutError:
            return refuse(503, "too many uploads", **{"Retry-After": "1"})
        try:
            wait = pacer.delay(nbytes, max_queue_wait)
            if wait is None:
                return refuse(503, "upload rate saturated", **{"Retry-After": "1"})
            stats.uploads_running += 1
            try:
                if wait:
                    await asyncio.sleep(wait)
                if compress and accepts(request) and squeezable.worth(tf, start, stop):
                    response, on_wire = await send_compressed(request, tf, start, stop)
                    stats.upload_compressed += 1
                else:
                    response, on_wire = await _sendfile(request, tf, start, stop), nbytes
                stats.upload_bytes += on_wire
                stats.upload_responses[response.status] += 1
                return response
            finally:
                stats.uploads_running -= 1
        finally:
            slots.release()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    registry = daemon_registry(stats, storage)

    async def metrics(request: web.Request) -> web.Response:
        return exposition(registry)

    app = web.Application()
    app.router.add_get("/v1/tasks/{task_id}/content", content)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
