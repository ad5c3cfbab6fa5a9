"""Upload slots: a freed slot goes to the waiting request for the rarest piece."""

from __future__ import annotations

import asyncio

from damselfly.services.peer.upload import Slots


def test_a_freed_slot_goes_to_the_rarest_waiting_piece_first_come_among_equals() -> None:
    async def run() -> list[str]:
        slots, served = Slots(1), []
        await slots.acquire(5)  # the slot is busy

        async def ask(name: str, rank: int) -> None:
            await slots.acquire(rank)
            served.append(name)
            slots.release()

        waiting = [asyncio.create_task(ask(name, rank)) for name, rank in
                   [("common", 9), ("rare-first", 1), ("rare-second", 1), ("middle", 4)]]
        await asyncio.sleep(0)  # every request is waiting now
        slots.release()
        await asyncio.gather(*waiting)
        return served

    assert asyncio.run(run()) == ["rare-first", "rare-second", "middle", "common"]


def test_a_request_that_gives_up_waiting_leaves_its_slot_to_the_next() -> None:
    async def run() -> bool:
        slots = Slots(1)
        await slots.acquire(0)
        quitter = asyncio.create_task(asyncio.wait_for(slots.acquire(0), 0.01))
        stayer = asyncio.create_task(slots.acquire(3))
        try:
            await quitter
        except TimeoutError:
            pass
        slots.release()
        await asyncio.wait_for(stayer, 1.0)  # got the slot the quitter no longer wanted
        slots.release()
        await asyncio.wait_for(slots.acquire(0), 1.0)  # and no slot leaked on the way
        return True

    assert asyncio.run(run())


def test_free_slots_are_taken_without_waiting() -> None:
    async def run() -> None:
        slots = Slots(3)
        for _ in range(3):
            await asyncio.wait_for(slots.acquire(7), 0.1)

    asyncio.run(run())
