"""Helpers for the session tests: a real single-user environment, built once, and a
real hub to launch it with.

:func:`session_env` builds (once per cache key) a virtualenv *at*
``/srv/env`` with the real builder (see tests/envs.py) -- what a build of
a repository without requirements gives -- cached across runs.
:func:`make_hub` is a :class:`ManagedHub` on the given ports whose sessions may
mount the test cache and /tmp (its database SQLite, or PostgreSQL when
``BINDERBOX_TEST_HUB_DB=postgresql``: tests/pgserver.py), :func:`running_hub` one
started on free ports (its users deleted at the end); :func:`launch` runs one launch to ``ready``,
:func:`new_session` one of the session environment.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from envs import built_env
from pgserver import hub_db_url
from testcache import CACHE as TEST_CACHE
from tornado.httpclient import AsyncHTTPClient

from binderbox.events import Event, Ready
from binderbox.hub import ManagedHub
from binderbox.hub.children import free_port
from binderbox.providers.base import Resolved
from binderbox.sessions import SessionLauncher, SessionRequest
from binderbox.sessions.hubclient import HubClient

CACHE = TEST_CACHE


def session_env() -> Path:
    """The host path of a built session environment (see the module docstring)."""
    return built_env(session=True)


def resolved(name: str) -> Resolved:
    return Resolved(
        provider="gh",
        spec=f"binder-examples/{name}/main",
        version="a" * 40,
        persistent_spec=f"binder-examples/{name}/{'a' * 40}",
        repo_url=f"https://github.com/binder-examples/{name}",
        ref_url=f"https://github.com/binder-examples/{name}/tree/{'a' * 40}",
    )


def make_hub(data_dir: Path, ports: dict[str, int], **kwargs: Any) -> ManagedHub:
    kwargs.setdefault("db_url", hub_db_url(data_dir))
    return ManagedHub(
        data_dir=str(data_dir),
        public_ip="127.0.0.1",
        public_port=ports["public"],
        hub_port=ports["hub"],
        proxy_api_port=ports["api"],
        web_port=ports["web"],
        spawner_config={"allowed_roots": [str(CACHE), "/tmp"], "allow_origin": "*"},
        **kwargs,
    )


def launcher_for(hub: ManagedHub, **kwargs: Any) -> SessionLauncher:
    return SessionLauncher(hub_api_url=hub.hub_api_url, api_token=hub.api_token, **kwargs)


async def launch(launcher: SessionLauncher, req: SessionRequest) -> tuple[list[Event], Ready]:
    events = [event async for event in launcher.launch(req)]
    ready = events[-1]
    assert isinstance(ready, Ready), events
    return events, ready


async def fetch(url: str, **kwargs: Any) -> Any:
    return await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=60, **kwargs)


def user_of(ready: Ready) -> str:
    return ready.url.rstrip("/").rsplit("/", 1)[-1]


@contextlib.asynccontextmanager
async def running_hub(
    data_dir: Path, db_url: str | None = None, **spawner: object
) -> AsyncIterator[ManagedHub]:
    """A started :func:`make_hub` on free ports, ``spawner`` added to its spawner settings
    (``db_url``: its database, default as :func:`make_hub`'s); at the end its users (and
    so their sessions) are deleted and it is stopped."""
    ports = {"public": free_port(), "hub": free_port(), "api": free_port(), "web": 0}
    managed = make_hub(data_dir, ports, **({} if db_url is None else {"db_url": db_url}))
    managed.spawner_config = {**managed.spawner_config, **spawner}
    async with started_hub(managed):
        yield managed


@contextlib.asynccontextmanager
async def started_hub(managed: ManagedHub) -> AsyncIterator[ManagedHub]:
    """``managed`` started; afterwards every user (and session) deleted, then stopped."""
    await managed.start()
    try:
        yield managed
    finally:
        await delete_every_user(HubClient(managed.hub_api_url, managed.api_token))
        await managed.stop()


async def delete_every_user(client: HubClient) -> None:
    """Every hub user deleted with their servers (:meth:`HubClient.delete_user`: the
    servers stopped, named ones removed, and the stops waited for, first)."""
    for user in await client.request("GET", "users"):
        await client.delete_user(user["name"])


async def new_session(hub: ManagedHub, content: Path, name: str) -> Ready:
    """A launch of the session environment with ``content``, as repository ``name``."""
    request = SessionRequest(
        "env-test", session_env(), content, resolved(name), launch_host=hub.public_url
    )
    _, ready = await launch(launcher_for(hub), request)
    return ready


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
