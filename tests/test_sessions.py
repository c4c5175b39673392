"""Sessions end to end: a REAL hub, REAL Node proxy, REAL sandboxed servers.

One hub + proxy serve the whole module (starting them costs seconds); few
sessions are started (each costs ~2-3 s and memory).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kernels import run_code
from session_helpers import (
    descendants,
    fetch,
    launch,
    launcher_for,
    make_hub,
    resolved,
    session_env,
    user_of,
)
from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler

from binderbox.errors import LaunchError, QuotaExceeded
from binderbox.events import Launching
from binderbox.hub import HubError, ManagedHub
from binderbox.hub.children import free_port
from binderbox.runtime.limits import CgroupLimits, Limits, limits_status
from binderbox.sessions import SessionLauncher, SessionRequest
from binderbox.sessions.hubclient import HubClient
from binderbox.sessions.launcher import user_name_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
module_loop = pytest.mark.asyncio(loop_scope="module")

START_SCRIPT = """#!/bin/bash
export FROM_START="start script ran"
exec "$@"
"""
NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
PROBE = """
import json, os, pathlib
out = {"files": sorted(os.listdir(os.path.expanduser("~"))), "cwd": os.getcwd()}
out["binder"] = {k: v for k, v in os.environ.items() if k.startswith(("BINDER_", "NB_", "REPO"))}
out["start_var"] = os.environ.get("FROM_START")
out["uid"] = os.getuid()
out["data"] = pathlib.Path("~/data/sample/values.csv").expanduser().read_text()
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return type(e).__name__
out["env_write"] = attempt(lambda: open("/srv/env/intruder", "w"))
out["data_write"] = attempt(lambda: open(os.path.expanduser("~/data/sample/new"), "w"))
out["home_write"] = attempt(lambda: open(os.path.expanduser("~/scratch.txt"), "w"))
out["other_home"] = attempt(lambda: os.listdir(OTHER))
out["homes"] = sorted(os.listdir("/home"))
from ipykernel.connect import get_connection_info
out["kernel"] = json.loads(get_connection_info())
print(json.dumps(out))
"""


class WebHandler(RequestHandler):
    def get(self, path: str) -> None:
        self.write(f"binderbox web: {path}")


@pytest.fixture(scope="module")
def env_path() -> Path:
    return session_env()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("content")
    (root / "README.md").write_text("# hello from the repository\n")
    (root / "index.ipynb").write_text(json.dumps(NOTEBOOK))
    (root / "start").write_text(START_SCRIPT)
    (root / "start").chmod(0o644)  # not executable in the repository: still honoured
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    (root / "values.csv").write_text("a,b\n1,2\n")
    return root


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ports() -> AsyncIterator[dict[str, int]]:
    web = Application([(r"/(.*)", WebHandler)])
    server = HTTPServer(web)
    port = free_port()
    server.listen(port, "127.0.0.1")
    yield {"public": free_port(), "hub": free_port(), "api": free_port(), "web": port}
    server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(data_dir: Path, ports: dict[str, int]) -> AsyncIterator[dict[str, Any]]:
    managed = make_hub(data_dir, ports)
    await managed.start()
    box: dict[str, Any] = {"hub": managed}
    try:
        yield box
    finally:
        await box["hub"].stop()
        # the sessions outlive the hub by design: end the ones the tests left
        client_hub = make_hub(data_dir, ports)
        await client_hub.start()
        client = HubClient(client_hub.hub_api_url, client_hub.api_token)
        for user in await client.request("GET", "users"):
            await client.delete_user(user["name"])
        await client_hub.stop()


@module_loop
async def test_sessions_end_to_end(
    hub: dict[str, Any], env_path: Path, content: Path, dataset: Path, data_dir: Path
) -> None:
    managed: ManagedHub = hub["hub"]
    launcher = launcher_for(managed)
    public = managed.public_url
    request = SessionRequest(
        env_key="env-test",
        env_path=env_path,
        content_path=content,
        resolved=resolved("requirements"),
        start_script="start",
        launch_host=public,
        data_mounts={"sample": dataset},
    )
    events, ready = await launch(launcher, request)
    messages = [e.message for e in events if isinstance(e, Launching)]
    assert "Starting the sandboxed Jupyter server" in messages  # relayed spawn progress
    assert ready.url.startswith(f"{public}user/requirements-")
    assert ready.repo_url == "https://github.com/binder-examples/requirements"
    assert ready.binder_persistent_request == f"v2/gh/binder-examples/requirements/{'a' * 40}"
    assert ready.image == "env-test"
    name = user_of(ready)
    assert len(name) <= 30

    # the server answers through the proxy's public port with the launch token
    status = await fetch(f"{ready.url}api/status?token={ready.token}")
    assert status.code == 200, status.body
    cors = await fetch(
        f"{ready.url}api/status?token={ready.token}", headers={"Origin": "https://example.org"}
    )
    assert cors.headers.get("Access-Control-Allow-Origin") == "*"
    lab = await fetch(f"{ready.url}lab?token={ready.token}", follow_redirects=False)
    assert lab.code == 200
    assert (await fetch(f"{ready.url}api/status?token=wrong")).code in (401, 403)
    tree = await fetch(f"{ready.url}api/contents?token={ready.token}")
    assert {"README.md", "index.ipynb"} <= {i["name"] for i in json.loads(tree.body)["content"]}

    # a second session of another repository, to test isolation between them
    _, other = await launch(
        launcher,
        SessionRequest("env-test", env_path, content, resolved("other"), launch_host=public),
    )
    other_home = data_dir / "homes" / f"{user_of(other)}-default"
    assert other_home.is_dir()

    code = PROBE.replace("OTHER", repr(str(other_home)))
    out = json.loads(await run_code(ready.url, ready.token, code))
    assert {"README.md", "index.ipynb", "start", "data"} <= set(out["files"])
    assert out["cwd"] == "/home/jovyan"
    assert out["uid"] == 1000
    assert out["start_var"] == "start script ran"
    assert out["binder"]["BINDER_REPO_URL"] == ready.repo_url
    assert out["binder"]["BINDER_REF_URL"] == ready.binder_ref_url
    assert out["binder"]["BINDER_LAUNCH_HOST"] == public
    assert out["binder"]["BINDER_REQUEST"] == "v2/gh/binder-examples/requirements/main"
    assert out["binder"]["BINDER_PERSISTENT_REQUEST"] == ready.binder_persistent_request
    assert out["binder"]["NB_PYTHON_PREFIX"] == "/srv/env"
    assert out["binder"]["REPO_DIR"] == "/home/jovyan"
    assert out["data"] == "a,b\n1,2\n"
    assert out["env_write"] in ("OSError", "PermissionError")  # EROFS
    assert out["data_write"] in ("OSError", "PermissionError")
    assert out["home_write"] == "ok"
    assert out["other_home"] == "FileNotFoundError"
    assert out["homes"] == ["jovyan"]
    # the kernel listens on no port of the shared network namespace: iopub would
    # publish its outputs to any other session that subscribes
    assert out["kernel"]["transport"] == "ipc"
    assert out["kernel"]["ip"].startswith("/home/jovyan/")
    assert not (env_path / "intruder").exists()

    # the session runs under its supervisor, in its cgroups when limits are enforced
    # (the supervisor outside them: a session at its limits cannot starve its watchdogs)
    client = HubClient(managed.hub_api_url, managed.api_token)
    state = (await client.get_user(name))["servers"][""]["state"]
    limits = limits_status()
    if limits["backend"] == "cgroup-v1":
        group = Path(f"/sys/fs/cgroup/memory/binderbox/{name}-default")
        assert (group / "memory.limit_in_bytes").read_text().strip() == str(2 << 30)
        procs = set((group / "cgroup.procs").read_text().split())
        sandbox = descendants(int(state["pid"]))
        assert sandbox and {str(pid) for pid in sandbox} <= procs
        assert str(state["pid"]) not in procs

    # the other session's token does not open this one
    assert (await fetch(f"{ready.url}api/status?token={other.token}")).code == 403

    # restart hub + proxy with the same data dir: the session is still there
    await managed.stop()
    with pytest.raises(OSError):  # the proxy is down too
        await fetch(f"{ready.url}api/status?token={ready.token}")
    restarted = make_hub(
        data_dir,
        {
            "public": managed.public_port,
            "hub": managed.hub_port,
            "api": managed.proxy_api_port,
            "web": managed.web_port,
        },
    )
    hub["hub"] = restarted
    await restarted.start()
    status = await fetch(f"{ready.url}api/status?token={ready.token}")
    assert status.code == 200, status.body
    assert "start script ran" in await run_code(
        ready.url, ready.token, "import os; print(os.environ['FROM_START'])"
    )

    # deleting the user stops the server and removes its home
    home = data_dir / "homes" / f"{name}-default"
    assert (home / "scratch.txt").exists()
    client = HubClient(restarted.hub_api_url, restarted.api_token)
    await client.delete_user(name)
    assert not home.exists()
    gone = await fetch(f"{ready.url}api/status?token={ready.token}")
    assert gone.code != 200 or b"binderbox web" in gone.body
    await client.delete_user(user_of(other))
    assert not other_home.exists()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@module_loop
async def test_a_crashed_session_leaves_no_home(
    hub: dict[str, Any], env_path: Path, content: Path, data_dir: Path
) -> None:
    managed: ManagedHub = hub["hub"]
    req = SessionRequest("env-test", env_path, content, resolved("crash"), launch_host="/")
    _, ready = await launch(launcher_for(managed), req)
    name = user_of(ready)
    home = data_dir / "homes" / f"{name}-default"
    assert home.is_dir()
    pgrep = ["pgrep", "-f", f"binderbox.runtime.supervise.*{name}"]
    found = await asyncio.to_thread(subprocess.run, pgrep, capture_output=True, text=True)
    supervisor = found.stdout.split()
    assert supervisor, "no supervisor process found"
    for pid in supervisor:
        os.killpg(int(pid), signal.SIGKILL)  # the session dies on its own
    async with asyncio.timeout(10):  # dead (a zombie until the hub looks), not dying
        while any(_running(int(pid)) for pid in supervisor):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await HubClient(managed.hub_api_url, managed.api_token).delete_user(name)
    assert not home.exists()


@module_loop
async def test_web_route_is_left_alone_by_the_hub(hub: dict[str, Any]) -> None:
    managed: ManagedHub = hub["hub"]
    assert managed.status() == {"proxy": True, "hub": True, "culler": True}
    routes = await managed.routes()
    assert routes["/"]["target"] == f"http://127.0.0.1:{managed.web_port}"
    assert routes["/hub"]["jupyterhub"] is True  # CHP drops the trailing slash
    page = await fetch(managed.public_url + "user/nobody/lab")
    assert page.code == 200
    assert page.body == b"binderbox web: user/nobody/lab"
    api = await fetch(managed.public_url + "hub/api/")
    assert "version" in json.loads(api.body)


@module_loop
async def test_quotas(hub: dict[str, Any], env_path: Path, content: Path) -> None:
    managed: ManagedHub = hub["hub"]
    req = SessionRequest("env-test", env_path, content, resolved("quota"), launch_host="/")
    maintenance = launcher_for(managed, total_quota=0)
    with pytest.raises(QuotaExceeded) as info:
        _ = [e async for e in maintenance.launch(req)]
    assert "maintenance" in info.value.user_message

    launcher = launcher_for(managed, per_repo_quota=1, per_repo_quota_higher=2)
    _, ready = await launch(launcher, req)
    try:
        with pytest.raises(QuotaExceeded) as info:
            _ = [e async for e in launcher.launch(req)]
        assert info.value.user_message == (
            "Too many users running https://github.com/binder-examples/quota! Try again soon."
        )
        assert launcher.repo_quota(high_quota=False) == 1
        assert launcher.repo_quota(high_quota=True) == 2
        # a high-quota spec may start a second session of the same repository
        _, second = await launch(launcher, replace(req, high_quota=True))
        await HubClient(managed.hub_api_url, managed.api_token).delete_user(user_of(second))
        total = launcher_for(managed, total_quota=1)
        with pytest.raises(QuotaExceeded):
            _ = [e async for e in total.launch(replace(req, resolved=resolved("x")))]
        health = await launcher.health()
        assert health["ok"] is True
        assert health["running"] == 1
    finally:
        await HubClient(managed.hub_api_url, managed.api_token).delete_user(user_of(ready))


@module_loop
async def test_a_culler_that_exits_is_started_again(hub: dict[str, Any]) -> None:
    managed: ManagedHub = hub["hub"]
    culler = managed.children["culler"]
    old = culler.proc
    assert old is not None and culler.running
    watch = asyncio.create_task(managed.watch(interval=0.2))
    try:
        old.kill()
        await old.wait()
        assert managed.status()["culler"] is False
        async with asyncio.timeout(30):
            while culler.proc is old or not managed.status()["culler"]:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    finally:
        watch.cancel()


@module_loop
async def test_two_launches_at_once_cannot_both_pass_a_quota(
    hub: dict[str, Any], env_path: Path, content: Path
) -> None:
    managed: ManagedHub = hub["hub"]
    req = SessionRequest("env-test", env_path, content, resolved("race"), launch_host="/")
    launcher = launcher_for(managed, per_repo_quota=1)
    results = await asyncio.gather(
        launch(launcher, req), launch(launcher, req), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    started = [r for r in results if isinstance(r, tuple)]
    try:
        assert len(refused) == 1 and len(started) == 1, results
    finally:
        client = HubClient(managed.hub_api_url, managed.api_token)
        for _, ready in started:
            await client.delete_user(user_of(ready))


@module_loop
async def test_failed_launch_leaves_no_user(
    hub: dict[str, Any], tmp_path: Path, content: Path
) -> None:
    managed: ManagedHub = hub["hub"]
    broken = tmp_path / "not-an-env"
    broken.mkdir()
    launcher = launcher_for(managed)
    req = SessionRequest("broken", broken, content, resolved("broken"), launch_host="/")
    with pytest.raises(LaunchError):
        _ = [e async for e in launcher.launch(req)]
    users = await HubClient(managed.hub_api_url, managed.api_token).request("GET", "users")
    assert not [u for u in users if u["name"].startswith("binder-examples-broken")]


async def users_named(client: HubClient, prefix: str) -> list[str]:
    return [u["name"] for u in await client.request("GET", "users") if u["name"].startswith(prefix)]


@module_loop
async def test_abandoned_launches_are_cleaned_up_while_others_follow_their_spawns(
    hub: dict[str, Any], env_path: Path, tmp_path: Path
) -> None:
    """Twelve launches follow their pending spawns (a start script that takes its time):
    more progress streams than a shared HTTP client allows at once.  A launch whose
    consumer leaves still has its server stopped and its user deleted, at once."""
    managed: ManagedHub = hub["hub"]
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "start").write_text('#!/bin/bash\nsleep 120\nexec "$@"\n')
    launcher = launcher_for(managed, launches_per_address=0)  # all from one address
    req = SessionRequest("env-test", env_path, slow, resolved("crowd"), "start", launch_host="/")
    client = HubClient(managed.hub_api_url, managed.api_token)
    launches = [launcher.launch(req) for _ in range(12)]
    try:
        for launch in launches:  # each one up to its sandbox's start: the spawn is pending
            async for event in launch:
                if event.message == "Starting the sandboxed Jupyter server":
                    break
        assert len(await users_named(client, "binder-examples-crowd-")) == 12
        await launches[0].aclose()  # its visitor left
        async with asyncio.timeout(30):
            while len(await users_named(client, "binder-examples-crowd-")) > 11:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
    finally:
        for launch in launches:
            await launch.aclose()
    async with asyncio.timeout(30):
        while await users_named(client, "binder-examples-crowd-"):  # noqa: ASYNC110
            await asyncio.sleep(0.2)


@module_loop
async def test_idle_culler_removes_session_user_and_home(
    tmp_path: Path, env_path: Path, content: Path
) -> None:
    ports = {"public": free_port(), "hub": free_port(), "api": free_port(), "web": 0}
    managed = make_hub(tmp_path, ports, cull_timeout=2, cull_every=1)
    await managed.start()
    try:
        launcher = launcher_for(managed)
        req = SessionRequest("env-test", env_path, content, resolved("idle"), launch_host="/")
        _, ready = await launch(launcher, req)
        name = user_of(ready)
        home = tmp_path / "homes" / f"{name}-default"
        assert home.is_dir()
        client = HubClient(managed.hub_api_url, managed.api_token)

        async def user_exists() -> bool:
            return any(u["name"] == name for u in await client.request("GET", "users"))

        async with asyncio.timeout(90):
            while await user_exists():  # noqa: ASYNC110 -- polling the hub
                await asyncio.sleep(0.5)
        assert not home.exists()
    finally:
        client = HubClient(managed.hub_api_url, managed.api_token)
        for user in await client.request("GET", "users"):
            await client.delete_user(user["name"])
        await managed.stop()


def test_stop_on_signals_stops_hub_and_proxy(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    script = f"""
import asyncio
from binderbox.hub import ManagedHub
async def main():
    hub = ManagedHub(data_dir={str(tmp_path)!r}, public_ip="127.0.0.1", public_port={ports[0]},
                     hub_port={ports[1]}, proxy_api_port={ports[2]})
    await hub.start()
    stopped = asyncio.Event()
    hub.stop_on_signals(then=stopped.set)
    print(*(child.proc.pid for child in hub.children.values()), flush=True)
    await stopped.wait()
