"""``binderbox serve`` starts its proxy and its hub again when they die.

One real service (a ``binderbox serve`` subprocess with a real proxy and hub)
runs for the whole module.  The tests kill its children with SIGKILL, as a
crash or the OOM killer would, finding them in the service's process tree,
and use the service through its public port as a browser would:

* a killed proxy comes back: the home page and ``/health`` answer, and a
  session started before the kill answers through the new proxy with its
  kernel's state;
* a killed hub comes back: the session started before survives it, and
  launching works again;
* a child that keeps dying is given up after ``ChildWatcher.max_restarts``
  restarts, with one plain error in the log, and ``/health`` stays 503
  (last: it leaves the service without a hub).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kernels import execute, start_kernel
from repos import make_repo, notebook
from serve_helpers import (
    ServeProcess,
    build_events,
    end_session,
    git_spec,
    running_serve,
    user_of,
)
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
module_loop = pytest.mark.asyncio(loop_scope="module")

MAX_RESTARTS = 2
CONFIG = f"""
c.ChildWatcher.max_restarts = {MAX_RESTARTS}
c.ChildWatcher.restart_window = 3600
c.ChildWatcher.restart_delay = 0.5
"""
#: hang guard for a child to come back
BACK_WITHIN = 120


async def fetch(url: str, **kwargs: Any) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=30, **kwargs)


async def answers(url: str, **kwargs: Any) -> bool:
    """True when ``url`` answers 200 (False while nothing listens)."""
    try:
        return (await fetch(url, **kwargs)).code == 200
    except OSError:
        return False


async def launch(serve: ServeProcess, repo: Path) -> tuple[str, str]:
    """A new session of ``repo``: its URL and token."""
    stream = await build_events(serve.url, "git", git_spec(repo))
    assert stream.last.get("phase") == "ready", stream.events[-5:]
    return stream.last["url"], stream.last["token"]


async def kill_child(serve: ServeProcess, kind: str) -> int:
    """SIGKILL the service's ``kind`` child (``proxy``, ``hub``); its pid."""
    pid = serve.children()[kind]
    os.kill(pid, signal.SIGKILL)
    return pid


async def wait_replaced(serve: ServeProcess, kind: str, old: int) -> int:
    """Wait until a new ``kind`` child runs in place of ``old``; its pid."""
    async with asyncio.timeout(BACK_WITHIN):
        while (pid := serve.children().get(kind)) in (None, old):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    assert pid is not None
    return pid


async def wait_answers(url: str, **kwargs: Any) -> None:
    async with asyncio.timeout(BACK_WITHIN):
        while not await answers(url, **kwargs):  # noqa: ASYNC110
            await asyncio.sleep(0.2)


def restart_lines(serve: ServeProcess, label: str) -> list[str]:
    """The log lines saying the ``label`` child died and is started again."""
    start = f"the {label} exited with signal 9 (SIGKILL); starting it again"
    return [line for line in serve.output().splitlines() if start in line]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with running_serve(tmp_path_factory.mktemp("serve-restarts"), extra_config=CONFIG) as serve:
        yield serve


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = {"requirements.txt": "six==1.16.0\n", "index.ipynb": notebook("print(6*7)")}
    return make_repo(tmp_path_factory.mktemp("repos") / "restarts", files)


@pytest_asyncio.fixture(loop_scope="module")
async def session(service: ServeProcess, repo: Path) -> Any:
    """A running session with a kernel holding ``answer = 42``: (url, token, kernel)."""
    url, token = await launch(service, repo)
    try:
        kernel = await start_kernel(url, token)
        assert await execute(url, token, kernel, "answer = 6 * 7\nprint(answer)") == "42\n"
        yield url, token, kernel
    finally:
        await end_session(service, {"url": url})


@module_loop
async def test_a_killed_proxy_is_started_again(
    service: ServeProcess, session: tuple[str, str, str]
) -> None:
    url, token, kernel = session
    old = await kill_child(service, "proxy")
    await wait_replaced(service, "proxy", old)

    await wait_answers(service.url)  # the home page: binderbox's own route is back
    health = await fetch(f"{service.url}health")
    assert health.code == 200, health.body
    # the hub was asked for its routes: the session answers without waiting for
    # the hub's periodic route check (300 s, longer than the hang guard)
    await wait_answers(f"{url}api/status?token={token}")
    assert await execute(url, token, kernel, "print(answer + 1)") == "43\n"
    assert len(restart_lines(service, "proxy")) == 1


@module_loop
async def test_a_killed_hub_is_started_again_and_sessions_survive(
    service: ServeProcess, repo: Path, session: tuple[str, str, str]
) -> None:
    url, token, kernel = session
    old = await kill_child(service, "hub")
    await wait_replaced(service, "hub", old)
    await wait_answers(f"{service.url}health")

    # the new hub found the running session through the spawner's state
    user = await fetch(
        f"{service.hub_api_url}users/{user_of(url)}",
        headers={"Authorization": f"token {service.api_token}"},
    )
    assert user.code == 200, user.body
    assert json.loads(user.body)["servers"][""]["ready"] is True
    assert (await fetch(f"{url}api/status?token={token}")).code == 200
    assert await execute(url, token, kernel, "print(answer + 2)") == "44\n"

    fresh_url, fresh_token = await launch(service, repo)
    try:
        assert fresh_url != url
        assert (await fetch(f"{fresh_url}api/status?token={fresh_token}")).code == 200
    finally:
        await end_session(service, {"url": fresh_url})
    assert len(restart_lines(service, "hub")) == 1


@module_loop
async def test_a_hub_that_keeps_dying_is_given_up(service: ServeProcess) -> None:
    given_up = (
        f"The hub exited with signal 9 (SIGKILL) after {MAX_RESTARTS} restarts in 3600 s; "
        "it is not started again.  Restart binderbox."
    )
    for _ in range(MAX_RESTARTS + 1):
        old = await kill_child(service, "hub")
        async with asyncio.timeout(BACK_WITHIN):
            while given_up not in service.output():
                if service.children().get("hub") not in (None, old) and await answers(
                    f"{service.url}health"
                ):
                    break  # started again: kill it once more
                await asyncio.sleep(0.2)
        if given_up in service.output():
            break
    assert given_up in service.output()
    assert len(restart_lines(service, "hub")) == MAX_RESTARTS
    assert "hub" not in service.children()

    health = await fetch(f"{service.url}health")
    assert health.code == 503
    checks = {check["service"]: check for check in json.loads(health.body)["checks"]}
    assert checks["JupyterHub API"]["ok"] is False
    assert checks["JupyterHub API"]["error"] == given_up  # the operator sees why
    assert checks["Proxy"]["ok"] is True
