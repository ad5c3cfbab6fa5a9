"""The scheduler's pure core: fold host and task events into a per-task DAG and decide.

``step(state, event)`` applies one event and returns the decisions it caused. Folding and
deciding are one step because a decision changes the state it was made from (a parent's
upload load, a task's back-to-source count); the decisions are never fed back in, so
replaying the triggers alone rebuilds both the state and every decision.

No I/O, no clock (time is the trigger's ``at``), no randomness that is not seeded from the
events. The state is a tree of mutable ``msgspec.Struct``s, updated in place for speed and
encoded whole for snapshots.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final, Literal

import msgspec

from damselfly.events.base import Event
from damselfly.events.config import DEFAULT_WEIGHTS, ClusterConfig, ClusterConfigSet
from damselfly.events.fields import MAX_PIECES
from damselfly.events.hosts import HostAnnounced, HostLeft
from damselfly.events.ids import derived_id
from damselfly.events.sched import (
    BackToSourceOrdered,
    ParentInfo,
    ParentsAssigned,
    PeerQueued,
    ScheduleFailed,
    SeedPeerTriggered,
)
from damselfly.events.tasks import (
    BackToSourceStarted,
    PeerFailed,
    PeerLeft,
    PeerRegistered,
    PeerStarted,
    PeerSucceeded,
    PieceFailed,
    PieceFinished,
    PiecesFinished,
    RescheduleRequested,
    TaskMetadataReported,
)

PeerState = Literal["pending", "running", "back_to_source", "succeeded", "failed", "left"]
"""A peer's life in a task: pending → running → back-to-source → succeeded/failed → left."""
PENDING: Final = "pending"
RUNNING: Final = "running"
BACK_TO_SOURCE: Final = "back_to_source"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
LEFT: Final = "left"
_DONE: Final = frozenset({SUCCEEDED, FAILED, LEFT})
_SERVING: Final = frozenset({RUNNING, BACK_TO_SOURCE, SUCCEEDED})

# A slow piece never makes a parent bad: on a shared, shaped link one piece taking 20x a
# parent's mean is ordinary queueing, and banning on it (Dragonfly's rule) marked the seed
# and every finished peer bad and froze children for good. A child gives faster parents
# more of its requests by itself (docs/protocol.md).
BAD_UPLOAD_FAILURES: Final = 3
LOCATION_ELEMENTS: Final = 5


class Host(msgspec.Struct, kw_only=True):
    host_id: str
    upload_url: str
    seed: bool = False
    idc: str = ""
    location: str = ""
    upload_limit: int = 50
    interval: float = 0.0     # its keepalive period, as announced (0: not said)
    uploads: int = 0          # children now assigned to this host's peers
    upload_ok: int = 0
    upload_failed: int = 0


class Peer(msgspec.Struct, kw_only=True):
    peer_id: str
    host_id: str
    priority: int = 3
    no_source: bool = False    # registered with disable_back_to_source
    state: PeerState = PENDING
    bitmap: bytearray = msgspec.field(default_factory=bytearray)
    finished: int = 0
    parents: list[str] = msgspec.field(default_factory=list)
    retries: int = 0
    blocklist: list[str] = msgspec.field(default_factory=list)
    waiting: bool = False
    ordered: bool = False      # this scheduler sent it to the origin (or it is the seed)
    source: bool = False       # fetched from the origin when ordered: its digests are the
    #                            authority (saying "back to source" does not make one)
    bad: bool = False
    failed_uploads: int = 0
    told: set[int] = msgspec.field(default_factory=set)  # pieces whose digest it was sent


class Task(msgspec.Struct, kw_only=True):
    task_id: str
    url: str = ""
    tag: str = ""
    application: str = ""
    piece_length_hint: int = 0
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    filtered_query_params: list[str] = msgspec.field(default_factory=list)
    content_length: int = -1
    piece_length: int = 0
    piece_count: int = 0
    digests: list[str] = msgspec.field(default_factory=list)
    source_peers: list[str] = msgspec.field(default_factory=list)
    peers: dict[str, Peer] = msgspec.field(default_factory=dict)
    holders: list[str] = msgspec.field(default_factory=list)   # peers holding >= 1 piece
    origin_fetchers: list[str] = msgspec.field(default_factory=list)  # active back-to-source
    seed_host: str = ""

    @property
    def shaped(self) -> bool:
        return self.piece_length > 0 and self.content_length >= 0


