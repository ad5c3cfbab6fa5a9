"""The downloader's pure core: which piece a child asks of which parent, what it makes of
each answer, and when it asks the scheduler for other parents.

``decide(book, event, now)`` folds one input into the ``Book`` and returns the actions the
shell (``downloader.py``) carries out. Inputs are the scheduler's decisions
(``ParentsAssigned``, ``PeerQueued``), the parents' new pieces the scheduler relays
(``HoldingsRelayed``, with the source peers' digests) and the shell's own facts:
``Shaped`` (the task file's geometry is known), ``Fetched`` and ``Refused`` (a request's
outcome), ``Stopping`` (a decision other than parents arrived) and ``Tick`` (time passed).

The rules (``docs/protocol.md``, "How pieces move"):
- rarest piece first among the parents that may be asked, in this child's own random
  order among equals, at most ``per_parent`` requests per parent and ``concurrency`` in
  all (``planner.choose_pieces``); only pieces whose digest came from a source peer;
- a piece whose bytes do not match that digest marks its parent bad for the task; other
  failures count, and ``parent_failure_limit`` in a row mark it bad; a slow piece never does;
- a busy parent (503) is asked again after a jittered backoff that doubles while it keeps
  refusing; a seed that refuses a piece it sent to another child (429) is asked, until its
  ``Retry-After`` passes, only for the pieces it offered instead (none: nothing), and the
  refused piece comes from the other holders; a parent that no longer has a piece loses
  it from its holdings and nothing else;
- nothing in flight and no usable parent, or no progress for ``stall_timeout`` seconds:
  one ``Reschedule``; no answer within ``schedule_timeout`` (``queue_timeout`` once the
  scheduler said a parent is coming): ``GiveUp`` (the shell goes back to source).

No I/O and no clock: the shell passes ``now``. Randomness comes from a generator seeded by
the peer id, so a run of inputs always gives the same actions.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from damselfly.events.sched import (
    HeldPieces,
    HoldingsRelayed,
    ParentInfo,
    ParentsAssigned,
    PeerQueued,
)
from damselfly.services.peer.bitmap import Bitmap
from damselfly.services.peer.planner import choose_pieces


@dataclass(frozen=True)
class Settings:
    """``concurrency`` pieces in flight per download, at most ``per_parent`` of them to one
    parent; a parent that answers busy is asked again after ``busy_backoff`` seconds,
    doubling while it stays busy (up to ``max_busy_backoff``). The ``source_*`` fields are
    the origin fetcher's (retries and their first backoff).

    One request per parent, not two: a parent's uplink is shared by every transfer it
    serves, so two per child doubled the time each piece took to arrive, and with it the
    time before the child could pass it on (N=10 shaped swarm, slowest child 12.2 s with
    2, 10.7 s with 1; one child from one parent still reached 0.99 of curl)."""

    concurrency: int = 16
    per_parent: int = 1
    schedule_timeout: float = 10.0
    queue_timeout: float = 300.0
    stall_timeout: float = 5.0
    source_attempts: int = 5
    source_backoff: float = 0.2
    parent_failure_limit: int = 3
    busy_backoff: float = 0.1
    max_busy_backoff: float = 2.0


# ---- inputs from the shell ----------------------------------------------------------------
@dataclass(frozen=True)
class Shaped:
    """The task file knows its piece count; ``held`` are the pieces already on disk."""

    piece_count: int
    held: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Fetched:
    """A parent sent a piece whose bytes hash to ``digest`` (already in the task file)."""

    piece: int
    parent: str
    digest: str
    cost_ms: float = 0.0


@dataclass(frozen=True)
class Refused:
    """A request failed: ``kind`` is ``parents.FailureKind``; a seed's 429 (``spread``)
    names the pieces it ``offer``s instead."""

    piece: int
    parent: str
    kind: str
    reason: str
    retry_after: float = 0.0
    offer: tuple[int, ...] = ()


@dataclass(frozen=True)
class Stopping:
    """A decision other than parents arrived: start nothing new, let in-flight ones end."""


@dataclass(frozen=True)
class Tick:
    """Time passed."""


Input = (ParentsAssigned | PeerQueued | HoldingsRelayed | Shaped | Fetched | Refused | Stopping
         | Tick)


# ---- actions for the shell ----------------------------------------------------------------
@dataclass(frozen=True)
class Fetch:
    """Ask ``parent`` for ``piece``; ``holders``: how many of this child's parents hold it
    (the parent serves the rarest first); ``grant``: the scheduler's for that parent."""

    piece: int
    parent: str
    upload_url: str
    holders: int = 1
    grant: str = ""


