"""Work on published environments that makes them faster, done in the background.

A build publishes an environment as soon as it *works*; some of what makes
it work *well* can come after.  The Python builder's bytecode is the case:
compiling every module of numpy + pandas + matplotlib + JupyterLab takes
longer on two cores than downloading and installing them, and a session
started before the bytecode is there still runs, its imports just compile
in memory (about 2 s for Jupyter's).  So the launch goes on at once, and
the bytecode is written into the published tree beside it.

:class:`Finisher` runs one such job per environment (a builder's
``finish``).  The rules that keep this safe:

* The work never changes what the environment does, only how fast; every
  file appears atomically (a link or a rename), so a session sees each one
  whole or not at all.  A session reads the tree read-only meanwhile.
* The environment is held (:meth:`Store.hold`) for the whole job: eviction
  and ``binderbox envs rm`` leave it alone until the job ends.
* One job per environment, across processes: ``locks/<key>.finish`` is
  held (flock) while it runs; a process that finds it held leaves the work
  to its holder.
* Jobs run one at a time in a process (each already uses every core), so
  resuming many environments at start does not start them all at once.
* A job stopped half-way (shutdown, crash) leaves a usable environment
  without its completion mark; the next :meth:`Finisher.ensure` of it (any
  use of the environment, or :meth:`Finisher.resume` at service start)
  runs the job again, which then only does what is missing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from traitlets.config import LoggingConfigurable

from .locks import FileLock
from .store import Env, Store

#: the job: given a published environment's path, finish it; returns a summary
FinishFn = Callable[[Path], Awaitable[str]]
#: whether the environment at a path needs no more work
FinishedFn = Callable[[Path], bool]


class Finisher(LoggingConfigurable):
    """Background post-publish jobs over a :class:`Store`.  See the module docstring."""

    def __init__(
        self, store: Store, work: FinishFn, finished: FinishedFn, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)
        self.store = store
        self._work = work
        self._finished = finished
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slot = asyncio.Semaphore(1)

    def ensure(self, env: Env) -> None:
        """Start finishing ``env`` in the background unless it is finished or underway.

        Must be called with an asyncio loop running.
        """
        if env.key in self._tasks or self._finished(env.path):
            return
        task = asyncio.get_running_loop().create_task(
            self._run(env), name=f"binderbox finish {env.key}"
        )
        self._tasks[env.key] = task
        task.add_done_callback(lambda _task: self._tasks.pop(env.key, None))

    async def resume(self) -> None:
        """Start the jobs that stopped before they finished (a crash, a shutdown)."""
        for env in await asyncio.to_thread(self.store.list):
            self.ensure(env)

    @property
    def pending(self) -> list[str]:
        """The keys being finished in this process now."""
        return list(self._tasks)

    async def wait(self, key: str) -> None:
        """Wait for the job finishing ``key`` in this process, if one runs."""
        task = self._tasks.get(key)
        if task is not None:
            await asyncio.gather(asyncio.shield(task), return_exceptions=True)

    async def drain(self) -> None:
        """Wait for every job this process runs (the CLI, before it exits)."""
        while running := [task for task in self._tasks.values() if not task.done()]:
            await asyncio.gather(*running, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop the jobs (their environments stay usable; see the module docstring)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, env: Env) -> None:
        async with self._slot:
            await self._run_alone(env)

    async def _run_alone(self, env: Env) -> None:
        hold = await asyncio.to_thread(self.store.hold, env.key)
        if hold is None:
            return  # deleted meanwhile
        try:
            lock = FileLock.try_acquire(self.store.finish_lock_path(env.key))
            if lock is None:
                return  # another process is at it
            with lock:
                if self._finished(env.path):
                    return
                started = time.monotonic()
                summary = await self._work(env.path)
                await asyncio.to_thread(self.store.refresh_size, env.key)
            elapsed = time.monotonic() - started
            self.log.info("Finished environment %s in %.1f s: %s", env.key, elapsed, summary)
        except Exception:
            self.log.exception("Finishing environment %s failed; it works, only slower", env.key)
        finally:
            hold.release()