class State(msgspec.Struct, kw_only=True):
    cluster: str
    config: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    weights: dict[str, float] = msgspec.field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    weight_override: dict[str, float] = msgspec.field(default_factory=dict)
    hosts: dict[str, Host] = msgspec.field(default_factory=dict)
    tasks: dict[str, Task] = msgspec.field(default_factory=dict)


class ScoreRow(msgspec.Struct, frozen=True):
    peer_id: str
    score: float
    features: dict[str, float]


class Explained(msgspec.Struct, frozen=True):
    """Why a peer got the parents it got: every sampled candidate with its score."""

    peer_id: str
    trigger_id: str
    rows: list[ScoreRow]


Trace = list[Explained] | None


def new_state(cluster: str, weight_override: dict[str, float] | None = None) -> State:
    """An empty state; ``weight_override`` wins over the cluster's configured weights."""
    state = State(cluster=cluster, weight_override=dict(weight_override or {}))
    _set_config(state, state.config)
    return state


def step(state: State, event: Event, trace: Trace = None) -> list[Event]:
    """Apply ``event`` to ``state`` (in place) and return the decisions it caused."""
    handler = _HANDLERS.get(type(event))
    if handler is None:  # keepalives matter only to the shell, which turns silence into HostLeft
        return []
    out: list[Event] = []
    handler(state, event, out, trace)
    return out


# --- configuration and hosts -------------------------------------------------------------

def _set_config(state: State, config: ClusterConfig) -> None:
    state.config = config
    state.weights = {**DEFAULT_WEIGHTS,
                     **{k: v for k, v in config.weights.items() if k in DEFAULT_WEIGHTS},
                     **state.weight_override}


def _on_config(state: State, e: ClusterConfigSet, out: list[Event], trace: Trace) -> None:
    if e.cluster == state.cluster:
        _set_config(state, e.config)


def _on_host_announced(state: State, e: HostAnnounced, out: list[Event], trace: Trace) -> None:
    if e.cluster != state.cluster:
        return
    old = state.hosts.get(e.host_id)
    host = Host(host_id=e.host_id, upload_url=e.upload_url, seed=e.seed, idc=e.idc,
                location=e.location, upload_limit=e.upload_limit, interval=e.interval)
    if old is not None:
        host.uploads, host.upload_ok = old.uploads, old.upload_ok
        host.upload_failed = old.upload_failed
    state.hosts[e.host_id] = host


def _on_host_left(state: State, e: HostLeft, out: list[Event], trace: Trace) -> None:
    if e.cluster != state.cluster or state.hosts.pop(e.host_id, None) is None:
        return
    for task in list(state.tasks.values()):
        seed_gone = task.seed_host == e.host_id
        if seed_gone:
            task.seed_host = ""
        gone = [p.peer_id for p in task.peers.values() if p.host_id == e.host_id]
        for peer_id in gone:
            _drop_peer(state, task, task.peers[peer_id], LEFT, e, out, trace)
        if gone or seed_gone:
            _wake_waiting(state, task, e, out, trace)
        _forget_if_empty(state, task)


# --- task events -------------------------------------------------------------------------

def _on_registered(state: State, e: PeerRegistered, out: list[Event], trace: Trace) -> None:
    if e.cluster != state.cluster:
        return
    task = state.tasks.get(e.task_id)
    if task is None:
        task = state.tasks[e.task_id] = Task(
            task_id=e.task_id, url=e.url, tag=e.tag, application=e.application,
            piece_length_hint=e.piece_length, headers=dict(e.headers),
            filtered_query_params=list(e.filtered_query_params))
    peer = task.peers.get(e.peer_id)
    if peer is not None and peer.state == FAILED:  # trying again from scratch
        _drop_peer(state, task, peer, LEFT, e, out, trace)
        peer = None
    if peer is None:
        peer = task.peers[e.peer_id] = Peer(peer_id=e.peer_id, host_id=e.host_id,
                                            priority=e.priority,
                                            no_source=e.disable_back_to_source)
    _schedule(state, task, peer, e, out, trace)