asyncio.run(main())
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 3
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@module_loop
async def test_health_when_hub_is_down() -> None:
    launcher = SessionLauncher(
        hub_api_url=f"http://127.0.0.1:{free_port()}/hub/api/", api_token="x"
    )
    health = await launcher.health()
    assert health["ok"] is False


@module_loop
async def test_missing_proxy_binary_is_a_plain_error(tmp_path: Path) -> None:
    managed = ManagedHub(data_dir=str(tmp_path), proxy_command=str(tmp_path / "nope"))
    with pytest.raises(HubError) as info:
        await managed.start()
    assert "npm install configurable-http-proxy" in info.value.user_message


@module_loop
@pytest.mark.parametrize(("taken", "words"), [("hub", "the hub port"), ("public", "--port")])
async def test_busy_port_is_a_plain_error_and_leaves_nothing(
    tmp_path: Path, taken: str, words: str
) -> None:
    probe = ManagedHub(data_dir=str(tmp_path))
    probe.network.ensure()  # the hub's address (the sandbox bridge's) exists
    address = probe.hub_ip if taken == "hub" else "127.0.0.1"
    with socket.socket() as busy:
        busy.bind((address, 0))
        busy.listen()
        ports = {"public": free_port(), "hub": free_port(), "api": free_port(), "web": 0}
        ports[taken] = busy.getsockname()[1]
        managed = make_hub(tmp_path, ports)
        with pytest.raises(HubError) as info:
            await managed.start()
    assert f"Port {ports[taken]}" in info.value.user_message
    assert words in info.value.user_message
    assert all(child.proc is None for child in managed.children.values())


