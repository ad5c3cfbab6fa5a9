"""Super-seeding: a seed sends each piece to one child and leaves the rest to the peers."""

from __future__ import annotations

from damselfly.services.peer.upload import SentPieces


def test_a_piece_just_sent_is_refused_to_others_until_the_spread_passes() -> None:
    sent = SentPieces(spread=1.0)
    assert sent.take("t", 0, "child-a", now=10.0)
    assert not sent.take("t", 0, "child-b", now=10.5)
    assert sent.take("t", 0, "child-a", now=10.6)  # the same child asking again is served
    assert sent.take("t", 1, "child-b", now=10.6)  # another piece is free
    assert sent.take("u", 0, "child-b", now=10.6)  # the same piece of another task too
    assert sent.take("t", 0, "child-b", now=11.7)  # nobody passed it on: send it again


def test_without_spread_everything_is_served_and_nothing_is_kept() -> None:
    sent = SentPieces(spread=0.0)
    assert all(sent.take("t", 0, f"c{i}", now=1.0) for i in range(5))


def test_memory_stays_bounded() -> None:
    sent = SentPieces(spread=1.0, keep=100)
    for i in range(1000):
        assert sent.take("t", i, "c", now=float(i))
    assert len(sent) <= 100
