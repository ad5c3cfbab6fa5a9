"""The scheduler core, event in, decisions out: no sockets, no clock."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TypeVar

import msgspec
import pytest

from damselfly.events.base import Event
from damselfly.events.config import ClusterConfig
from damselfly.events.sched import (
    BackToSourceOrdered,
    ParentsAssigned,
    PeerQueued,
    ScheduleFailed,
    SeedPeerTriggered,
)
from damselfly.events.tasks import (
    BackToSourceStarted,
    FinishedPiece,
    PeerRegistered,
    PiecesFinished,
    TaskMetadataReported,
)
from damselfly.services.scheduler import core
from tests.support.scheduling import PIECES, TASK, C, Script, scripted_swarm

E = TypeVar("E", bound=Event)


def only(decisions: list[Event], kind: type[E]) -> E:
    assert len(decisions) == 1, decisions
    decision = decisions[0]
    assert isinstance(decision, kind), decision
    return decision


def peer_of(decision: Event) -> str:
    """The peer a decision is addressed to (every kind but ``SeedPeerTriggered`` has one)."""
    assert isinstance(decision, ParentsAssigned | BackToSourceOrdered | PeerQueued
                      | ScheduleFailed), decision
    return decision.peer_id


def queued(decisions: list[Event], reason: str) -> None:
    """The peer was told, once, to keep waiting (and nothing else was decided for it)."""
    assert [(type(d), getattr(d, "reason", None)) for d in decisions] == [(PeerQueued, reason)]


def swarm_with_source() -> Script:
    """Hosts h1..h4; p1 on h1 fetched the whole task from the origin."""
    s = Script()
    for h in ("h1", "h2", "h3", "h4"):
        s.host(h)
    only(s.register("p1", "h1"), BackToSourceOrdered)
    s.source("p1")
    return s


def test_a_batch_of_piece_reports_is_folded_as_its_single_reports() -> None:
    def child_with_parent() -> Script:
        s = swarm_with_source()
        only(s.register("p2", "h2"), ParentsAssigned)
        only(s.register("p3", "h3"), ParentsAssigned)
        return s

    one_by_one, batched = child_with_parent(), child_with_parent()
    decisions = [d for i in range(2) for d in one_by_one.piece("p2", i, parent="p1")]
    report = PiecesFinished(id="b", at=50.0, cluster=C, task_id=TASK, peer_id="p2", pieces=[
        FinishedPiece(i, 16, "", "p1", 1.0) for i in range(2)])
    assert [type(d) for d in batched.apply(report)] == [type(d) for d in decisions]
    assert msgspec.msgpack.encode(batched.state.tasks[TASK].peers["p2"]) == \
        msgspec.msgpack.encode(one_by_one.state.tasks[TASK].peers["p2"])


def test_parents_carry_addresses_bitmaps_digests_and_sources() -> None:
    s = swarm_with_source()
    d = only(s.register("p2", "h2"), ParentsAssigned)
    assert isinstance(d, ParentsAssigned)
    assert [p.peer_id for p in d.parents] == ["p1"]
    assert d.parents[0].upload_url == "http://h1:1"
    assert d.parents[0].bitmap == bytes([0b11110000])
    assert d.piece_digests == [f"d{i}" for i in range(PIECES)]
    assert d.source_peers == ["p1"]
    assert (d.content_length, d.piece_length) == (PIECES * 16, 16)
    assert d.trigger_id == s.log[-1].id


def test_a_child_is_sent_each_digest_once_and_all_again_when_it_asks() -> None:
    s = Script()
    for h in ("h1", "h2", "h3"):
        s.host(h)
    only(s.register("p1", "h1"), BackToSourceOrdered)
    s.source("p1", range(1))
    first = only(s.register("p2", "h2"), ParentsAssigned)
    assert isinstance(first, ParentsAssigned) and first.piece_digests == ["d0"]
    s.piece("p1", 1)
    s.piece("p1", 2)
    other = only(s.register("p3", "h3"), ParentsAssigned)
    assert isinstance(other, ParentsAssigned)
    assert other.piece_digests == ["d0", "d1", "d2"]  # another child is told them all
    top_up = [d for d in s.piece("p3", 0, parent="p1") if isinstance(d, ParentsAssigned)]
    assert [d.peer_id for d in top_up] == ["p2"]
    assert top_up[0].piece_digests == ["", "d1", "d2"]  # only the ones p2 was not sent
    again = [d for d in s.reschedule("p2") if isinstance(d, ParentsAssigned)]
    assert again and again[0].piece_digests == ["d0", "d1", "d2"]  # stuck: everything


def no_source(s: Script, peer: str, host: str) -> list[Event]:
    return s.apply(PeerRegistered(id=f"r-{peer}", at=50.0, cluster=C, task_id=TASK,
                                  peer_id=peer, host_id=host, url="https://origin/file",
                                  priority=6, disable_back_to_source=True))


def test_disable_back_to_source_still_lets_a_seed_peer_fetch() -> None:
    s = Script()
    s.host("seed-host", seed=True)
    s.host("h1")
    out = no_source(s, "p1", "h1")
    assert [type(d) for d in out] == [SeedPeerTriggered, PeerQueued]
    without_seed = Script()
    without_seed.host("h1")
    (failed,) = no_source(without_seed, "p1", "h1")
    assert isinstance(failed, ScheduleFailed)
    assert "back-to-source is not allowed" in failed.reason


def test_never_a_parent_on_the_childs_own_host() -> None:
    s = swarm_with_source()
    d = only(s.register("p1b", "h1"), BackToSourceOrdered)  # only holder shares its host
    assert d.peer_id == "p1b"


def test_peers_trade_both_ways() -> None:
    # Pieces move only where a parent holds what a child lacks, so two peers may be each
    # other's parents. Dragonfly's no-cycle rule let the earliest child draw only from the
    # seed while every later one drew from it (issue 16's chain).
    s = swarm_with_source()
    only(s.register("p2", "h2"), ParentsAssigned)
    s.piece("p2", 0, parent="p1")
    d = only(s.register("p3", "h3"), ParentsAssigned)
    assert isinstance(d, ParentsAssigned) and {p.peer_id for p in d.parents} == {"p1", "p2"}
    s.piece("p3", 1, parent="p1")
    out = s.reschedule("p2", blocklist=["p1"])
    d = only([x for x in out if peer_of(x) == "p2"], ParentsAssigned)
    assert [p.peer_id for p in d.parents] == ["p3"]
    assert "p2" in s.state.tasks[TASK].peers["p3"].parents


def test_failed_uploads_mark_a_parent_bad_and_its_children_move() -> None:
    s = swarm_with_source()
    only(s.register("p2", "h2"), ParentsAssigned)
    s.piece("p2", 0, parent="p1")
    s.piece("p2", 1, parent="p1")
    d = only(s.register("p3", "h3"), ParentsAssigned)
    assert isinstance(d, ParentsAssigned) and {p.peer_id for p in d.parents} == {"p1", "p2"}
    s.piece_failed("p3", 0, parent="p2")
    s.piece_failed("p3", 0, parent="p2")
    moved = s.piece_failed("p3", 0, parent="p2")
    d = only(moved, ParentsAssigned)
    assert isinstance(d, ParentsAssigned) and d.peer_id == "p3"
    assert [p.peer_id for p in d.parents] == ["p1"]
    d4 = only(s.register("p4", "h4"), ParentsAssigned)
    assert isinstance(d4, ParentsAssigned) and [p.peer_id for p in d4.parents] == ["p1"]


def test_a_corrupt_piece_marks_the_parent_bad_at_once() -> None:
    s = swarm_with_source()
    only(s.register("p2", "h2"), ParentsAssigned)
    s.piece("p2", 0, parent="p1")
    only(s.register("p3", "h3"), ParentsAssigned)
    d = only(s.piece_failed("p3", 1, parent="p2", corrupt=True), ParentsAssigned)
    assert isinstance(d, ParentsAssigned) and "p2" not in [p.peer_id for p in d.parents]


def test_a_slow_piece_never_marks_a_parent_bad() -> None:
    # Issue 16's stall: one piece 25x slower than its parent's mean (queueing on a shared
    # link) marked the seed and every finished peer bad, and their children froze.
    s = swarm_with_source()
    only(s.register("p2", "h2"), ParentsAssigned)
    for i, cost in enumerate([10.0, 12.0, 11.0, 9.0]):
        assert s.piece("p2", i, parent="p1", cost=cost) == []
    only(s.register("p3", "h3"), ParentsAssigned)
    for i in range(PIECES):
        assert s.piece("p3", i, parent="p1", cost=10.0 if i else 25_000.0) == []
    assert not s.state.tasks[TASK].peers["p1"].bad
    d = only(s.register("p4", "h4"), ParentsAssigned)
    assert "p1" in [p.peer_id for p in d.parents]


def test_a_seed_gone_bad_hands_the_peers_waiting_for_it_to_the_origin() -> None:
    s = Script()
    s.host("seed", seed=True)
    for h in ("h1", "h2", "h3"):
        s.host(h)
    s.register("p1", "h1", priority=0)
    only(s.register("seed-1", "seed"), BackToSourceOrdered)
    only(s.source("seed-1", range(1)), ParentsAssigned)
    d = only(s.piece_failed("p1", 0, parent="seed-1", corrupt=True), BackToSourceOrdered)
    assert s.state.tasks[TASK].peers["seed-1"].bad and d.peer_id == "p1"
    # Before issue 16 p2 was told "waiting for the seed peer" and waited for good.
    d = only(s.register("p2", "h2", priority=0), BackToSourceOrdered)
    assert d.peer_id == "p2"


def test_back_to_source_is_bounded_and_later_peers_wait_for_a_holder() -> None:
    s = Script()
    for h in ("h1", "h2", "h3", "h4", "h5"):
        s.host(h)
    s.config(ClusterConfig(back_to_source_limit=2))
    assert isinstance(only(s.register("p1", "h1"), BackToSourceOrdered), BackToSourceOrdered)
    assert isinstance(only(s.register("p2", "h2"), BackToSourceOrdered), BackToSourceOrdered)
    queued(s.register("p3", "h3"), "the task is at its back-to-source limit")
    queued(s.register("p4", "h4"), "the task is at its back-to-source limit")
    s.apply(BackToSourceStarted(id="b1", at=100.0, cluster=C, task_id=TASK, peer_id="p1"))
    out = s.apply(TaskMetadataReported(id="m1", at=101.0, cluster=C, task_id=TASK,
                                       peer_id="p1", content_length=64, piece_length=16,
                                       piece_count=PIECES))
    assert out == []  # nobody holds a piece yet
    out = s.piece("p1", 0)
    assert sorted(peer_of(x) for x in out) == ["p3", "p4"]
    assert all(isinstance(x, ParentsAssigned) and x.trigger_id == s.log[-1].id for x in out)


def test_priority_1_is_forbidden() -> None:
    s = swarm_with_source()
    d = only(s.register("p2", "h2", priority=1), ScheduleFailed)
    assert isinstance(d, ScheduleFailed) and "priority 1" in d.reason


def test_a_failed_peer_that_registers_again_is_scheduled_afresh() -> None:
    s = swarm_with_source()
    only(s.register("p2", "h2", priority=1), ScheduleFailed)
    d = only(s.register("p2", "h2", priority=3), ParentsAssigned)
    assert [p.peer_id for p in d.parents] == ["p1"]


def test_priority_2_never_goes_to_the_origin() -> None:
    s = Script()
    s.host("h1")
    s.host("h2")
    d = only(s.register("p1", "h1", priority=2), ScheduleFailed)
    assert isinstance(d, ScheduleFailed) and "back-to-source" in d.reason
    only(s.register("p2", "h2", priority=3), BackToSourceOrdered)
    queued(s.register("p3", "h1", priority=2), "waiting for a holder")  # p2 is fetching
    s.source("p2", range(1))
    assert s.state.tasks[TASK].peers["p3"].parents == ["p2"]


def test_priority_3_goes_to_the_origin_even_with_a_seed_host() -> None:
    s = Script()
    s.host("seed", seed=True)
    s.host("h1")
    only(s.register("p1", "h1", priority=3), BackToSourceOrdered)


@pytest.mark.parametrize("priority", [0, 4, 5, 6])
def test_priorities_0_and_4_to_6_trigger_a_seed_peer_first(priority: int) -> None:
    s = Script()
    s.host("seed", seed=True)
    s.host("h1")
    s.host("h2")
    d, waiting = s.register("p1", "h1", priority=priority)
    assert isinstance(d, SeedPeerTriggered)
    assert (d.host_id, d.url) == ("seed", "https://origin/file")
    assert isinstance(waiting, PeerQueued) and waiting.peer_id == "p1"
    queued(s.register("p2", "h2", priority=priority), "waiting for the seed peer")
    only(s.register("seed-1", "seed"), BackToSourceOrdered)
    out = s.source("seed-1", range(1))
    assert sorted(peer_of(x) for x in out) == ["p1", "p2"]
    assert all(isinstance(x, ParentsAssigned) and [p.peer_id for p in x.parents] == ["seed-1"]
               and x.parents[0].seed for x in out)


def test_a_seed_peer_already_fetching_is_waited_for() -> None:
    s = Script()
    s.host("seed", seed=True)
    s.host("h1")
    only(s.register("seed-1", "seed", priority=0), BackToSourceOrdered)
    queued(s.register("p1", "h1", priority=0), "waiting for the seed peer")
    d = only(s.source("seed-1", range(1)), ParentsAssigned)
    assert d.peer_id == "p1"


def test_without_a_seed_host_priority_0_goes_to_the_origin() -> None:
    s = Script()
    s.host("h1")
    only(s.register("p1", "h1", priority=0), BackToSourceOrdered)


def test_a_seed_that_leaves_before_serving_hands_its_waiters_to_the_origin() -> None:
    s = Script()
    s.host("seed", seed=True)
    s.host("h1")
    assert [type(d) for d in s.register("p1", "h1", priority=0)] == [SeedPeerTriggered,
                                                                      PeerQueued]
    d = only(s.host_left("seed"), BackToSourceOrdered)
    assert d.peer_id == "p1"


def test_the_retry_limit_fails_a_peer() -> None:
    s = swarm_with_source()
    s.config(ClusterConfig(retry_limit=1))
    only(s.register("p2", "h2"), ParentsAssigned)
    only(s.reschedule("p2"), ParentsAssigned)
    d = only(s.reschedule("p2"), ScheduleFailed)
    assert isinstance(d, ScheduleFailed) and "retry limit" in d.reason


def test_a_parent_that_leaves_gets_its_children_rescheduled() -> None:
    s = swarm_with_source()
    only(s.register("p2", "h2"), ParentsAssigned)
    s.piece("p2", 0, parent="p1")
    only(s.register("p3", "h3"), ParentsAssigned)
    out = s.host_left("h1")
    assert {x.peer_id: [p.peer_id for p in x.parents] for x in out
            if isinstance(x, ParentsAssigned)} == {"p3": ["p2"]}
    assert "p1" not in s.state.tasks[TASK].peers
    assert s.state.hosts.get("h1") is None


def test_a_failed_origin_fetcher_frees_its_slot_for_a_waiter() -> None:
    s = Script()
    for h in ("h1", "h2"):
        s.host(h)
    s.config(ClusterConfig(back_to_source_limit=1))
    only(s.register("p1", "h1"), BackToSourceOrdered)
    queued(s.register("p2", "h2"), "the task is at its back-to-source limit")
    only(s.failed("p1"), BackToSourceOrdered)


def test_upload_capacity_limits_children_and_frees_on_success() -> None:
    s = Script()
    s.host("h1", limit=1)
    s.host("h2")
    s.host("h3")
    s.config(ClusterConfig(back_to_source_limit=1))
    only(s.register("p1", "h1"), BackToSourceOrdered)
    s.source("p1")
    only(s.register("p2", "h2"), ParentsAssigned)
    # h1 has no free upload slot and the origin limit is reached
    queued(s.register("p3", "h3"), "the task is at its back-to-source limit")
    d = only(s.succeeded("p2"), ParentsAssigned)  # p2 is a new holder; h1 freed too
    assert d.peer_id == "p3"


def test_children_get_more_parents_as_pieces_spread() -> None:
    s = swarm_with_source()
    s.config(ClusterConfig(candidate_parent_limit=2))
    only(s.register("p2", "h2"), ParentsAssigned)
    only(s.register("p3", "h3"), ParentsAssigned)
    # p2 now holds a piece p3 lacks: p3 fetches from it too, and p1 stays its parent
    d = only(s.piece("p2", 0, parent="p1"), ParentsAssigned)
    assert d.peer_id == "p3"
    assert {p.peer_id for p in d.parents} == {"p1", "p2"}
    # p3's first piece is one p2 lacks: p2 fetches from p3 as p3 does from p2
    d = only(s.piece("p3", 1, parent="p1"), ParentsAssigned)
    assert d.peer_id == "p2" and {p.peer_id for p in d.parents} == {"p1", "p3"}
    assert s.piece("p3", 2, parent="p1") == []  # both have as many parents as they may
    assert s.state.hosts["h1"].uploads == 2
    assert s.state.hosts["h2"].uploads == s.state.hosts["h3"].uploads == 1


def test_a_child_with_its_fill_trades_its_busiest_parent_for_a_new_holder() -> None:
    s = swarm_with_source()
    for h in ("h5", "h6"):
        s.host(h)
    s.config(ClusterConfig(candidate_parent_limit=2))
    for i in range(2, 7):
        only(s.register(f"p{i}", f"h{i}"), ParentsAssigned)
    # p2's first piece: p3..p6 take it as their second parent (p2 now has 4 children)
    assert sorted(peer_of(d) for d in s.piece("p2", 0, parent="p1")) == ["p3", "p4", "p5", "p6"]
    # p3's first piece: p2 adds it; p4, already at its fill, trades p2 (4 children) for p3
    # (1); then p2 has 3 and p3 2, too close to trade again, so p5 and p6 keep p2.
    decisions = s.piece("p3", 1, parent="p1")
    assert all(isinstance(d, ParentsAssigned) for d in decisions)
    assert [(peer_of(d), sorted(p.peer_id for p in d.parents))  # type: ignore[attr-defined]
            for d in decisions] == [
        ("p2", ["p1", "p3"]), ("p4", ["p1", "p3"])]
    assert s.state.hosts["h2"].uploads == 3 and s.state.hosts["h3"].uploads == 2
    assert s.state.hosts["h1"].uploads == 5  # the source is never traded away


def test_affinity_and_weights_decide_the_order() -> None:
    s = Script()
    s.host("near", idc="a", location="eu|fr|paris")
    s.host("far", idc="b", location="us|ca|sf")
    s.host("child", idc="a", location="eu|fr|lyon")
    for peer, host in (("pn", "near"), ("pf", "far")):
        s.register(peer, host)
        s.source(peer)
    d = only(s.register("c", "child"), ParentsAssigned)
    assert [p.peer_id for p in d.parents] == ["pn", "pf"]
    s2 = Script(core.new_state(C, {"idc": 0.0, "location": -1.0}))
    for e in s.log[:-1]:
        s2.apply(e)
    d2 = only(s2.apply(s.log[-1]), ParentsAssigned)
    assert [p.peer_id for p in d2.parents] == ["pf", "pn"]


def test_only_origin_fetchers_are_digest_authorities() -> None:
    s = swarm_with_source()
    only(s.register("p2", "h2"), ParentsAssigned)
    s.apply(TaskMetadataReported(id="liar", at=1.0, cluster=C, task_id=TASK, peer_id="p2",
                                 content_length=1, piece_length=1, piece_count=1,
                                 piece_digests=["forged"]))
    task = s.state.tasks[TASK]
    assert task.content_length == PIECES * 16 and task.digests[0] == "d0"


def test_saying_back_to_source_does_not_make_a_peer_an_authority() -> None:
    # Issue 12: p1 is queued behind the seed, goes to the origin unasked and reports forged
    # digests first; only the seed, which the scheduler sent there, is believed.
    s = Script()
    s.host("seed", seed=True)
    for h in ("h1", "h2"):
        s.host(h)
    out = s.register("p1", "h1", priority=0)
    assert [type(d) for d in out] == [SeedPeerTriggered, PeerQueued]
    s.apply(BackToSourceStarted(id="liar-b", at=1.0, cluster=C, task_id=TASK, peer_id="p1"))
    s.apply(TaskMetadataReported(id="liar-m", at=1.0, cluster=C, task_id=TASK, peer_id="p1",
                                 content_length=PIECES * 16, piece_length=16,
                                 piece_count=PIECES, piece_digests=["forged"] * PIECES))
    task = s.state.tasks[TASK]
    assert not task.shaped and task.source_peers == [] and not task.peers["p1"].source
    # Its pieces do not shape the task: the next peer waits for the seed, not for a size
    # that only a believed source can give.
    s.piece("p1", 0)
    queued(s.register("p2", "h2", priority=0), "waiting for the seed peer")
    only(s.register("seed-1", "seed"), BackToSourceOrdered)
    out = s.source("seed-1")  # p1 fetches from the origin by itself: parents for p2 only
    assert out and {peer_of(d) for d in out} == {"p2"}
    assert all(isinstance(d, ParentsAssigned) and d.source_peers == ["seed-1"]
               and "forged" not in d.piece_digests for d in out)
    assert task.digests == [f"d{i}" for i in range(PIECES)]


def test_absurd_piece_numbers_are_not_believed() -> None:
    s = swarm_with_source()
    only(s.register("p2", "h2"), ParentsAssigned)
    assert s.piece("p2", 10**12, parent="p1") == []
    assert s.piece("p2", -1, parent="p1") == []
    # Decoding refuses such a report (events.fields); the core does not rely on that.
    s.apply(TaskMetadataReported(id="huge", at=1.0, cluster=C, task_id=TASK, peer_id="p1",
                                 content_length=10**12, piece_length=1, piece_count=10**12))
    peer, task = s.state.tasks[TASK].peers["p2"], s.state.tasks[TASK]
    assert (peer.finished, len(peer.bitmap), task.piece_count) == (0, 0, PIECES)


def test_replay_is_deterministic_and_survives_a_snapshot() -> None:
    log = scripted_swarm()
    first = core.new_state(C)
    decisions = [d for e in log for d in core.step(first, e)]
    assert len(decisions) > 12
    second = core.new_state(C)
    half = len(log) // 2
    again = [d for e in log[:half] for d in core.step(second, e)]
    # The shell's snapshot keeps the state as msgpack (shell.Snapshot).
    restored = msgspec.msgpack.decode(msgspec.msgpack.encode(second), type=core.State)
    again += [d for e in log[half:] for d in core.step(restored, e)]
    assert again == decisions
    assert msgspec.msgpack.encode(restored) == msgspec.msgpack.encode(first)


def test_the_core_imports_nothing_but_events_msgspec_and_the_standard_library() -> None:
    source = Path(core.__file__).read_text()
    allowed = {"__future__", "math", "operator", "random", "collections", "typing", "msgspec",
               "events"}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").removeprefix("damselfly.").split(".")[0] in allowed, \
                node.module
        elif isinstance(node, ast.Import):
            assert all(a.name.removeprefix("damselfly.").split(".")[0] in allowed
                       for a in node.names)
