"""The downloader's rules, input in, actions out: no sockets, no clock, no swarm."""

from __future__ import annotations

from damselfly.events.sched import (
    HeldPieces,
    HoldingsRelayed,
    ParentInfo,
    ParentsAssigned,
    PeerQueued,
)
from damselfly.services.peer.bitmap import Bitmap
from damselfly.services.peer.fetchbook import (
    Accept,
    Action,
    Book,
    Fetch,
    Fetched,
    GiveUp,
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

PIECES = 8
DIGESTS = [f"sha256:{i:064x}" for i in range(PIECES)]
SEED = "seed-1"


def parent(peer_id: str, held: range | list[int] = range(PIECES)) -> ParentInfo:
    bitmap = Bitmap(PIECES)
    for piece in held:
        bitmap.add(piece)
    return ParentInfo(peer_id=peer_id, host_id=f"h-{peer_id}", upload_url=f"http://{peer_id}",
                      bitmap=bitmap.to_bytes())


def assigned(*parents: ParentInfo, digests: list[str] = DIGESTS) -> ParentsAssigned:
    return ParentsAssigned(id="d", cluster="c", task_id="t", peer_id="me", trigger_id="r",
                           parents=list(parents), content_length=PIECES, piece_length=1,
                           piece_digests=digests, source_peers=[SEED])


def relayed(*holders: HeldPieces) -> HoldingsRelayed:
    return HoldingsRelayed(id="h", cluster="c", task_id="t", peer_id="me", holders=list(holders))


def finished(peer_id: str, piece: int) -> HoldingsRelayed:
    return relayed(HeldPieces(peer_id, [piece]))


def book(settings: Settings | None = None) -> Book:
    b = Book("me", settings or Settings())
    decide(b, Shaped(PIECES), 0.0)
    return b


def fetches(actions: list[Action]) -> list[tuple[int, str]]:
    return [(a.piece, a.parent) for a in actions if isinstance(a, Fetch)]


def test_a_child_asks_every_parent_for_a_different_piece() -> None:
    b = book()
    asked = fetches(decide(b, assigned(parent(SEED), parent("p1"), parent("p2")), 0.0))
    assert len(asked) == 3  # one request in flight per parent
    assert len({piece for piece, _ in asked}) == 3
    assert sorted({who for _, who in asked}) == ["p1", "p2", SEED]


def test_rarest_pieces_first() -> None:
    b = book()
    asked = fetches(decide(b, assigned(parent(SEED), parent("p1", [0, 1, 2, 3, 4, 5])), 0.0))
    from_seed = [piece for piece, who in asked if who == SEED]
    assert len(from_seed) == 1 and from_seed[0] in {6, 7}  # only the seed has them


def test_a_piece_without_a_source_digest_is_never_asked_for() -> None:
    b = book()
    decision = assigned(parent("p1"))
    decision = ParentsAssigned(**{f: getattr(decision, f) for f in decision.__struct_fields__
                                  if f not in ("piece_digests", "source_peers")})
    assert fetches(decide(b, decision, 0.0)) == []
    decide(b, relayed(HeldPieces(SEED, list(range(PIECES)), DIGESTS)),
           0.1)  # not a source peer of this child: no authority
    assert fetches(decide(b, Tick(), 0.2)) == []


def test_a_good_piece_is_accepted_and_opens_the_window_again() -> None:
    b = book(Settings(concurrency=1))
    (piece, who), = fetches(decide(b, assigned(parent("p1")), 0.0))
    actions = decide(b, Fetched(piece, who, DIGESTS[piece], 5.0), 1.0)
    assert actions[0] == Accept(piece, who, DIGESTS[piece], 5.0)
    assert len(fetches(actions)) == 1 and piece in b.held


def test_a_corrupt_piece_marks_its_parent_bad_for_the_task() -> None:
    b = book(Settings(concurrency=1))
    (piece, who), = fetches(decide(b, assigned(parent("p1"), parent("p2", [])), 0.0))
    assert who == "p1"
    actions = decide(b, Fetched(piece, who, "sha256:" + "f" * 64), 1.0)
    assert isinstance(actions[0], Reject) and actions[0].corrupt
    assert "p1" in b.bad and fetches(actions) == []
    assert fetches(decide(b, finished("p2", piece), 1.1)) == [(piece, "p2")]


def test_a_slow_piece_never_marks_a_parent_bad() -> None:
    b = book(Settings(concurrency=1))
    (piece, who), = fetches(decide(b, assigned(parent("p1")), 0.0))
    actions = decide(b, Fetched(piece, who, DIGESTS[piece], cost_ms=600_000), 600.0)
    assert isinstance(actions[0], Accept) and not b.bad and fetches(actions)


def test_failures_in_a_row_mark_a_parent_bad_and_ask_for_others() -> None:
    b = book(Settings(concurrency=1, parent_failure_limit=3))
    (piece, who), = fetches(decide(b, assigned(parent("p1")), 0.0))
    for attempt in range(3):
        actions = decide(b, Refused(piece, who, "failed", "reset by peer"), 1.0 + attempt)
        assert isinstance(actions[0], Reject) and actions[0].reason == "reset by peer"
        if attempt < 2:
            (piece, who), = fetches(actions)
    assert b.bad == {"p1"}
    assert actions[-1] == Reschedule(("p1",), "no usable parent")


def test_a_busy_parent_is_asked_again_after_a_backoff_that_doubles() -> None:
    b = book(Settings(concurrency=1, busy_backoff=1.0, max_busy_backoff=8.0, stall_timeout=60.0))
    (piece, _), = fetches(decide(b, assigned(parent("p1")), 0.0))
    assert decide(b, Refused(piece, "p1", "busy", "503"), 10.0) == []  # nothing but a wait
    first = b.busy_until["p1"]
    assert 10.5 <= first <= 11.0 and wake_at(b, 10.0) == first
    assert fetches(decide(b, Tick(), first - 0.01)) == []
    (piece, _), = fetches(decide(b, Tick(), first))
    decide(b, Refused(piece, "p1", "busy", "503"), 20.0)
    assert 21.0 <= b.busy_until["p1"] <= 22.0  # doubled


def test_a_spread_piece_comes_from_another_holder_and_the_seed_is_asked_for_its_offer() -> None:
    b = book(Settings(concurrency=2, per_parent=1))
    decide(b, assigned(parent(SEED), parent("p1", [])), 0.0)
    (piece, who), = b.in_flight.items()
    assert who == SEED
    offer = tuple(p for p in range(PIECES) if p != piece)[:2]
    actions = decide(b, Refused(piece, SEED, "spread", "429", retry_after=1.0, offer=offer),
                     1.0)
    assert [p for p, _ in fetches(actions)] in ([offer[0]], [offer[1]])  # only the offer
    assert fetches(decide(b, finished("p1", piece), 1.1)) == [(piece, "p1")]


def test_an_empty_offer_leaves_the_seed_alone_until_it_expires() -> None:
    b = book(Settings(concurrency=1))
    (piece, _), = fetches(decide(b, assigned(parent(SEED)), 0.0))
    assert decide(b, Refused(piece, SEED, "spread", "429", retry_after=1.0), 1.0) == []
    assert wake_at(b, 1.0) == 2.0
    assert fetches(decide(b, Tick(), 1.9)) == []
    assert len(fetches(decide(b, Tick(), 2.0))) == 1


def test_a_used_up_offer_lets_the_child_ask_the_seed_freely_again() -> None:
    b = book(Settings(concurrency=1))
    (piece, _), = fetches(decide(b, assigned(parent(SEED)), 0.0))
    other = (piece + 1) % PIECES
    (offered, _), = fetches(decide(b, Refused(piece, SEED, "spread", "429", retry_after=5.0,
                                              offer=(other,)), 1.0))
    assert offered == other
    actions = decide(b, Fetched(other, SEED, DIGESTS[other]), 1.5)
    assert len(fetches(actions)) == 1 and SEED not in b.offers


def test_a_parent_without_the_piece_only_loses_it_from_its_holdings() -> None:
    b = book(Settings(concurrency=1))
    (piece, who), = fetches(decide(b, assigned(parent("p1")), 0.0))
    actions = decide(b, Refused(piece, who, "missing", "404"), 1.0)
    assert piece not in b.holdings["p1"] and not b.bad and b.failures["p1"] == 0
    assert fetches(actions) and all(p != piece for p, _ in fetches(actions))


def test_pieces_a_parent_reports_later_are_asked_for() -> None:
    b = book(Settings(concurrency=4))
    assert fetches(decide(b, assigned(parent("p1", [])), 0.0)) == []
    assert fetches(decide(b, finished("p1", 3), 0.5)) == [(3, "p1")]


def test_a_relay_counts_each_holders_pieces_and_only_a_sources_digests() -> None:
    b = book(Settings(concurrency=8, per_parent=8))
    decide(b, assigned(parent("p1", []), digests=DIGESTS[:6]), 0.0)
    relay = relayed(HeldPieces("p1", [1, 5], ["sha256:" + "f" * 64, ""]),
                    HeldPieces(SEED, [6, 7], ["sha256:" + "e" * 64, ""]))
    assert sorted(fetches(decide(b, relay, 0.1))) == [(1, "p1"), (5, "p1")]
    # From a source, the pieces' digests are learnt (from anyone else they are not).
    assert b.digests.get(6) == "sha256:" + "e" * 64 and 7 not in b.digests
    assert b.digests[1] == DIGESTS[1]
    assert b.holdings[SEED] >= {6, 7}


def test_pieces_of_a_peer_that_is_no_parent_are_not_asked_for() -> None:
    b = book()
    decide(b, assigned(parent("p1", [])), 0.0)
    assert fetches(decide(b, finished(SEED, 2), 0.2)) == []


def test_stalled_parents_bring_one_reschedule_then_back_to_source() -> None:
    b = book(Settings(stall_timeout=5.0, schedule_timeout=10.0))
    decide(b, assigned(parent("p1", [])), 0.0)
    assert decide(b, Tick(), 4.0) == []
    assert decide(b, Tick(), 5.5) == [Reschedule((), "parents stalled")]
    assert decide(b, Tick(), 10.0) == []  # asked once, the answer is awaited
    assert decide(b, Tick(), 16.0) == [GiveUp()]


def test_new_parents_answer_the_reschedule() -> None:
    b = book(Settings(stall_timeout=5.0, schedule_timeout=10.0))
    decide(b, assigned(parent("p1", [])), 0.0)
    decide(b, Tick(), 5.5)
    assert fetches(decide(b, assigned(parent("p2")), 6.0))
    assert b.answer_by is None


def test_a_queued_child_waits_for_the_queue_timeout_not_the_schedule_timeout() -> None:
    b = book(Settings(stall_timeout=5.0, schedule_timeout=10.0, queue_timeout=300.0))
    decide(b, assigned(parent("p1", [])), 0.0)
    decide(b, PeerQueued(id="q", cluster="c", task_id="t", peer_id="me", trigger_id="r"), 1.0)
    assert decide(b, Tick(), 200.0) == []
    assert decide(b, Tick(), 302.0) == [GiveUp()]


def test_stopping_starts_nothing_new_and_lets_requests_in_flight_end() -> None:
    b = book(Settings(concurrency=2))
    asked = fetches(decide(b, assigned(parent("p1")), 0.0))
    assert decide(b, Stopping(), 1.0) == []
    piece, who = asked[0]
    actions = decide(b, Fetched(piece, who, DIGESTS[piece]), 2.0)
    assert [type(a) for a in actions] == [Accept]
    assert decide(b, Tick(), 100.0) == []  # no reschedule, no back to source


def test_the_same_inputs_give_the_same_actions() -> None:
    def run() -> list[Action]:
        b = Book("me")
        decide(b, Shaped(PIECES), 0.0)
        out = decide(b, assigned(parent(SEED), parent("p1")), 0.0)
        return out + decide(b, Refused(0, SEED, "busy", "503"), 1.0) + decide(b, Tick(), 9.0)
    assert run() == run()