def _on_started(state: State, e: PeerStarted, out: list[Event], trace: Trace) -> None:
    peer = _peer(state, e.task_id, e.peer_id)
    if peer is not None and peer.state == PENDING:
        peer.state = RUNNING


def _on_back_to_source(state: State, e: BackToSourceStarted, out: list[Event],
                       trace: Trace) -> None:
    task = state.tasks.get(e.task_id)
    peer = task.peers.get(e.peer_id) if task else None
    if task is None or peer is None or peer.state in _DONE:
        return
    _release_parents(state, task, peer)
    peer.state, peer.waiting = BACK_TO_SOURCE, False
    # Only a peer this scheduler sent to the origin vouches for the bytes (an import's only
    # source is its importer): another peer that says it went back to source still fetches,
    # and its pieces are checked against a vouched source's digests like anyone's.
    peer.source = _vouched(task, peer)
    if peer.source and e.peer_id not in task.source_peers:
        task.source_peers.append(e.peer_id)
    if e.peer_id not in task.origin_fetchers:
        task.origin_fetchers.append(e.peer_id)


def _on_metadata(state: State, e: TaskMetadataReported, out: list[Event], trace: Trace) -> None:
    task = state.tasks.get(e.task_id)
    peer = task.peers.get(e.peer_id) if task else None
    if task is None or peer is None or not peer.source or not 0 <= e.piece_count <= MAX_PIECES:
        return  # only a peer that fetched from the origin is an authority
    was_shaped = task.shaped
    task.content_length, task.piece_length = e.content_length, e.piece_length
    task.piece_count = e.piece_count
    _grow_digests(task, e.piece_count)
    for i, digest in enumerate(e.piece_digests[:e.piece_count]):
        if digest and not task.digests[i]:
            task.digests[i] = digest
    if not was_shaped:
        _wake_waiting(state, task, e, out, trace)


def _on_piece_finished(state: State, e: PieceFinished, out: list[Event], trace: Trace) -> None:
    task = state.tasks.get(e.task_id)
    peer = task.peers.get(e.peer_id) if task else None
    if task is None or peer is None:
        return
    if not _set_bit(peer, e.piece):
        return
    if e.parent_id:
        if peer.state == PENDING:
            peer.state = RUNNING
        parent = task.peers.get(e.parent_id)
        if parent is not None:
            _count_upload(state, parent, ok=True)
    elif peer.source and e.piece >= 0:
        _grow_digests(task, e.piece + 1)
        if not task.digests[e.piece]:
            task.digests[e.piece] = e.digest
    if peer.finished == 1 and peer.state not in (FAILED, LEFT):
        task.holders.append(peer.peer_id)
        _wake_waiting(state, task, e, out, trace)
        _top_up(state, task, [peer], e, out, trace)


def _on_pieces_finished(state: State, e: PiecesFinished, out: list[Event], trace: Trace
                        ) -> None:
    for single in e.singles():
        _on_piece_finished(state, single, out, trace)


def _on_piece_failed(state: State, e: PieceFailed, out: list[Event], trace: Trace) -> None:
    task = state.tasks.get(e.task_id)
    parent = task.peers.get(e.parent_id) if task and e.parent_id else None
    if task is None or parent is None:
        return
    _count_upload(state, parent, ok=False)
    parent.failed_uploads += 1
    if e.corrupt or parent.failed_uploads >= BAD_UPLOAD_FAILURES:
        _mark_bad(state, task, parent, e, out, trace)


