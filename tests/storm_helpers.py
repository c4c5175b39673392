"""Launches nobody waits for: ``/build`` clients that leave mid-stream.

Used by ``test_abandoned.py`` and ``benchmarks/disconnects.py``.

:data:`LEAVE_POINTS` names where a client leaves, from the first byte of the
answer to just before ``ready`` (:data:`BUILD_POINTS`: during a build);
:func:`leave_at` is one such client (:func:`held_at` one that stays a while),
:func:`storm` many of them, so many at a time, spread over a few loopback
source addresses (each one a client address for the service).
:func:`leftovers` is what a service still has of them: hub users, servers,
and session supervisor processes (found in ``/proc`` by the service's data
directory, so that sessions the hub lost count too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve_helpers import ServeProcess, sse_request

from binderbox.sessions.hubclient import HubClient

Event = dict[str, Any]


def _message(prefix: str) -> Callable[[Event], bool]:
    return lambda event: str(event.get("message", "")).startswith(prefix)


def _phase(phase: str) -> Callable[[Event], bool]:
    return lambda event: event.get("phase") == phase


#: where a client leaves -> the event it leaves on (``None``: as soon as the answer starts)
LEAVE_POINTS: dict[str, Callable[[Event], bool] | None] = {
    "answer": None,  # the pipeline has just started
    "fetching": _phase("fetching"),  # resolving the spec
    "built": _phase("built"),  # the environment is there, nothing asked of the hub yet
    "launching": _phase("launching"),  # the hub calls (user, token, server) are under way
    "spawning": _message("Preparing the home"),  # the hub's spawn is pending
    "server starting": _message("Starting the sandboxed"),  # just before ``ready``
}
#: more places to leave, for a launch that builds
BUILD_POINTS: dict[str, Callable[[Event], bool] | None] = {"building": _phase("building")}


@dataclass
class Outcome:
    """What one leaving client saw."""

    point: str
    source: str
    status: int = 0
    phases: list[str] = field(default_factory=list)
    #: left where it meant to, or ``refused`` (429), ``ready``/``failed`` (got there first)
    ending: str = ""
    last: Event = field(default_factory=dict)


@contextlib.asynccontextmanager
async def held_at(
    url: str, point: str, source: str = "127.0.0.1", limit: float = 300
) -> AsyncIterator[Outcome]:
    """GET ``url`` as an event stream from ``source`` and read it up to ``point``; the
    connection stays open until the context ends (then it is closed)."""
    outcome = Outcome(point, source)
    leave = {**LEAVE_POINTS, **BUILD_POINTS}[point]
    stream = sse_request(url, source=source)
    try:
        async with asyncio.timeout(limit):
            async for _, item in stream:
                if isinstance(item, int):
                    outcome.status = item
                    if item != 200:
                        outcome.ending = "refused" if item == 429 else str(item)
                        break
                    if leave is None:
                        outcome.ending = point
                        break
                    continue
                outcome.phases.append(str(item.get("phase")))
                outcome.last = item
                if leave is not None and leave(item):
                    outcome.ending = point
                    break
                if item.get("phase") in ("ready", "failed"):
                    refused = item.get("status_code") == 429
                    outcome.ending = "refused" if refused else str(item["phase"])
                    break
        yield outcome
    finally:
        await stream.aclose()


async def leave_at(url: str, point: str, source: str = "127.0.0.1") -> Outcome:
    """GET ``url`` as an event stream from ``source``; close the connection at ``point``."""
    async with held_at(url, point, source) as outcome:
        return outcome


async def storm(
    url: str,
    clients: int,
    at_once: int,
    sources: Sequence[str] = ("127.0.0.1",),
    points: Sequence[str] = tuple(LEAVE_POINTS),
) -> list[Outcome]:
    """``clients`` leaving clients, ``at_once`` at a time; client ``i`` leaves at
    ``points[i % len(points)]`` and connects from ``sources[i % len(sources)]``."""
    gate = asyncio.Semaphore(at_once)

    async def one(i: int) -> Outcome:
        async with gate:
            return await leave_at(url, points[i % len(points)], sources[i % len(sources)])

    return await asyncio.gather(*(one(i) for i in range(clients)))


def supervisors(data_dir: Path) -> list[int]:
    """Running session supervisors of the service with ``data_dir`` (pids)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if "binderbox.runtime.supervise" in argv and any(str(data_dir) in a for a in argv):
                found.append(int(entry.name))
    return found


def end_supervisors(data_dir: Path) -> list[int]:
    """Kill what :func:`supervisors` finds (each its process group: the sandbox too), for
    the clean-up after a run that leaves sessions the hub lost; the pids."""
    found = supervisors(data_dir)
    for pid in found:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)  # a supervisor leads its own session
    return found


@dataclass
class Leftovers:
    """What a service has of its sessions: hub users, users with a server, supervisors."""

    users: list[str]
    servers: list[str]
    supervisors: list[int]

    @property
    def clean(self) -> bool:
        return not (self.users or self.servers or self.supervisors)


async def leftovers(serve: ServeProcess) -> Leftovers:
    """The service's hub users and servers (from its API) and session supervisors."""
    users = await HubClient(serve.hub_api_url, serve.api_token).request("GET", "users")
    return Leftovers(
        users=sorted(u["name"] for u in users),
        servers=sorted(u["name"] for u in users if u.get("servers")),
        supervisors=supervisors(serve.data_dir),
    )


async def until_clean(serve: ServeProcess, within: float) -> Leftovers:
    """Poll :func:`leftovers` (every 0.5 s) until clean or ``within`` seconds passed;
    the last answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        found = await leftovers(serve)
        if found.clean or loop.time() >= deadline:
            return found
        await asyncio.sleep(0.5)
