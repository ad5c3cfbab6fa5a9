"""Relaying piece reports to the children that can use them: reports in, relays out."""

from __future__ import annotations

from damselfly.events.sched import HeldPieces, HoldingsRelayed, ParentsAssigned
from damselfly.events.tasks import BackToSourceStarted, FinishedPiece, PiecesFinished
from damselfly.services.scheduler.relay import Relay
from tests.support.scheduling import TASK, C, Script


def swarm() -> Script:
    """p1 on h1 is fetching from the origin (pieces 0 and 1 so far); p2 and p3 fetch from
    p1."""
    s = Script()
    for h in ("h1", "h2", "h3", "h4"):
        s.host(h)
    s.register("p1", "h1")
    s.source("p1", range(2))
    for peer, host in (("p2", "h2"), ("p3", "h3")):
        assert [type(d) for d in s.register(peer, host)] == [ParentsAssigned]
    return s


def fed(s: Script, relay: Relay, peer: str, pieces: list[int], parent: str = "") -> None:
    report = PiecesFinished(id=f"r-{peer}-{pieces}", at=9.0, cluster=C, task_id=TASK,
                            peer_id=peer, pieces=[FinishedPiece(i, 16, f"d{i}" if not parent
                                                                else "", parent)
                                                  for i in pieces])
    s.apply(report)
    relay.note(report)


def by_child(relays: list[HoldingsRelayed]) -> dict[str, list[HeldPieces]]:
    return {r.peer_id: r.holders for r in relays}


def test_a_sources_new_pieces_reach_its_children_with_their_digests() -> None:
    s, relay = swarm(), Relay()
    fed(s, relay, "p1", [2, 3])
    relays = relay.flush(s.state, 10.0)
    assert by_child(relays) == {"p2": [HeldPieces("p1", [2, 3], ["d2", "d3"])],
                                "p3": [HeldPieces("p1", [2, 3], ["d2", "d3"])]}
    assert all((r.cluster, r.task_id) == (C, TASK) for r in relays)
    assert len({r.id for r in relays}) == 2


def test_a_childs_pieces_reach_only_the_peers_it_is_a_parent_of_without_digests() -> None:
    s, relay = swarm(), Relay()
    s.state.tasks[TASK].peers["p3"].parents.append("p2")  # p3 also fetches from p2
    fed(s, relay, "p2", [0], parent="p1")
    fed(s, relay, "p1", [2])
    relays = by_child(relay.flush(s.state, 10.0))
    assert relays["p3"] == [HeldPieces("p1", [2], ["d2"]), HeldPieces("p2", [0])]
    assert relays["p2"] == [HeldPieces("p1", [2], ["d2"])]  # never its own pieces


def test_a_forged_digest_from_a_peer_that_is_no_source_is_not_relayed() -> None:
    s, relay = swarm(), Relay()
    s.state.tasks[TASK].peers["p3"].parents.append("p2")
    fed(s, relay, "p2", [1])  # p2 fetched from p1, yet reports a piece as if from the origin
    assert by_child(relay.flush(s.state, 10.0)) == {"p3": [HeldPieces("p2", [1])]}


def test_relays_go_out_at_most_every_tick_and_gather_what_came_between() -> None:
    s, relay = swarm(), Relay(every=0.1)
    assert relay.due(10.0) is None  # nothing to say
    fed(s, relay, "p1", [2])
    assert relay.due(10.0) == 0.0
    assert len(relay.flush(s.state, 10.0)) == 2
    fed(s, relay, "p1", [3])
    assert relay.due(10.04) is not None and 0.05 < relay.due(10.04) < 0.07  # type: ignore[operator]
    assert relay.flush(s.state, 10.04) == []
    relays = relay.flush(s.state, 10.1)
    assert {r.peer_id: [h.pieces for h in r.holders] for r in relays} == \
        {"p2": [[3]], "p3": [[3]]}
    assert relay.due(10.2) is None


def test_children_that_are_done_or_fetch_from_the_origin_get_nothing() -> None:
    s, relay = swarm(), Relay()
    s.succeeded("p2")
    s.apply(BackToSourceStarted(id="b3", at=20.0, cluster=C, task_id=TASK, peer_id="p3"))
    fed(s, relay, "p1", [2])
    assert relay.flush(s.state, 10.0) == []


def test_reports_of_a_task_the_scheduler_forgot_are_dropped() -> None:
    s, relay = swarm(), Relay()
    fed(s, relay, "p1", [2])
    s.state.tasks.clear()
    assert relay.flush(s.state, 10.0) == []
    assert relay.due(10.5) is None