def _on_succeeded(state: State, e: PeerSucceeded, out: list[Event], trace: Trace) -> None:
    task = state.tasks.get(e.task_id)
    peer = task.peers.get(e.peer_id) if task else None
    if task is None or peer is None or peer.state in (FAILED, LEFT):
        return
    freed = [task.peers[p] for p in peer.parents if p in task.peers]
    _release_parents(state, task, peer)
    peer.state, peer.waiting = SUCCEEDED, False
    if task.piece_count and peer.finished < task.piece_count:
        # It holds everything even if some piece reports were lost.
        for i in range(task.piece_count):
            _set_bit(peer, i)
    if peer.finished and peer.peer_id not in task.holders:
        task.holders.append(peer.peer_id)
    _wake_waiting(state, task, e, out, trace)
    _top_up(state, task, [*freed, peer], e, out, trace)


def _on_failed(state: State, e: PeerFailed, out: list[Event], trace: Trace) -> None:
    _on_gone(state, e.task_id, e.peer_id, FAILED, e, out, trace)


def _on_left(state: State, e: PeerLeft, out: list[Event], trace: Trace) -> None:
    _on_gone(state, e.task_id, e.peer_id, LEFT, e, out, trace)


def _on_gone(state: State, task_id: str, peer_id: str, new_state: PeerState, e: Event,
             out: list[Event], trace: Trace) -> None:
    task = state.tasks.get(task_id)
    peer = task.peers.get(peer_id) if task else None
    if task is None or peer is None:
        return
    _drop_peer(state, task, peer, new_state, e, out, trace)
    _wake_waiting(state, task, e, out, trace)
    _forget_if_empty(state, task)


def _on_reschedule(state: State, e: RescheduleRequested, out: list[Event], trace: Trace) -> None:
    task = state.tasks.get(e.task_id)
    peer = task.peers.get(e.peer_id) if task else None
    if task is None or peer is None or peer.state in _DONE:
        return
    peer.retries += 1
    peer.blocklist.extend(b for b in e.blocklist if b not in peer.blocklist)
    peer.told.clear()  # a stuck child may have missed a decision: tell it every digest again
    if peer.state == BACK_TO_SOURCE:  # its origin fetch failed: it wants parents now
        peer.state = RUNNING
        if peer.peer_id in task.origin_fetchers:
            task.origin_fetchers.remove(peer.peer_id)
    _schedule(state, task, peer, e, out, trace)


# --- the decision ------------------------------------------------------------------------

def _schedule(state: State, task: Task, peer: Peer, trigger: Event, out: list[Event],
              trace: Trace, holders: list[str] | None = None) -> None:
    """Decide for one peer: parents (among ``holders``, default the task's), back-to-source,
    a seed trigger, waiting, or failure."""
    if peer.state in _DONE:
        return None
    if peer.priority == 1:
        return _fail(state, task, peer, trigger, out, "priority 1 forbids downloading this task")
    if peer.retries > state.config.retry_limit:
        return _fail(state, task, peer, trigger, out,
                     f"retry limit {state.config.retry_limit} reached")
    parents = choose_parents(state, task, peer, trigger.id, trace, holders)
    if parents and task.shaped:
        return _assign(state, task, peer, parents, trigger, out)
    if parents and any(_vouched(task, task.peers[p]) for p in task.origin_fetchers):
        # holders exist; the vouched origin fetcher reports the shape soon
        return _queue(state, task, peer, trigger, out, "waiting for the task's size")
    host = state.hosts.get(peer.host_id)
    is_seed = host is not None and host.seed
    origin_busy = bool(task.origin_fetchers) or _seed_pending(state, task)
    if peer.no_source and peer.priority != 2 and not is_seed and not origin_busy \
            and not task.holders and (seed := _pick_seed(state, task, peer)) is not None:
        # dfget's --disable-back-to-source: this peer never fetches from the origin, but a
        # seed peer may, as in Dragonfly.
        _trigger_seed(state, task, seed, trigger, out)
        return _queue(state, task, peer, trigger, out, "waiting for the seed peer")
    if peer.no_source or peer.priority == 2:
        if origin_busy:
            return _queue(state, task, peer, trigger, out, "waiting for a holder")
        return _fail(state, task, peer, trigger, out,
                     "no parent can serve and back-to-source is not allowed")
    if not is_seed and peer.priority != 3:
        if _seed_pending(state, task):
            return _queue(state, task, peer, trigger, out, "waiting for the seed peer")
        if not task.holders and not task.origin_fetchers:
            seed = _pick_seed(state, task, peer)
            if seed is not None:
                _trigger_seed(state, task, seed, trigger, out)
                return _queue(state, task, peer, trigger, out, "waiting for the seed peer")
    if is_seed or len(task.origin_fetchers) < state.config.back_to_source_limit:
        _order_back_to_source(state, task, peer, trigger, out)
        return None
    _queue(state, task, peer, trigger, out, "the task is at its back-to-source limit")
    return None


