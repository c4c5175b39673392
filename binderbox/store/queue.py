"""A cap on the builds running at once in this process, with a queue in order.

A build slot is taken by a *build*, not by a visitor: several visitors sharing one
build (:class:`~binderbox.store.store.SharedBuild`) share its place.  The store
asks for a place as soon as it knows it will build (:meth:`BuildQueue.join`),
waits for its turn (:meth:`Place.turn`) and gives the place back when the build
ends (:meth:`Place.leave`), also when it is cancelled while waiting -- which is
how a queued build whose visitors all left frees its place.

Places are granted in order and at once when a slot is free, so a build that need
not wait never shows as waiting.  :meth:`Place.ahead` says how many builds are
ahead of a waiting one (those running plus those waiting before it) and
:meth:`BuildQueue.changed` wakes whoever watches the queue move.

In one asyncio loop (the service's); not thread-safe.
"""

from __future__ import annotations

import asyncio


class Place:
    """One build's place in a :class:`BuildQueue`: waiting, then running, then left."""

    def __init__(self, queue: BuildQueue) -> None:
        self._queue = queue
        self._granted = asyncio.Event()
        self.left = False

    @property
    def running(self) -> bool:
        """Whether this build holds a slot."""
        return self._granted.is_set() and not self.left

    def ahead(self) -> int | None:
        """Builds ahead of this one while it waits (running + waiting before); else None."""
        return self._queue.ahead(self)

    async def turn(self) -> None:
        """Wait until this build holds a slot."""
        await self._granted.wait()

    def grant(self) -> None:
        """(The queue's) this build now holds a slot."""
        self._granted.set()

    def leave(self) -> None:
        """Give the place (or the slot) back; idempotent."""
        if not self.left:
            self.left = True
            self._queue.remove(self)


class BuildQueue:
    """At most ``slots`` running builds (0: no cap); the others wait in order."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._running: list[Place] = []
        self._waiting: list[Place] = []
        self._changed = asyncio.Event()

    @property
    def running(self) -> int:
        """How many builds hold a slot."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """How many builds wait for one."""
        return len(self._waiting)

    def join(self) -> Place:
        """A place for one more build: running at once if a slot is free, else waiting."""
        place = Place(self)
        self._waiting.append(place)
        self._move()
        return place

    def ahead(self, place: Place) -> int | None:
        """See :meth:`Place.ahead`."""
        if place not in self._waiting:
            return None
        return len(self._running) + self._waiting.index(place)

    def remove(self, place: Place) -> None:
        """(A place's) it left: the next ones in line move up."""
        for line in (self._waiting, self._running):
            if place in line:
                line.remove(place)
        self._move()

    async def changed(self) -> None:
        """Wait until the queue next moves (a build joined, started or left)."""
        await self._changed.wait()

    def _move(self) -> None:
        while self._waiting and (not self.slots or len(self._running) < self.slots):
            place = self._waiting.pop(0)
            self._running.append(place)
            place.grant()
        self._changed.set()  # wake every watcher, then a fresh event for the next move
        self._changed = asyncio.Event()
