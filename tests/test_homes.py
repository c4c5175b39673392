"""Logged-in users' sessions: persistent homes and named servers, against a REAL hub and
REAL sandboxed servers.

Until the web layer's logins are used here, a logged-in user is made the way the
hub's login would make one: the hub user is created through the REST API, and
the launch carries ``Visitor(name=...)``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kernels import execute, run_code, start_kernel
from session_helpers import (
    delete_every_user,
    fetch,
    launch,
    launcher_for,
    make_hub,
    resolved,
    session_env,
    user_of,
)

from binderbox.errors import QuotaExceeded
from binderbox.hub import ManagedHub
from binderbox.hub.children import free_port
from binderbox.providers.base import Resolved
from binderbox.sessions import SessionLauncher, SessionRequest
from binderbox.sessions.hubclient import HubAPIError, HubClient
from binderbox.sessions.identity import Visitor
from binderbox.sessions.persistent import HomeInUse, remove_persistent_home

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
module_loop = pytest.mark.asyncio(loop_scope="module")

HOME_PROBE = """
import json, os
home = os.path.expanduser("~")
print(json.dumps({
    "files": sorted(os.listdir(home)),
    "cwd": os.getcwd(),
    "repo_dir": os.environ.get("REPO_DIR"),
    "default_url": os.environ.get("JUPYTERHUB_DEFAULT_URL"),
    "uid": os.getuid(),
}))
"""


def version(name: str, commit: str) -> Resolved:
    """``resolved(name)`` at another commit."""
    base = resolved(name)
    return replace(
        base,
        version=commit,
        persistent_spec=f"binder-examples/{name}/{commit}",
        ref_url=f"{base.repo_url}/tree/{commit}",
    )


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("content")
    (root / "README.md").write_text("# from the repository\n")
    (root / "start").write_text('#!/bin/bash\nexport FROM_START=yes\nexec "$@"\n')
    return root


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("data")
    ports = {"public": free_port(), "hub": free_port(), "api": free_port(), "web": 0}
    box: dict[str, Any] = {"hub": make_hub(data_dir, ports), "data": data_dir, "ports": ports}
    await box["hub"].start()
    try:
        yield box
    finally:
        await end_everything(box["hub"])


async def end_everything(managed: ManagedHub) -> None:
    """Every user of the hub deleted (their servers stopped), then the hub stopped."""
    await delete_every_user(HubClient(managed.hub_api_url, managed.api_token))
    await managed.stop()


def request(hub: ManagedHub, content: Path, what: Resolved, user: str | None) -> SessionRequest:
    return SessionRequest(
        "env-test",
        session_env(),
        content,
        what,
        start_script="start",
        launch_host=hub.public_url,
        visitor=Visitor(name=user),
    )


async def probe(url: str, token: str, code: str = HOME_PROBE) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(await run_code(url, token, code))
    return result


async def logged_in_user(hub: ManagedHub, name: str) -> HubClient:
    """The hub user ``name``, made as a login makes it (through the REST API)."""
    client = HubClient(hub.hub_api_url, hub.api_token)
    await client.create_user(name)
    return client


@module_loop
async def test_a_home_is_kept_across_sessions_repositories_and_restarts(
    hub: dict[str, Any], content: Path
) -> None:
    managed: ManagedHub = hub["hub"]
    client = await logged_in_user(managed, "alice")
    launcher = launcher_for(managed)
    first = "a" * 40
    _, ready = await launch(launcher, request(managed, content, version("alpha", first), "alice"))
    assert "/user/alice/alpha-main-" in ready.url  # a named server of alice's own
    out = await probe(ready.url, ready.token)
    assert "alpha" in out["files"]  # the content, in a folder named after the repository
    assert out["repo_dir"] == "/home/jovyan/alpha"
    assert out["default_url"] == "/lab/tree/alpha"
    assert "yes" in await run_code(
        ready.url, ready.token, "import os; print(os.environ['FROM_START'])"
    )
    await run_code(
        ready.url,
        ready.token,
        "import pathlib; h = pathlib.Path.home()\n"
        "(h / 'notes.txt').write_text('kept')\n"
        "(h / 'alpha' / 'README.md').write_text('my edits')\n",
    )

    # another repository, at the same time: a second server of the same user and home
    _, other = await launch(launcher, request(managed, content, resolved("beta"), "alice"))
    assert other.url != ready.url
    code = "import pathlib; print((pathlib.Path.home() / 'notes.txt').read_text())"
    assert await run_code(other.url, other.token, code) == "kept\n"
    assert {"alpha", "beta", "notes.txt"} <= set((await probe(other.url, other.token))["files"])

    # a relaunch of the first repository while it runs goes to that server
    _, again = await launch(launcher, request(managed, content, version("alpha", first), "alice"))
    assert again.url == ready.url
    assert (await fetch(f"{again.url}api/status?token={again.token}")).code == 200

    # every session stopped, the hub and proxy restarted: the home is still there
    for session in await launcher.sessions_of(Visitor(name="alice")):
        await launcher.stop_session(Visitor(name="alice"), session["name"])
    assert await launcher.sessions_of(Visitor(name="alice")) == []
    assert (hub["data"] / "homes" / "users" / "alice" / "notes.txt").exists()
    await managed.stop()
    ports = hub["ports"]
    restarted = make_hub(hub["data"], ports)
    hub["hub"] = restarted
    await restarted.start()
    assert "alice" in [u["name"] for u in await client.request("GET", "users")]
    launcher = launcher_for(restarted)
    _, after = await launch(launcher, request(restarted, content, resolved("beta"), "alice"))
    assert await run_code(after.url, after.token, code) == "kept\n"

    # a relaunch of the first repository at a new commit keeps the user's edits and
    # offers the new commit beside them
    newer = "b" * 40
    _, relaunch = await launch(
        launcher, request(restarted, content, version("alpha", newer), "alice")
    )
    readme = "import pathlib; print((pathlib.Path.home() / NAME / 'README.md').read_text())"
    assert await run_code(relaunch.url, relaunch.token, readme.replace("NAME", "'alpha'")) == (
        "my edits\n"
    )
    beside = readme.replace("NAME", "'alpha-bbbbbbb'")
    assert await run_code(relaunch.url, relaunch.token, beside) == "# from the repository\n\n"


@module_loop
async def test_the_sixth_named_server_is_refused_and_stopping_one_frees_its_slot(
    hub: dict[str, Any], content: Path
) -> None:
    managed: ManagedHub = hub["hub"]
    await logged_in_user(managed, "bob")
    launcher = launcher_for(managed)
    bob = Visitor(name="bob")
    for n in range(5):
        await launch(launcher, request(managed, content, resolved(f"repo{n}"), "bob"))
    assert len(await launcher.sessions_of(bob)) == 5
    with pytest.raises(QuotaExceeded) as refused:
        await launch(launcher, request(managed, content, resolved("repo5"), "bob"))
    assert "Stop one of them" in refused.value.user_message
    assert len(await launcher.sessions_of(bob)) == 5  # nothing half-made

    # a relaunch of a running one is no sixth server
    await launch(launcher, request(managed, content, resolved("repo0"), "bob"))
    name = (await launcher.sessions_of(bob))[0]["name"]
    await launcher.stop_session(bob, name)
    _, sixth = await launch(launcher, request(managed, content, resolved("repo5"), "bob"))
    assert (await fetch(f"{sixth.url}api/status?token={sixth.token}")).code == 200
    assert len(await launcher.sessions_of(bob)) == 5
    for session in await launcher.sessions_of(bob):
        await launcher.stop_session(bob, session["name"])


@module_loop
async def test_a_home_is_removed_only_when_the_admin_asks_and_no_session_runs(
    hub: dict[str, Any], content: Path
) -> None:
    managed: ManagedHub = hub["hub"]
    client = await logged_in_user(managed, "dora")
    launcher = launcher_for(managed)
    dora = Visitor(name="dora")
    await launch(launcher, request(managed, content, resolved("gamma"), "dora"))
    home = hub["data"] / "homes" / "users" / "dora"
    with pytest.raises(HomeInUse):
        remove_persistent_home(hub["data"], "dora")
    assert (home / "gamma" / "README.md").exists()
    for session in await launcher.sessions_of(dora):
        await launcher.stop_session(dora, session["name"])
    await client.delete_user("dora")  # the hub user goes: the home stays
    assert (home / "gamma" / "README.md").exists()
    assert remove_persistent_home(hub["data"], "dora")
    assert not home.exists()


@module_loop
async def test_anonymous_launches_keep_ephemeral_homes(hub: dict[str, Any], content: Path) -> None:
    managed: ManagedHub = hub["hub"]
    launcher = launcher_for(managed)
    _, ready = await launch(launcher, request(managed, content, resolved("anon"), None))
    name = ready.url.rstrip("/").rsplit("/", 1)[-1]
    out = await probe(ready.url, ready.token)
    assert "README.md" in out["files"]  # the content is the home, as on every Binder
    assert out["repo_dir"] == "/home/jovyan"
    home = hub["data"] / "homes" / f"{name}-default"
    assert home.is_dir()
    await HubClient(managed.hub_api_url, managed.api_token).delete_user(name)
    assert not home.exists()


@module_loop
async def test_a_user_is_deleted_while_their_named_servers_stop_or_run(
    hub: dict[str, Any], content: Path
) -> None:
    """The hub refuses to delete a user while a named server of theirs is active (500
    "Spawner ... is active", 400 while a stop is pending): HubClient.delete_user, what
    the launcher and the tests' clean-up use, stops them, waits, and deletes."""
    managed: ManagedHub = hub["hub"]
    client = await logged_in_user(managed, "frank")
    launcher = launcher_for(managed)
    _, first = await launch(launcher, request(managed, content, resolved("first"), "frank"))
    _, second = await launch(launcher, request(managed, content, resolved("second"), "frank"))
    assert len(await _servers(client, "frank")) == 2
    # one server stopping (its stop under way in the hub), the other just started
    stopping = asyncio.ensure_future(client.stop_server("frank", user_of(first)))
    await asyncio.sleep(0.05)
    await client.delete_user("frank")
    await stopping
    with pytest.raises(HubAPIError) as gone:
        await client.get_user("frank")
    assert gone.value.status == 404
    assert "frank" not in [u["name"] for u in await client.active_users()]
    for ready in (first, second):  # the sessions went with their servers
        status = await fetch(f"{ready.url}api/status?token={ready.token}", follow_redirects=False)
        assert status.code != 200


