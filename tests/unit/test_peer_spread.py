"""Super-seeding: a seed sends each piece to one child and leaves the rest to the peers."""

from __future__ import annotations

import random

from damselfly.services.peer.upload import SentPieces


def test_a_piece_on_its_way_or_just_sent_is_refused_to_others() -> None:
    sent = SentPieces(spread=1.0)
    assert sent.take("t", 0, "child-a", now=10.0)
    assert not sent.take("t", 0, "child-b", now=14.0)  # still on its way to child-a
    sent.sent("t", 0, now=15.0)
    assert not sent.take("t", 0, "child-b", now=15.5)  # child-a is passing it on
    assert sent.take("t", 0, "child-a", now=15.6)  # the same child asking again is served
    assert sent.take("t", 1, "child-b", now=15.6)  # another piece is free
    assert sent.take("u", 0, "child-b", now=15.6)  # the same piece of another task too
    sent.sent("t", 0, now=15.7)
    assert sent.take("t", 0, "child-b", now=16.8)  # nobody passed it on: send it again


def test_a_slow_send_keeps_the_piece_for_its_child_as_long_again() -> None:
    sent = SentPieces(spread=1.0)
    assert sent.take("t", 0, "child-a", now=0.0)
    sent.sent("t", 0, now=4.0)  # a thin link: 4 s to send
    assert not sent.take("t", 0, "child-b", now=7.5)
    assert sent.take("t", 0, "child-b", now=8.5)


def test_a_send_that_did_not_deliver_frees_the_piece_at_once() -> None:
    sent = SentPieces(spread=1.0)
    assert sent.take("t", 0, "child-a", now=0.0)
    sent.sent("t", 0, now=0.1, delivered=False)  # refused busy, or cut off
    assert sent.take("t", 0, "child-b", now=0.2)


def test_a_send_that_never_ended_stops_blocking_the_piece() -> None:
    sent = SentPieces(spread=1.0, stuck=30.0)
    assert sent.take("t", 0, "child-a", now=0.0)
    assert not sent.take("t", 0, "child-b", now=29.0)
    assert sent.take("t", 0, "child-b", now=31.0)


def test_without_spread_everything_is_served() -> None:
    sent = SentPieces(spread=0.0)
    assert all(sent.take("t", 0, f"c{i}", now=1.0) for i in range(5))


def test_memory_stays_bounded() -> None:
    sent = SentPieces(spread=1.0, keep=100)
    for i in range(1000):
        assert sent.take(f"t{i % 7}", i, "c", now=float(i))
        sent.sent(f"t{i % 7}", i, now=float(i))
    assert len(sent) <= 2 * 100


def test_each_piece_goes_out_once_before_any_goes_out_twice() -> None:
    sent = SentPieces(spread=1.0, rng=random.Random(1))
    assert sent.take("t", 0, "child-a", now=0.0)
    sent.sent("t", 0, now=0.5)
    assert sent.take("t", 1, "child-c", now=9.0)  # first copies are still going out
    assert not sent.take("t", 0, "child-b", now=9.2)  # so no second copy of piece 0
    assert sorted(sent.offer("t", [0, 1, 2, 3], now=9.2)) == [2, 3]  # never sent, not on the way
    sent.sent("t", 1, now=9.5)
    assert sent.take("t", 0, "child-b", now=10.1)  # no first copy for a spread: serve again


def test_a_refused_child_is_offered_first_copies_else_what_it_may_have() -> None:
    sent = SentPieces(spread=1.0, rng=random.Random(1))
    for piece in range(3):
        assert sent.take("t", piece, "child-a", now=0.0)
        sent.sent("t", piece, now=0.2)
    assert sorted(sent.offer("t", [0, 1, 2, 3], now=0.3)) == [3]
    assert sent.offer("t", [0, 1, 2], now=0.3) == []  # all just sent: nothing for now
    assert sorted(sent.offer("t", [0, 1, 2], now=5.0)) == [0, 1, 2]
    assert len(sent.offer("t", list(range(100)), now=5.0, n=4)) == 4


def test_in_the_endgame_a_seed_serves_every_ask() -> None:
    sent = SentPieces(spread=1.0)
    for piece in range(2):
        assert sent.take("t", piece, "child-a", now=0.0, whole=0)
        sent.sent("t", piece, now=0.2)
    assert not sent.take("t", 0, "child-b", now=0.3, whole=0)  # still receiving the task
    assert not sent.take("t", 0, "child-b", now=0.3, whole=3)  # piece 2 never went out
    assert sent.take("t", 2, "child-a", now=0.3, whole=3)
    sent.sent("t", 2, now=0.4)
    assert sent.take("t", 0, "child-b", now=0.5, whole=3)  # all out once: nothing to keep
    assert sent.take("t", 2, "child-c", now=0.5, whole=3)
