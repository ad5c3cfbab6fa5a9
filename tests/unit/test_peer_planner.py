"""The piece planner: rarest first, a per-parent window, each child its own order among
equally rare pieces, only verifiable pieces."""

from __future__ import annotations

import random

from damselfly.services.peer.planner import choose_pieces

IN_ORDER = [float(i) for i in range(64)]


def test_rarest_pieces_come_first() -> None:
    holdings = {"a": {0, 1, 2, 3}, "b": {0, 1, 2}, "c": {0, 1}}
    chosen = choose_pieces(range(4), slots=2, per_parent=4, in_flight={},
                           verifiable={0, 1, 2, 3}, holdings=holdings, piece_rank=IN_ORDER,
                           tie_break={})
    assert [piece for piece, _ in chosen] == [3, 2]
    assert chosen[0] == (3, "a")


def test_requests_spread_over_the_least_loaded_parents() -> None:
    holdings = {"a": set(range(6)), "b": set(range(6))}
    chosen = choose_pieces(range(6), slots=4, per_parent=4, in_flight={9: "a"},
                           verifiable=set(range(6)), holdings=holdings, piece_rank=IN_ORDER,
                           tie_break={"a": 0.1, "b": 0.9})
    parents = [p for _, p in chosen]
    assert parents[0] == "b"  # a already had one in flight
    total = {"a": 1 + parents.count("a"), "b": parents.count("b")}
    assert len(parents) == 4 and abs(total["a"] - total["b"]) <= 1


def test_the_seed_window_goes_to_pieces_only_it_has_and_the_rest_to_peers() -> None:
    # The seed holds everything, the peer half: the seed's two slots take pieces only the
    # seed has, the peer's two take pieces it holds — not four requests queued at the seed.
    holdings = {"seed": set(range(8)), "peer": {0, 1, 2, 3}}
    chosen = choose_pieces(range(8), slots=8, per_parent=2, in_flight={},
                           verifiable=set(range(8)), holdings=holdings, piece_rank=IN_ORDER,
                           tie_break={})
    assert chosen == [(4, "seed"), (5, "seed"), (0, "peer"), (1, "peer")]


def test_a_full_window_at_every_parent_asks_for_nothing() -> None:
    holdings = {"a": set(range(8)), "b": set(range(8))}
    assert choose_pieces(range(8), slots=8, per_parent=1, in_flight={0: "a", 1: "b"},
                         verifiable=set(range(8)), holdings=holdings, piece_rank=IN_ORDER,
                         tie_break={}) == []


def test_children_with_the_same_view_ask_for_different_pieces() -> None:
    # Ten children that all see only the seed: with the lowest pieces first all ten ask
    # for pieces 0 and 1; each with its own random order they ask for different ones.
    asked = []
    for child in range(10):
        rng = random.Random(child)
        rank = [rng.random() for _ in range(256)]
        asked += [piece for piece, _ in choose_pieces(
            range(256), slots=16, per_parent=2, in_flight={}, verifiable=set(range(256)),
            holdings={"seed": set(range(256))}, piece_rank=rank, tie_break={})]
    assert len(asked) == 20 and len(set(asked)) >= 17


def test_skips_pieces_in_flight_unverifiable_or_held_by_nobody() -> None:
    chosen = choose_pieces(range(5), slots=8, per_parent=8, in_flight={0: "a"},
                           verifiable={0, 1, 2, 4}, holdings={"a": {0, 1, 3}},
                           piece_rank=IN_ORDER, tie_break={})
    assert chosen == [(1, "a")]  # 0 in flight, 2 held by nobody, 3 unverifiable, 4 nobody


def test_no_free_slot_means_nothing_new() -> None:
    assert choose_pieces(range(3), slots=0, per_parent=2, in_flight={}, verifiable={0, 1, 2},
                         holdings={"a": {0, 1, 2}}, piece_rank=IN_ORDER, tie_break={}) == []
