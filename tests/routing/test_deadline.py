"""``within``: the router's bound on one upstream await (asyncio.timeout's semantics, one frame)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.routing.deadline import within


async def test_result_comes_back_before_the_deadline() -> None:
    async def quick() -> int:
        await asyncio.sleep(0)
        return 7

    assert await within(quick(), 1.0) == 7


async def test_the_deadline_cancels_the_work_and_raises_timeout() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError):
        await within(slow(), 0.01)
    assert cancelled.is_set()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # our own cancel was taken back
    await asyncio.sleep(0)  # and no stray cancellation is left pending on the task


async def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    started = asyncio.Event()

    async def outer() -> None:
        async def slow() -> None:
            started.set()
            await asyncio.sleep(10)

        await within(slow(), 5.0)

    task = asyncio.ensure_future(outer())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_timer_is_dropped_after_success() -> None:
    async def quick() -> int:
        return 1

    assert await within(quick(), 0.01) == 1
    await asyncio.sleep(0.05)  # past the deadline: a timer left armed would cancel us here
