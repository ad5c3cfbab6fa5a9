"""The one way tests wait: for a condition, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 20.0,
                     every: float = 0.05) -> T:
    """The first truthy value ``check`` returns; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"condition not met in {timeout:g} s"
        await anyio.sleep(every)  # the polling interval, not a wait for something to land


def eventually_sync(check: Callable[[], T | None], timeout: float = 20.0, every: float = 0.05,
                    ignore: tuple[type[BaseException], ...] = ()) -> T:
    """``eventually`` for blocking code; exceptions of the ``ignore`` types count as falsy."""
    deadline = time.monotonic() + timeout
    while True:
        value: T | None
        try:
            value = check()
        except ignore:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"condition not met in {timeout:g} s"
        time.sleep(every)  # the polling interval, not a wait for something to land
