"""The piece planner: rarest first, load spread over parents, only verifiable pieces."""

from __future__ import annotations

from damselfly.services.peer.planner import choose_pieces


def test_rarest_pieces_come_first() -> None:
    holdings = {"a": {0, 1, 2, 3}, "b": {0, 1, 2}, "c": {0, 1}}
    chosen = choose_pieces(range(4), slots=2, in_flight={}, verifiable={0, 1, 2, 3},
                           holdings=holdings, tie_break={})
    assert [piece for piece, _ in chosen] == [3, 2]
    assert chosen[0] == (3, "a")


def test_requests_spread_over_the_least_loaded_parents() -> None:
    holdings = {"a": set(range(6)), "b": set(range(6))}
    chosen = choose_pieces(range(6), slots=4, in_flight={9: "a"}, verifiable=set(range(6)),
                           holdings=holdings, tie_break={"a": 0.1, "b": 0.9})
    parents = [p for _, p in chosen]
    assert parents[0] == "b"  # a already had one in flight
    total = {"a": 1 + parents.count("a"), "b": parents.count("b")}
    assert len(parents) == 4 and abs(total["a"] - total["b"]) <= 1


def test_skips_pieces_in_flight_unverifiable_or_held_by_nobody() -> None:
    chosen = choose_pieces(range(5), slots=8, in_flight={0: "a"}, verifiable={0, 1, 2, 4},
                           holdings={"a": {0, 1, 3}}, tie_break={})
    assert chosen == [(1, "a")]  # 0 in flight, 2 held by nobody, 3 unverifiable, 4 nobody


def test_no_free_slot_means_nothing_new() -> None:
    assert choose_pieces(range(3), slots=0, in_flight={}, verifiable={0, 1, 2},
                         holdings={"a": {0, 1, 2}}, tie_break={}) == []
