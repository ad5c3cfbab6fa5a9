"""Piece reports are batched: a lone piece goes out at once, a burst waits for the interval
or a full batch, and nothing waiting is lost when the download ends."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from damselfly.events.tasks import FinishedPiece
from damselfly.services.peer.reports import piece_reports

LONG = 3600.0  # an interval no test waits for: only a full batch or the end sends early


def piece(i: int) -> FinishedPiece:
    return FinishedPiece(i, 1, "", "parent", 1.0)


class Sent:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def __call__(self, pieces: list[FinishedPiece]) -> None:
        self.batches.append([p.piece for p in pieces])


async def until(check: object) -> None:
    with anyio.fail_after(5):
        while not check():  # type: ignore[operator]
            await anyio.sleep(0.001)


@pytest.mark.anyio
async def test_a_lone_piece_goes_out_at_once_and_the_rest_wait_for_the_interval() -> None:
    sent = Sent()
    async with piece_reports(sent, interval=LONG, most=16) as reports:
        reports.add(piece(0))
        await until(lambda: sent.batches == [[0]])
        for i in (1, 2, 3):
            reports.add(piece(i))
        await anyio.sleep(0.05)
        assert sent.batches == [[0]]  # within the interval: held back
    assert sent.batches == [[0], [1, 2, 3]]  # the end sends what waited


@pytest.mark.anyio
async def test_a_full_batch_goes_out_before_the_interval_ends() -> None:
    sent = Sent()
    async with piece_reports(sent, interval=LONG, most=2) as reports:
        reports.add(piece(0))
        await until(lambda: len(sent.batches) == 1)
        for i in range(1, 6):
            reports.add(piece(i))
            await anyio.lowlevel.checkpoint()
        await until(lambda: sum(map(len, sent.batches)) >= 3)
        assert all(len(b) <= 2 for b in sent.batches)
    assert sorted(p for b in sent.batches for p in b) == list(range(6))


@pytest.mark.anyio
async def test_pieces_waiting_when_the_download_fails_are_still_reported() -> None:
    sent = Sent()
    with pytest.raises(ExceptionGroup) as caught:  # a task group's, around the error
        async with piece_reports(sent, interval=LONG) as reports:
            reports.add(piece(0))
            await until(lambda: sent.batches == [[0]])
            reports.add(piece(1))
            raise RuntimeError("the origin went away")
    assert [str(e) for e in caught.value.exceptions] == ["the origin went away"]
    assert sent.batches == [[0], [1]]


@pytest.mark.anyio
async def test_a_batch_waiting_for_its_ack_does_not_hold_back_the_next() -> None:
    sent = Sent()
    ack = anyio.Event()

    async def slow_first(pieces: list[FinishedPiece]) -> None:
        await sent(pieces)
        if len(sent.batches) == 1:
            await ack.wait()  # the broker is slow to ack the first batch

    async with piece_reports(slow_first, interval=0.01, most=16) as reports:
        reports.add(piece(0))
        await until(lambda: sent.batches == [[0]])
        reports.add(piece(1))
        await until(lambda: sent.batches == [[0], [1]])  # sent while the first awaits its ack
        ack.set()
    assert sent.batches == [[0], [1]]
