"""Handles on builds of the store that several callers share.

:class:`SharedBuild` is what :meth:`~binderbox.store.store.Store.build` gives each
caller: the build's log lines, its queue position while it waits for a slot, its
outcome.  :class:`BuildJob` is the one build of a key in this process behind those
handles.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BuildError
from .broadcast import Broadcast
from .queue import BuildQueue, Place


@dataclass(frozen=True)
class Env:
    """A published environment."""

    key: str
    path: Path
    spec: dict[str, Any]
    source: str
    size: int
    created: float
    last_used: float


#: one build (or wait for another process's build) of one key in this process
BuildBroadcast = Broadcast[str, "Env | None"]


@dataclass
class BuildJob:
    """A build of one key in this process: its job, its place in the build queue (None
    while it waits for another process's build), and how many callers still follow it."""

    run: BuildBroadcast
    place: Place | None
    callers: int = 0
    #: given up while queued (its callers all left): new callers start a new build
    dropped: bool = False


def stopped() -> BuildError:
    """What the callers of a build that was cancelled get."""
    return BuildError("The build was stopped before it finished.")


class SharedBuild:
    """A caller's handle on a build that may be shared with other callers.

    ``joined`` is true when the build was already running (in this process or
    another one) when this caller asked for it.
    """

    def __init__(self, build: BuildJob, queue: BuildQueue, *, joined: bool, start: int) -> None:
        self._build = build
        self._run = build.run
        self._queue = queue
        self._start = start
        self._left = False
        self.joined = joined
        build.callers += 1

    async def queued(self) -> AsyncIterator[int]:
        """While the build waits for a slot (:attr:`Store.concurrent_builds`): how many
        builds are ahead of it, at once and then each time that changes.  Ends when it
        starts (or ends); at once when it need not wait.

        A build that takes over from another process's build that died queues only
        then; its wait shows as one log line instead."""
        last = None
        while (place := self._build.place) is not None and (ahead := place.ahead()) is not None:
            if ahead != last:
                last = ahead
                yield ahead
                continue  # the queue may have moved while the caller had the value
            await self._queue.changed()

    def leave(self) -> None:
        """This caller no longer follows the build (idempotent).  A build still waiting
        for a slot whose callers all left gives up its place; one that runs goes on."""
        if self._left:
            return
        self._left = True
        build = self._build
        build.callers -= 1
        if build.callers <= 0 and build.place is not None and build.place.ahead() is not None:
            build.dropped = True
            build.place.leave()
            build.run.cancel()

    def follow(self) -> AsyncIterator[str]:
        """The build's log lines, ending when the build ends.

        A joiner first gets the recent tail of the log, then live lines.
        Leaving the iteration early does not stop the build.
        """
        return self._run.follow(self._start)

    async def wait(self) -> Env | None:
        """The published environment (None: a build that published elsewhere, its
        ``publish`` false), or the build's :class:`BinderboxError`.

        Cancelling the caller does not cancel the build (others may share
        it); use :meth:`cancel` for that.
        """
        return await self._run.result()

    def cancel(self) -> None:
        """Stop the build for every caller sharing it (its temp tree is deleted)."""
        self._run.cancel()