def choose_parents(state: State, task: Task, child: Peer, trigger_id: str,
                   trace: Trace = None, holders: list[str] | None = None) -> list[Peer]:
    """The best candidate parents for ``child`` among ``holders`` (default: the task's),
    best first (may be empty)."""
    config = state.config
    pool = [task.peers[p] for p in (task.holders if holders is None else holders)
            if _can_serve(state, task, child, task.peers[p])]
    if len(pool) > config.filter_parent_limit:
        pool = random.Random(f"{trigger_id}|{child.peer_id}").sample(
            pool, config.filter_parent_limit)
    child_host = state.hosts.get(child.host_id)
    child_bits = int.from_bytes(child.bitmap, "big") if child.bitmap else 0
    rows = []
    for cand in pool:
        features = _features(state, task, cand, child_host, child, child_bits)
        score = sum(state.weights[k] * v for k, v in features.items())
        rows.append(ScoreRow(cand.peer_id, round(score, 9), features))
    rows.sort(key=lambda r: (-r.score, r.peer_id))
    if trace is not None:
        trace.append(Explained(child.peer_id, trigger_id, rows))
    return [task.peers[r.peer_id] for r in rows[:config.candidate_parent_limit]]


def _can_serve(state: State, task: Task, child: Peer, cand: Peer) -> bool:
    if cand.peer_id == child.peer_id or cand.bad or cand.state not in _SERVING:
        return False
    if cand.host_id == child.host_id or cand.peer_id in child.blocklist:
        return False
    host = state.hosts.get(cand.host_id)
    if host is None or not _has_slot(state, cand) and cand.peer_id not in child.parents:
        return False
    # A peer still downloading must hold something beyond what the child holds.
    return cand.state == SUCCEEDED or cand.finished > child.finished or not _has_all(cand, child)


def _has_all(cand: Peer, child: Peer) -> bool:
    a = int.from_bytes(cand.bitmap, "big") if cand.bitmap else 0
    b = int.from_bytes(child.bitmap, "big") if child.bitmap else 0
    return _pad(a, cand, child) & ~_pad(b, child, cand) == 0


def _pad(bits: int, peer: Peer, other: Peer) -> int:
    """Align big-endian bitmaps of different byte lengths."""
    return bits << (8 * max(0, len(other.bitmap) - len(peer.bitmap)))


def _features(state: State, task: Task, cand: Peer, child_host: Host | None, child: Peer,
              child_bits: int) -> dict[str, float]:
    host = state.hosts[cand.host_id]
    cand_bits = int.from_bytes(cand.bitmap, "big") if cand.bitmap else 0
    gain = (_pad(cand_bits, cand, child) & ~_pad(child_bits, child, cand)).bit_count()
    total = max(task.piece_count, cand.finished, 1)
    tries = host.upload_ok + host.upload_failed
    free = (max(0, host.upload_limit - host.uploads) / host.upload_limit
            if host.upload_limit else 0.0)
    idc = child_host is not None and bool(host.idc) and host.idc == child_host.idc
    return {
        "pieces": gain / total,
        "upload_success": host.upload_ok / tries if tries else 1.0,
        "free_upload": free,
        "host_type": 1.0 if host.seed else 0.5,
        "idc": 1.0 if idc else 0.0,
        "location": _location_affinity(host.location, child_host.location if child_host else ""),
    }