@module_loop
async def test_hub_that_exits_is_a_plain_error_and_leaves_nothing(tmp_path: Path) -> None:
    ports = {"public": free_port(), "hub": free_port(), "api": free_port(), "web": 0}
    managed = make_hub(tmp_path, ports)
    managed.extra_config = "raise SystemExit('broken config')"
    with pytest.raises(HubError) as info:
        await managed.start()
    assert info.value.user_message.startswith("The session hub could not be started.")
    assert "exited" in info.value.log_message
    assert all(child.proc is None for child in managed.children.values())
    with socket.socket() as probe:  # the proxy is gone: its public port is free again
        probe.bind(("127.0.0.1", ports["public"]))


def test_user_names() -> None:
    names = {user_name_for(resolved("a-very-long-repository-name-indeed")) for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert len(name) <= 30
        assert name.startswith("a-very-long-repositor-")
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


def test_memory_limit_kills_a_process_over_it() -> None:
    limits = CgroupLimits()
    status = limits_status()
    assert status["mode"] == limits.status.mode
    if not limits.status.memory:
        assert status["mode"] == "advisory" and status["reason"]
        pytest.skip(f"memory limits are not enforceable here: {status['reason']}")
    session = f"test-{secrets.token_hex(4)}"
    groups = limits.create(session, Limits(mem_bytes=64 * 1024 * 1024, cpu=0.5))
    try:
        supervise = [sys.executable, "-m", "binderbox.runtime.supervise"]
        for group in groups:
            supervise += ["--cgroup", str(group)]
        small = subprocess.run([*supervise, "--", sys.executable, "-c", "x = 'x' * (8 << 20)"])
        assert small.returncode == 0
        big = subprocess.run([*supervise, "--", sys.executable, "-c", "x = 'x' * (300 << 20)"])
        assert big.returncode == 128 + 9  # SIGKILL by the OOM killer
    finally:
        limits.remove(session)
    assert not any(group.exists() for group in groups)