@dataclass(frozen=True)
class Accept:
    """Mark the piece held and report it (``PieceFinished`` with its parent)."""

    piece: int
    parent: str
    digest: str
    cost_ms: float


@dataclass(frozen=True)
class Reject:
    """Report a failed piece (``PieceFailed``)."""

    piece: int
    parent: str
    reason: str
    corrupt: bool = False


@dataclass(frozen=True)
class Reschedule:
    """Ask the scheduler for other parents (``RescheduleRequested``)."""

    blocklist: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class GiveUp:
    """The scheduler did not answer in time: the shell goes back to source."""


Action = Fetch | Accept | Reject | Reschedule | GiveUp


@dataclass
class Book:
    """What one child knows about its parents and its own requests."""

    peer_id: str
    settings: Settings = field(default_factory=Settings)
    piece_count: int = 0  # 0: the task's geometry is not known yet
    held: set[int] = field(default_factory=set)
    parents: dict[str, ParentInfo] = field(default_factory=dict)
    holdings: dict[str, set[int]] = field(default_factory=dict)
    digests: dict[int, str] = field(default_factory=dict)  # from source peers only
    source_peers: set[str] = field(default_factory=set)
    bad: set[str] = field(default_factory=set)
    failures: Counter[str] = field(default_factory=Counter)
    busy_until: dict[str, float] = field(default_factory=dict)
    busy_streak: Counter[str] = field(default_factory=Counter)
    offers: dict[str, tuple[frozenset[int], float]] = field(default_factory=dict)  # until
    in_flight: dict[int, str] = field(default_factory=dict)
    piece_rank: list[float] = field(default_factory=list)
    parent_rank: dict[str, float] = field(default_factory=dict)
    active: bool = False  # parents were assigned and nothing stopped the fetching
    queued: bool = False  # the scheduler said a parent is coming
    last_progress: float = 0.0
    answer_by: float | None = None  # while a reschedule (or a queue) awaits its answer
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.peer_id)


def decide(book: Book, event: Input, now: float) -> list[Action]:
    """Fold ``event`` into ``book``; the actions to carry out, in order."""
    actions: list[Action] = []
    match event:
        case Shaped():  # geometry only: the input that follows plans
            book.piece_count = event.piece_count
            book.held = set(event.held)
            book.piece_rank = [book.rng.random() for _ in range(event.piece_count)]
            return []
        case ParentsAssigned():
            _adopt(book, event)
            book.active, book.answer_by, book.last_progress = True, None, now
        case PeerQueued():
            book.queued, book.answer_by = True, now + book.settings.queue_timeout
        case HoldingsRelayed():
            useful = [_parent_holds(book, held, now) for held in event.holders]
            if not any(useful):
                return []  # planning again could not start anything: save the CPU
        case Fetched():
            book.in_flight.pop(event.piece, None)
            actions.append(_received(book, event, now))
        case Refused():
            book.in_flight.pop(event.piece, None)
            actions.extend(_refused(book, event, now))
        case Stopping():
            book.active = False
        case _:
            pass
    if book.active:
        actions.extend(_plan(book, now))
        actions.extend(_check_stall(book, now))
    return actions


def wake_at(book: Book, now: float) -> float | None:
    """When a backoff or an offer ends (planning may then start a request)."""
    times = [t for t in book.busy_until.values() if t > now]
    times += [t for _, t in book.offers.values() if t > now]
    return min(times, default=None)


def _learn_digests(book: Book, digests: list[str]) -> None:
    """Keep the first digest a source gave for each piece ("" is none yet)."""
    for piece, digest in enumerate(digests):
        if digest:
            book.digests.setdefault(piece, digest)


def _adopt(book: Book, decision: ParentsAssigned) -> None:
    book.source_peers |= set(decision.source_peers)
    if decision.source_peers:
        _learn_digests(book, decision.piece_digests)
    book.parents = {p.peer_id: p for p in decision.parents if p.peer_id != book.peer_id}
    for p in book.parents.values():
        if p.peer_id not in book.parent_rank:
            book.parent_rank[p.peer_id] = book.rng.random()
        held = book.holdings.setdefault(p.peer_id, set())
        if p.bitmap and book.piece_count:
            held.update(Bitmap(book.piece_count, p.bitmap).held())


