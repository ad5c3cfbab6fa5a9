from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest

from bench.swarm_lab import run_all


def job(value: int, delay: float = 0.0, fail: bool = False) -> Callable[[], Awaitable[int]]:
    async def run() -> int:
        await anyio.sleep(delay)  # the job's work: jobs that finish out of order
        if fail:
            raise RuntimeError(f"job {value} broke")
        return value
    return run


@pytest.mark.anyio
async def test_results_come_back_in_job_order() -> None:
    assert await run_all([job(1, 0.02), job(2), job(3, 0.01)], timeout=5) == [1, 2, 3]


@pytest.mark.anyio
async def test_in_flight_bounds_how_many_run_at_once() -> None:
    running, peak = 0, 0

    async def tracked() -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)  # the job's work: long enough for jobs to overlap
        running -= 1
        return 0

    assert await run_all([tracked] * 6, timeout=5, in_flight=2) == [0] * 6
    assert peak == 2


@pytest.mark.anyio
async def test_a_failure_is_one_runtime_error_after_the_others_finish() -> None:
    with pytest.raises(RuntimeError, match=r"^1/3 failed; first: job 2 broke$"):
        await run_all([job(1), job(2, fail=True), job(3)], timeout=5)


@pytest.mark.anyio
async def test_a_timeout_says_how_many_finished() -> None:
    with pytest.raises(RuntimeError, match=r"^1/2 finished in 0s$"):
        await run_all([job(1), job(2, delay=10)], timeout=0.2)