def _location_affinity(a: str, b: str) -> float:
    """Share of ``a|b|c`` elements matched from the front (Dragonfly's location affinity)."""
    if not a or not b:
        return 0.0
    if a == b:
        return 1.0
    matched = 0
    for x, y in zip(a.split("|")[:LOCATION_ELEMENTS], b.split("|")[:LOCATION_ELEMENTS]):  # noqa: B905
        if x != y:
            break
        matched += 1
    return matched / LOCATION_ELEMENTS


def _assign(state: State, task: Task, peer: Peer, parents: list[Peer], trigger: Event,
            out: list[Event], kind: str = "assign") -> None:
    """Give ``peer`` these parents. ``kind`` keeps the decision's id apart from another one
    the same trigger made for the same peer (a top-up after a wake), which JetStream would
    otherwise drop as a duplicate."""
    _release_parents(state, task, peer)
    for p in parents:
        state.hosts[p.host_id].uploads += 1
    peer.parents = [p.peer_id for p in parents]
    peer.waiting = False
    out.append(ParentsAssigned(
        id=derived_id(trigger.id, kind, peer.peer_id), at=trigger.at, cluster=state.cluster,
        task_id=task.task_id, peer_id=peer.peer_id, trigger_id=trigger.id,
        parents=[ParentInfo(peer_id=p.peer_id, host_id=p.host_id,
                            upload_url=state.hosts[p.host_id].upload_url,
                            bitmap=bytes(p.bitmap), seed=state.hosts[p.host_id].seed)
                 for p in parents],
        content_length=task.content_length, piece_length=task.piece_length,
        piece_digests=_untold_digests(task, peer), source_peers=list(task.source_peers)))


def _untold_digests(task: Task, peer: Peer) -> list[str]:
    """The task's known digests this peer was not sent yet ("" for the rest, trailing ones
    left off): a child keeps what it was told, and with 512 pieces the whole list is 36 KB
    in every top-up, a large share of what NATS delivers."""
    digests = [d if d and i not in peer.told else "" for i, d in enumerate(task.digests)]
    peer.told.update(i for i, d in enumerate(task.digests) if d)
    while digests and not digests[-1]:
        digests.pop()
    return digests


def _vouched(task: Task, peer: Peer) -> bool:
    """Whether the peer's digests are the task's authority once it fetches from the origin:
    this scheduler sent it there, or the task is a local file put into the swarm
    (``damselfly import``), whose only source is its importer."""
    return peer.ordered or task.url.startswith("file:")


def _order_back_to_source(state: State, task: Task, peer: Peer, trigger: Event,
                          out: list[Event]) -> None:
    _release_parents(state, task, peer)
    peer.waiting, peer.ordered = False, True
    if peer.peer_id not in task.origin_fetchers:
        task.origin_fetchers.append(peer.peer_id)
    out.append(BackToSourceOrdered(
        id=derived_id(trigger.id, "source", peer.peer_id), at=trigger.at, cluster=state.cluster,
        task_id=task.task_id, peer_id=peer.peer_id, trigger_id=trigger.id,
        reason="no parent can serve"))


def _queue(state: State, task: Task, peer: Peer, trigger: Event, out: list[Event],
           reason: str) -> None:
    """Hold the peer until a holder can serve it; tell it once, when it starts waiting, so
    it does not time out and go to the origin (waking re-decides on every piece)."""
    if not peer.waiting:
        out.append(PeerQueued(
            id=derived_id(trigger.id, "queue", peer.peer_id), at=trigger.at,
            cluster=state.cluster, task_id=task.task_id, peer_id=peer.peer_id,
            trigger_id=trigger.id, reason=reason))
    peer.waiting = True


def _fail(state: State, task: Task, peer: Peer, trigger: Event, out: list[Event],
          reason: str) -> None:
    _release_parents(state, task, peer)
    peer.state, peer.waiting = FAILED, False
    out.append(ScheduleFailed(
        id=derived_id(trigger.id, "fail", peer.peer_id), at=trigger.at, cluster=state.cluster,
        task_id=task.task_id, peer_id=peer.peer_id, trigger_id=trigger.id, reason=reason))