def _parent_holds(book: Book, relayed: HeldPieces, now: float) -> bool:
    """Learn that a peer holds more pieces (and, from a source, their digests); whether any
    of them could become a request right away."""
    held = book.holdings.setdefault(relayed.peer_id, set())
    if relayed.peer_id in book.source_peers:
        for piece, digest in zip(relayed.pieces, relayed.digests, strict=False):
            if digest:
                book.digests.setdefault(piece, digest)
    held.update(relayed.pieces)
    book.last_progress = now
    return any(_could_ask(book, relayed.peer_id, piece) for piece in relayed.pieces)


def _could_ask(book: Book, parent: str, piece: int) -> bool:
    """Whether a piece a parent now holds could become a request right away."""
    if (not book.active or not book.piece_count or piece in book.held
            or piece in book.in_flight or parent not in book.parents
            or len(book.in_flight) >= book.settings.concurrency):
        return False
    return sum(p == parent for p in book.in_flight.values()) < book.settings.per_parent


def _received(book: Book, event: Fetched, now: float) -> Accept | Reject:
    want = book.digests.get(event.piece)
    if event.digest != want:
        book.bad.add(event.parent)
        return Reject(event.piece, event.parent, corrupt=True,
                      reason=f"digest mismatch: expected {want}, got {event.digest}")
    book.held.add(event.piece)
    book.failures[event.parent] = 0
    book.busy_streak[event.parent] = 0
    book.last_progress = now
    return Accept(event.piece, event.parent, event.digest, event.cost_ms)


def _refused(book: Book, event: Refused, now: float) -> list[Action]:
    parent, settings = event.parent, book.settings
    if event.kind == "missing":
        book.holdings.get(parent, set()).discard(event.piece)
        return []
    if event.kind == "spread":
        # A seed sent it to another child: get it from the peers, and ask the seed only for
        # what it offers (pieces nobody has yet) until the offer runs out or expires.
        book.offers[parent] = (frozenset(event.offer), now + max(event.retry_after, 0.1))
        return []
    if event.kind == "busy":
        # Back off the parent, doubling while it keeps refusing.
        wait = min(settings.busy_backoff * 2 ** book.busy_streak[parent],
                   settings.max_busy_backoff)
        book.busy_streak[parent] += 1
        book.busy_until[parent] = now + wait * book.rng.uniform(0.5, 1.0)
        return []
    book.failures[parent] += 1
    if book.failures[parent] >= settings.parent_failure_limit:
        book.bad.add(parent)
    return [Reject(event.piece, parent, event.reason)]


def _plan(book: Book, now: float) -> list[Action]:
    if not book.piece_count:
        return []
    usable = {p: _askable(book, p, now) for p in book.parents
              if p not in book.bad and book.busy_until.get(p, 0.0) <= now}
    missing = (p for p in range(book.piece_count) if p not in book.held)
    chosen = choose_pieces(missing, slots=book.settings.concurrency - len(book.in_flight),
                           per_parent=book.settings.per_parent, in_flight=book.in_flight,
                           verifiable=book.digests, holdings=usable,
                           piece_rank=book.piece_rank, tie_break=book.parent_rank)
    fetches: list[Action] = []
    for piece, parent in chosen:
        book.in_flight[piece] = parent
        holders = sum(piece in held for held in usable.values())
        info = book.parents[parent]
        fetches.append(Fetch(piece, parent, info.upload_url, holders, info.grant))
    return fetches


def _askable(book: Book, parent: str, now: float) -> set[int]:
    """The pieces ``parent`` may be asked for: what it holds, or only what it offered while
    that offer lasts and has a piece this child still lacks."""
    held = book.holdings.get(parent, set())
    offer = book.offers.get(parent)
    if offer is None:
        return held
    pieces, until = offer
    left = {p for p in pieces if p not in book.held and p not in book.in_flight}
    if until <= now or (pieces and not left):
        del book.offers[parent]
        return held
    return held & left


def _check_stall(book: Book, now: float) -> list[Action]:
    if book.in_flight:
        return []
    if book.answer_by is not None:
        return [GiveUp()] if now > book.answer_by else []
    usable = [p for p in book.parents if p not in book.bad]
    if usable and now - book.last_progress <= book.settings.stall_timeout:
        return []
    book.answer_by = now + book.settings.schedule_timeout
    return [Reschedule(tuple(sorted(book.bad)),
                       "no usable parent" if not usable else "parents stalled")]
