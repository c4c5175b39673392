"""Suite-wide set-up.

Sandboxes run as unprivileged host uids when the suite runs as root, and they
must be able to enter the data directories tests make under pytest's temporary
folders, which pytest creates private (mode 0700).  Here those folders are made
enterable (0711: searchable, not listable) by every uid.  The operator's side
of the same rule is binderbox's check that a data directory can be entered
(``make_reachable`` in binderbox/runtime/provision.py).

The run's PostgreSQL server (tests/pgserver.py), started by the first test that
needs it (the ``postgresql`` fixture, or any test hub when
``BINDERBOX_TEST_HUB_DB=postgresql``), is stopped at the end of the run.
"""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pgserver
import pytest
import pytest_asyncio
from browser import chromium
from playwright.async_api import Browser

_mktemp = pytest.TempPathFactory.mktemp


def _enterable(path: Path) -> None:
    for folder in (path, *path.parents):
        if folder == Path("/"):
            return
        info = folder.stat()
        if not info.st_mode & stat.S_IXOTH and info.st_uid == 0:
            folder.chmod(stat.S_IMODE(info.st_mode) | 0o011)


def _mktemp_enterable(self: pytest.TempPathFactory, *args: Any, **kwargs: Any) -> Path:
    path = _mktemp(self, *args, **kwargs)
    _enterable(path)
    return path


pytest.TempPathFactory.mktemp = _mktemp_enterable  # type: ignore[method-assign]


@pytest.fixture(scope="session", autouse=True)
def _postgresql_stopped() -> Iterator[None]:
    yield
    pgserver.stop_shared()


@pytest.fixture(scope="session")
def postgresql() -> pgserver.PgServer:
    """The run's real PostgreSQL server (tests/pgserver.py)."""
    return pgserver.shared()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for a module's tests (tests/browser.py)."""
    async with chromium() as started:
        yield started
