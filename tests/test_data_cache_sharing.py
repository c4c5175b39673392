"""Callers of DataCache.ensure sharing one fetch: late joiners, stopping, cancellation.

The remote is a real HTTP server on 127.0.0.1 (tests/data_helpers.py) whose
answer waits until the test opens a gate, so the fetch is in progress for as
long as the test needs.  The caches allow private hosts for that
(``DataCache.allow_private_hosts``; the policy: tests/test_fetch_policy.py).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from data_helpers import FileServer, Route, tar_bytes

from binderbox.data import DataCache, DataEntry
from binderbox.data.requirement import parse_requirements
from binderbox.errors import DataError
from binderbox.events import Event
from binderbox.store.locks import FileLock

#: upper bound for waiting on the fetch; a guard against hangs, not a timing assertion
PATIENCE = 30.0
PATH = "/gated.tar.gz"


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a server thread (or a download thread) waiting


@pytest.fixture
def arrived() -> threading.Event:
    return threading.Event()


@pytest.fixture
def server(gate: threading.Event, arrived: threading.Event) -> Iterator[FileServer]:
    srv = FileServer()
    body = tar_bytes({"x.txt": b"payload"})

    def answer(query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        arrived.set()
        gate.wait(PATIENCE)
        return 200, {}, body

    srv.routes[PATH] = Route(fn=answer)
    yield srv
    srv.close()


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[DataCache]:
    c = DataCache(root=str(tmp_path / "cache"), min_idle=0.0, allow_private_hosts=True)
    yield c
    await c.aclose()


def entries(server: FileServer) -> list[DataEntry]:
    return parse_requirements(json.dumps({"src": server.url(PATH), "projectName": "gated"}))


async def ensure(cache: DataCache, server: FileServer) -> list[Event]:
    return [event async for event in cache.ensure(cache.folders(entries(server)))]


async def requested(arrived: threading.Event) -> None:
    """Wait until the fetch has asked the server (which then waits for the gate)."""
    assert await asyncio.to_thread(arrived.wait, PATIENCE), "the fetch never asked"


async def test_callers_share_one_fetch_and_one_may_leave(
    cache: DataCache, server: FileServer, gate: threading.Event, arrived: threading.Event
) -> None:
    first = asyncio.ensure_future(ensure(cache, server))
    await requested(arrived)
    late = cache.ensure(cache.folders(entries(server)))
    late_events = [await anext(late)]  # joined: an event sent before it came
    leaving = cache.ensure(cache.folders(entries(server)))
    await anext(leaving)
    waiting = asyncio.ensure_future(anext(leaving))
    await asyncio.sleep(0)  # now waiting for the next event
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not first.done()

    gate.set()
    async with asyncio.timeout(PATIENCE):
        events = await first
        late_events += [event async for event in late]
    # the late joiner got the events sent before it joined, then the same live ones
    assert [e.message for e in late_events] == [e.message for e in events]
    assert events[0].message.startswith("Fetching dataset")
    assert events[-1].message == "Dataset 'gated' is ready."
    assert server.hits[PATH] == 1
    mounted = cache.mounts(cache.folders(entries(server)))["gated"]
    assert (mounted / "x.txt").read_bytes() == b"payload"


async def test_a_stopped_fetch_fails_every_caller_plainly(
    cache: DataCache,
    server: FileServer,
    gate: threading.Event,
    arrived: threading.Event,
    tmp_path: Path,
) -> None:
    callers = [asyncio.ensure_future(ensure(cache, server)) for _ in range(2)]
    await requested(arrived)
    closing = asyncio.ensure_future(cache.aclose())  # the service shuts down
    await asyncio.sleep(0)  # aclose cancelled the fetch, which waits for its download thread
    gate.set()  # the server answers; the cancelled download stops
    async with asyncio.timeout(PATIENCE):
        await closing
    for caller in callers:
        with pytest.raises(DataError, match="Fetching dataset 'gated' was stopped") as info:
            await caller
        assert info.value.reason == "data_cancelled"
    root = tmp_path / "cache"
    assert list((root / "datasets").iterdir()) == []
    assert list((root / "tmp").iterdir()) == []
    assert list((root / "locks").iterdir()) == []


async def test_waiting_for_other_processes_fetches_keeps_the_service_responsive(
    tmp_path: Path, server: FileServer, gate: threading.Event
) -> None:
    """Many datasets being fetched by another process: waiting for them takes no
    worker threads (the event loop has a handful), and each is used once free."""
    gate.set()
    cache = DataCache(
        root=str(tmp_path / "cache"), min_idle=0.0, poll_interval=0.05, allow_private_hosts=True
    )
    names = [f"d{i}" for i in range(12)]  # more than the default executor's workers here
    folders = cache.folders(
        [
            entry
            for name in names
            for entry in parse_requirements(
                json.dumps({"src": server.url(PATH), "projectName": name})
            )
        ]
    )
    # the other process: flock conflicts between open files, even in one process
    others = [FileLock.acquire(cache._lock_path(folder.key)) for folder in folders]
    waits = [asyncio.ensure_future(drain(cache.ensure([folder]))) for folder in folders]
    try:
        await asyncio.sleep(0.3)
        assert not any(w.done() for w in waits)
        # a thread for other work is still there at once
        async with asyncio.timeout(5):
            assert await asyncio.to_thread(lambda: 42) == 42
    finally:
        for lock in others:
            lock.release()
    async with asyncio.timeout(PATIENCE):
        results = await asyncio.gather(*waits)
    for events in results:
        assert "is being fetched elsewhere; waiting." in events[0].message
        assert events[-1].message.endswith("is ready.")
    await cache.aclose()


async def drain(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]
