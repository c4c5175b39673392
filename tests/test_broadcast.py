"""The shared-job broadcast behind one build (store) and one fetch (dataset cache) per key."""

from __future__ import annotations

import asyncio

import pytest

from binderbox.errors import BuildError
from binderbox.store.broadcast import Broadcast

#: upper bound for a follower to end; a guard against hangs, not a timing assertion
PATIENCE = 10.0


def stopped() -> BuildError:
    return BuildError("stopped")


async def gated(job: Broadcast[str, int], gate: asyncio.Event, result: int = 7) -> int:
    job.emit("one")
    job.emit("two")
    await gate.wait()
    job.emit("three")
    return result


async def collect(job: Broadcast[str, int], start: int = 0) -> list[str]:
    async with asyncio.timeout(PATIENCE):
        return [item async for item in job.follow(start)]


async def test_late_joiners_get_the_items_so_far_then_live_ones() -> None:
    gate = asyncio.Event()
    job = Broadcast[str, int](stopped=stopped)
    job.start(gated(job, gate))
    early = asyncio.ensure_future(collect(job))
    await asyncio.sleep(0)
    assert job.count == 2
    late = asyncio.ensure_future(collect(job))
    tail = asyncio.ensure_future(collect(job, start=1))
    gate.set()
    assert await early == await late == ["one", "two", "three"]
    assert await tail == ["two", "three"]
    assert await job.result() == 7
    assert await collect(job) == ["one", "two", "three"]  # also after the end


async def test_a_bounded_buffer_keeps_the_most_recent_items() -> None:
    job = Broadcast[str, int](stopped=stopped, keep=2)
    job.start(gated(job, asyncio.Event()))
    await asyncio.sleep(0)
    job.emit("three")
    job.emit("four")
    assert job.count == 4
    follower = asyncio.ensure_future(collect(job))
    await asyncio.sleep(0)
    job.cancel()
    assert await follower == ["three", "four"]


async def test_the_error_reaches_every_waiter_and_followers_end() -> None:
    async def failing(job: Broadcast[str, int]) -> int:
        job.emit("trying")
        await asyncio.sleep(0)
        raise BuildError("no such version")

    job = Broadcast[str, int](stopped=stopped)
    job.start(failing(job))
    logs = await asyncio.gather(collect(job), collect(job))
    assert logs == [["trying"], ["trying"]]
    for _ in range(3):
        with pytest.raises(BuildError, match="no such version"):
            await job.result()


async def test_callers_that_stop_do_not_stop_the_job() -> None:
    gate = asyncio.Event()
    job = Broadcast[str, int](stopped=stopped)
    job.start(gated(job, gate))
    waiter = asyncio.ensure_future(job.result())
    follower = asyncio.ensure_future(collect(job))
    await asyncio.sleep(0)
    waiter.cancel()
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    with pytest.raises(asyncio.CancelledError):
        await follower
    async for item in job.follow():  # leaving a follow early
        assert item == "one"
        break
    gate.set()
    assert await job.result() == 7


async def test_a_cancelled_job_gives_every_waiter_the_stopped_error() -> None:
    job = Broadcast[str, int](stopped=stopped)
    job.start(gated(job, asyncio.Event()))
    waiters = [asyncio.ensure_future(job.result()) for _ in range(2)]
    follower = asyncio.ensure_future(collect(job))
    await asyncio.sleep(0)
    job.cancel()
    await job.ended()
    for waiter in waiters:
        with pytest.raises(BuildError, match="stopped"):
            await waiter
    assert await follower == ["one", "two"]


async def test_a_job_cancelled_before_it_ran_still_ends_its_followers() -> None:
    job = Broadcast[str, int](stopped=stopped)
    job.start(gated(job, asyncio.Event()))
    job.cancel()  # its coroutine never starts
    assert await collect(job) == []
    with pytest.raises(BuildError, match="stopped"):
        await job.result()
    with pytest.raises(RuntimeError, match="already started"):
        job.start(gated(job, asyncio.Event()))