def _seed_pending(state: State, task: Task) -> bool:
    """A seed host was asked to fetch the task and its peer may still serve (none yet, or
    one neither bad nor gone), or one of its peers is fetching it. A seed that went bad or
    failed is not worth waiting for: the peers it kept waiting go to the origin instead."""
    if task.seed_host and task.seed_host in state.hosts:
        mine = [p for p in task.peers.values() if p.host_id == task.seed_host]
        if not mine or any(not p.bad and p.state not in (FAILED, LEFT) for p in mine):
            return True
    for peer_id in task.origin_fetchers:
        fetcher = task.peers[peer_id]
        host = state.hosts.get(fetcher.host_id)
        if host is not None and host.seed and not fetcher.bad:
            return True
    return False


def _pick_seed(state: State, task: Task, peer: Peer) -> Host | None:
    seeds = sorted(h for h, host in state.hosts.items() if host.seed and h != peer.host_id)
    if not seeds:
        return None
    return state.hosts[seeds[int(task.task_id[:8], 16) % len(seeds)]]


def _trigger_seed(state: State, task: Task, seed: Host, trigger: Event,
                  out: list[Event]) -> None:
    task.seed_host = seed.host_id
    out.append(SeedPeerTriggered(
        id=derived_id(trigger.id, "seed", seed.host_id), at=trigger.at, cluster=state.cluster,
        task_id=task.task_id, host_id=seed.host_id, trigger_id=trigger.id, url=task.url,
        tag=task.tag, application=task.application, piece_length=task.piece_length_hint,
        headers=dict(task.headers), filtered_query_params=list(task.filtered_query_params)))


def _wake_waiting(state: State, task: Task, trigger: Event, out: list[Event],
                  trace: Trace) -> None:
    # Only holders with a free slot can take a waiting peer (it has no parents yet): looking
    # at just those keeps a wake cheap when hundreds wait for a few slots.
    free = [p for p in task.holders if _has_slot(state, task.peers[p])]
    for peer in list(task.peers.values()):
        if peer.waiting and peer.state not in _DONE:
            _schedule(state, task, peer, trigger, out, trace, free)
            if peer.parents:
                free = [p for p in free if _has_slot(state, task.peers[p])]


def _top_up(state: State, task: Task, offered: list[Peer], trigger: Event,
            out: list[Event], trace: Trace) -> None:
    """Offer holders with free upload slots — one that just got its first piece, or the
    parents a finished child let go, and that child — to the downloading peers, earliest
    registered first (after the waiting ones had their turn): as pieces spread, children
    fetch from each other instead of only from the first holders they were given. A peer
    with fewer parents than it may have gets the best offered added; a peer that has its
    fill trades its busiest parent (most children; never a source) for an offered one with
    at least two children fewer. Without the trade the first holders kept every child and
    a late holder none (N=30 shaped swarm: 15 peers with 25-30 children, 8 with none, and
    a third of the uplinks idle). Only the offered holders are scored, and the walk ends
    when their slots are taken, so one event costs a walk over the task's peers, not a
    parent choice per peer (at 1,000 peers a task that was 1,000x slower)."""
    limit = state.config.candidate_parent_limit
    offered = [c for c in offered if _has_slot(state, c)]
    for peer in task.peers.values():
        if not offered:
            return
        if peer.state not in (PENDING, RUNNING) or not peer.parents:
            continue
        current = [task.peers[p] for p in peer.parents]
        busiest = None
        if len(current) >= limit:  # a trade, if the offered are lighter enough (cheap test)
            busiest = max((p for p in current if not p.source),
                          key=lambda p: (_children(state, p), p.peer_id), default=None)
            if busiest is None or _children(state, busiest) < min(
                    _children(state, c) for c in offered) + 2:
                continue
        rows: Trace = [] if trace is not None else None
        extra = [c for c in choose_parents(state, task, peer, trigger.id, rows,
                                           [c.peer_id for c in offered])
                 if c.peer_id not in peer.parents]
        if extra and busiest is not None:
            if _children(state, busiest) < _children(state, extra[0]) + 2:
                continue
            current.remove(busiest)
        if extra:
            if trace is not None and rows:
                trace.extend(rows)  # explain only the decisions made
            _assign(state, task, peer, current + extra[:limit - len(current)], trigger, out,
                    "top-up")
            offered = [c for c in offered if _has_slot(state, c)]


