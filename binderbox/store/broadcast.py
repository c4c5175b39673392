"""A job running in this process whose output and outcome are shared by many callers.

The environment store (one build per key) and the dataset cache (one fetch
per key) both start a job once and let every caller asking for the same key
follow it.  :class:`Broadcast` is that sharing, in one place::

    job = Broadcast[str, Env](stopped=lambda: BuildError("The build was stopped."))
    job.start(work(job), name="binderbox build KEY")   # work() calls job.emit(line)
    async for line in job.follow():                    # from any number of callers
        ...
    env = await job.result()                           # same outcome for every caller

Contract:

* **Late joiners** get the items emitted so far (the last ``keep`` of them
  when the buffer is bounded; :meth:`Broadcast.follow` can start later still),
  then live items.
* **Followers end** when the job's task is done, whatever its outcome.
* **Outcome for every waiter**: :meth:`Broadcast.result` returns the task's
  result or raises its exception in each caller; a job that was cancelled
  raises ``stopped()`` instead, so callers see a plain error, not a
  cancellation they did not ask for.
* **Callers are independent of the job**: a follower or waiter that stops
  (breaks out, is cancelled) does not stop the job; only :meth:`Broadcast.cancel`
  does, for everyone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Broadcast(Generic[T, R]):
    """Items of type ``T`` emitted by a job, and its result ``R``; see the module docstring.

    ``keep``: how many recent items to remember for later followers (``None``:
    all of them).  ``stopped``: makes the error that waiters get when the job
    was cancelled.
    """

    def __init__(self, *, stopped: Callable[[], BaseException], keep: int | None = None) -> None:
        self._items: deque[T] = deque(maxlen=keep)
        self._count = 0
        self._done = False
        self._wake = asyncio.Event()
        self._stopped = stopped
        self._task: asyncio.Task[R] | None = None

    def start(self, job: Coroutine[Any, Any, R], *, name: str | None = None) -> asyncio.Task[R]:
        """Run ``job`` in a task of its own (once; an asyncio loop must be running).

        Returns the task, for done-callbacks: cleanup that must happen even when
        the job is cancelled before it ever ran (its ``finally`` never runs then).
        """
        if self._task is not None:
            job.close()
            raise RuntimeError("this job was already started")
        self._task = asyncio.get_running_loop().create_task(job, name=name)
        self._task.add_done_callback(self._finished)
        return self._task

    @property
    def count(self) -> int:
        """How many items were emitted so far (including those no longer kept)."""
        return self._count

    def emit(self, item: T) -> None:
        """Send ``item`` to every follower (call it from the event loop's thread)."""
        self._items.append(item)
        self._count += 1
        self._notify()

    async def follow(self, start: int = 0) -> AsyncIterator[T]:
        """The items from number ``start`` on (or the oldest kept), until the job ends."""
        index = start
        while True:
            first = self._count - len(self._items)
            index = max(index, first)
            if index < self._count:
                item = self._items[index - first]
                index += 1
                yield item
            elif self._done:
                return
            else:
                await self._wake.wait()

    async def result(self) -> R:
        """The job's result, or its exception, or ``stopped()`` if it was cancelled.

        Cancelling the caller does not cancel the job (others may share it).
        """
        task = self._started()
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current and current.cancelling()):
                raise self._stopped() from None
            raise

    def cancel(self) -> None:
        """Stop the job for every caller sharing it."""
        self._started().cancel()

    async def ended(self) -> None:
        """Wait until the job has ended, whatever its outcome (its cleanup done)."""
        await asyncio.wait([self._started()])

    def _started(self) -> asyncio.Task[R]:
        if self._task is None:
            raise RuntimeError("this job was not started")
        return self._task

    def _finished(self, task: asyncio.Task[R]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone
        self._done = True
        self._notify()

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()
