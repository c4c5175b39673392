"""Work on published environments in the background (binderbox/store/finishing.py).

A real store; the work is a small function that waits for the test to let it
finish, so each rule can be checked while a job is running.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from store_helpers import gated_build

from binderbox.store import Env, Finisher, Store

PATIENCE = 30.0  # a guard against hangs, not a timing assertion
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(3600)
"""


class Work:
    """The job: waits for ``release``, then writes ``finished.txt`` (a megabyte)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.calls = 0
        self.fail = False

    async def __call__(self, path: Path) -> str:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if self.fail:
            raise RuntimeError("the job broke")
        (path / "finished.txt").write_bytes(b"x" * 1024 * 1024)
        return "wrote finished.txt"

    @staticmethod
    def finished(path: Path) -> bool:
        return (path / "finished.txt").is_file()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(root=str(tmp_path / "store"), poll_interval=0.02, min_idle=0)


async def publish(store: Store, workdir: Path, key: str = "envkey") -> Env:
    workdir.mkdir(exist_ok=True)
    (workdir / "release").touch()
    return await store.build(key, gated_build(workdir), spec={}, source=key).wait()


async def test_a_running_job_holds_its_environment(store: Store, tmp_path: Path) -> None:
    env = await publish(store, tmp_path / "work")
    work = Work()
    finisher = Finisher(store, work, work.finished)
    finisher.ensure(env)
    async with asyncio.timeout(PATIENCE):
        await work.started.wait()
    assert finisher.pending == [env.key]
    store.budget = 1
    assert await asyncio.to_thread(store.gc) == []  # over budget, but held
    assert not await asyncio.to_thread(store.remove, env.key)
    work.release.set()
    async with asyncio.timeout(PATIENCE):
        await finisher.drain()
    assert finisher.pending == [] and work.finished(env.path)
    found = store.get(env.key)
    assert found is not None and found.size >= env.size + 1024 * 1024  # measured again
    assert await asyncio.to_thread(store.remove, env.key)


async def test_one_job_per_environment_across_processes(store: Store, tmp_path: Path) -> None:
    env = await publish(store, tmp_path / "work")
    work = Work()
    work.release.set()
    finisher = Finisher(store, work, work.finished)
    lock = store.finish_lock_path(env.key)
    other = await asyncio.create_subprocess_exec(  # another process's job on this env
        sys.executable, "-c", HOLDER, str(lock), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert other.stdout is not None
        async with asyncio.timeout(PATIENCE):
            assert await other.stdout.readline() == b"held\n"
        finisher.ensure(env)
        await finisher.drain()
        assert work.calls == 0 and not work.finished(env.path)
    finally:
        other.kill()
        await other.wait()
    finisher.ensure(env)
    finisher.ensure(env)  # already underway: not a second job
    async with asyncio.timeout(PATIENCE):
        await finisher.drain()
    assert work.calls == 1 and work.finished(env.path)
    finisher.ensure(env)  # finished: nothing to do
    assert finisher.pending == []


async def test_a_stopped_job_is_resumed(store: Store, tmp_path: Path) -> None:
    env = await publish(store, tmp_path / "work")
    other = await publish(store, tmp_path / "work", key="otherkey")
    work = Work()
    finisher = Finisher(store, work, work.finished)
    finisher.ensure(env)
    async with asyncio.timeout(PATIENCE):
        await work.started.wait()
    await finisher.aclose()  # the service stops
    assert not work.finished(env.path) and store.get(env.key) is not None
    restarted = Finisher(store, work, work.finished)
    work.release.set()
    await restarted.resume()
    async with asyncio.timeout(PATIENCE):
        await restarted.drain()
    assert work.finished(env.path) and work.finished(other.path)


async def test_a_failing_job_leaves_the_environment_usable(store: Store, tmp_path: Path) -> None:
    env = await publish(store, tmp_path / "work")
    work = Work()
    work.fail = True
    work.release.set()
    finisher = Finisher(store, work, work.finished)
    finisher.ensure(env)
    async with asyncio.timeout(PATIENCE):
        await finisher.drain()
    assert work.calls == 1 and store.get(env.key) is not None
    assert await asyncio.to_thread(store.remove, env.key)  # the hold was released


async def test_jobs_run_one_at_a_time(store: Store, tmp_path: Path) -> None:
    first = await publish(store, tmp_path / "work", key="first")
    second = await publish(store, tmp_path / "work", key="second")
    jobs = {first.path: Work(), second.path: Work()}

    async def work(path: Path) -> str:
        return await jobs[path](path)

    finisher = Finisher(store, work, Work.finished)
    finisher.ensure(first)
    finisher.ensure(second)  # e.g. resume() after an upgrade: many at once
    async with asyncio.timeout(PATIENCE):
        await jobs[first.path].started.wait()
    await asyncio.sleep(0.2)  # room for a second job to start, were it allowed to
    assert jobs[second.path].calls == 0
    jobs[first.path].release.set()
    jobs[second.path].release.set()
    async with asyncio.timeout(PATIENCE):
        await finisher.drain()
    assert Work.finished(first.path) and Work.finished(second.path)