def _children(state: State, peer: Peer) -> int:
    host = state.hosts.get(peer.host_id)
    return host.uploads if host is not None else 0


def _has_slot(state: State, peer: Peer) -> bool:
    host = state.hosts.get(peer.host_id)
    return host is not None and host.uploads < host.upload_limit


# --- bad parents, departures, bookkeeping ------------------------------------------------

def _mark_bad(state: State, task: Task, parent: Peer, trigger: Event, out: list[Event],
              trace: Trace) -> None:
    if parent.bad:
        return
    parent.bad = True
    _reschedule_children(state, task, parent.peer_id, trigger, out, trace)


def _reschedule_children(state: State, task: Task, parent_id: str, trigger: Event,
                         out: list[Event], trace: Trace) -> None:
    parent = task.peers[parent_id]
    host = state.hosts.get(parent.host_id)
    for child in list(task.peers.values()):
        if parent_id in child.parents:
            child.parents.remove(parent_id)
            if host is not None and host.uploads > 0:
                host.uploads -= 1
            if child.state not in _DONE:
                _schedule(state, task, child, trigger, out, trace)


def _drop_peer(state: State, task: Task, peer: Peer, new_state: PeerState, trigger: Event,
               out: list[Event], trace: Trace) -> None:
    _release_parents(state, task, peer)
    peer.state, peer.waiting = new_state, False
    for ids in (task.holders, task.origin_fetchers):
        if peer.peer_id in ids:
            ids.remove(peer.peer_id)
    _reschedule_children(state, task, peer.peer_id, trigger, out, trace)
    if new_state == LEFT:
        del task.peers[peer.peer_id]


def _forget_if_empty(state: State, task: Task) -> None:
    if not task.peers:
        del state.tasks[task.task_id]


def _release_parents(state: State, task: Task, peer: Peer) -> None:
    for pid in peer.parents:
        parent = task.peers.get(pid)
        host = state.hosts.get(parent.host_id) if parent else None
        if host is not None and host.uploads > 0:
            host.uploads -= 1
    peer.parents = []


def _count_upload(state: State, parent: Peer, *, ok: bool) -> None:
    host = state.hosts.get(parent.host_id)
    if host is not None:
        if ok:
            host.upload_ok += 1
        else:
            host.upload_failed += 1


def _set_bit(peer: Peer, piece: int) -> bool:
    """Mark a piece held (bit 7 of byte 0 is piece 0); False if it was already held."""
    if not 0 <= piece < MAX_PIECES:
        return False
    byte, mask = piece >> 3, 0x80 >> (piece & 7)
    bitmap = peer.bitmap
    if byte >= len(bitmap):
        bitmap.extend(bytes(byte + 1 - len(bitmap)))
    if bitmap[byte] & mask:
        return False
    bitmap[byte] |= mask
    peer.finished += 1
    return True


def _grow_digests(task: Task, count: int) -> None:
    if len(task.digests) < count:
        task.digests.extend([""] * (count - len(task.digests)))


def _peer(state: State, task_id: str, peer_id: str) -> Peer | None:
    task = state.tasks.get(task_id)
    return task.peers.get(peer_id) if task else None


_HANDLERS: Final[dict[type, Callable[..., None]]] = {
    ClusterConfigSet: _on_config,
    HostAnnounced: _on_host_announced,
    HostLeft: _on_host_left,
    PeerRegistered: _on_registered,
    PeerStarted: _on_started,
    BackToSourceStarted: _on_back_to_source,
    TaskMetadataReported: _on_metadata,
    PieceFinished: _on_piece_finished,
    PiecesFinished: _on_pieces_finished,
    PieceFailed: _on_piece_failed,
    PeerSucceeded: _on_succeeded,
    PeerFailed: _on_failed,
    PeerLeft: _on_left,
    RescheduleRequested: _on_reschedule,
}