async def _servers(client: HubClient, user: str) -> dict[str, Any]:
    servers: dict[str, Any] = (await client.get_user(user)).get("servers") or {}
    return servers


@module_loop
async def test_logged_in_users_are_never_culled_and_busy_kernels_count_as_activity(
    tmp_path: Path, content: Path
) -> None:
    ports = {"public": free_port(), "hub": free_port(), "api": free_port(), "web": 0}
    managed = make_hub(tmp_path, ports, cull_timeout=2, named_cull_timeout=8, cull_every=1)
    managed.spawner_config = {
        **managed.spawner_config,
        "environment": {"JUPYTERHUB_ACTIVITY_INTERVAL": "1"},
        "busy_interval": 1,
        "orphan_timeout": 0,  # no binderbox serve here: sessions would end themselves
    }
    await managed.start()
    try:
        client = await logged_in_user(managed, "erin")
        launcher: SessionLauncher = launcher_for(managed)
        _, idle = await launch(launcher, request(managed, content, resolved("idle"), "erin"))
        _, busy = await launch(launcher, request(managed, content, resolved("busy"), "erin"))
        kernel = await start_kernel(busy.url, busy.token)
        cell = asyncio.ensure_future(
            execute(busy.url, busy.token, kernel, "import time; time.sleep(100)")
        )
        try:
            idle_name = idle.url.rstrip("/").rsplit("/", 1)[-1]
            busy_name = busy.url.rstrip("/").rsplit("/", 1)[-1]
            async with asyncio.timeout(120):
                while idle_name in await _servers(client, "erin"):  # noqa: ASYNC110
                    await asyncio.sleep(0.5)
            # the idle one was culled (and removed: its slot is free); the user stays,
            # with the home; the one running a long quiet cell is still up after more
            # than its idle timeout more
            for _ in range(2 * 8 + 4):
                await asyncio.sleep(1)
                assert busy_name in await _servers(client, "erin")
            assert not cell.done()
            assert (tmp_path / "homes" / "users" / "erin").is_dir()
            assert "erin" in [u["name"] for u in await client.request("GET", "users")]
        finally:
            cell.cancel()
    finally:
        await end_everything(managed)
