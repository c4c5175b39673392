"""``binderbox serve`` end to end: the real command, hub, proxy, builds and sessions.

Two services run for the whole module, each a ``binderbox serve`` subprocess
with its own data directory and ``binderbox_config.py``:

* ``main``: a plain service (launches, caching, concurrent launches,
  metrics, health, restart);
* ``strict``: per-repository quota 1, a banned spec, an idle culler with
  a timeout of seconds (failures and culling), and no restarts of a hub that
  dies (health; restarts are tested in ``test_serve_restarts.py``).

Everything goes through the proxy's public port, as a browser or a thebe
client would: ``/build`` as an event stream, then the session's REST API and
kernel websocket with the launch token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kernels import execute, run_code, start_kernel
from repos import commit, head, make_repo, notebook
from serve_helpers import (
    ServeProcess,
    Stream,
    build_events,
    end_session,
    escaped_file_url,
    git_spec,
    running_serve,
    user_of,
)
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from binderbox.hub.children import free_port
from binderbox.sessions.hubclient import HubClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
module_loop = pytest.mark.asyncio(loop_scope="module")

REQUIREMENTS = "six==1.16.0\n"

PROBE = """
import json, os, six
home = os.path.expanduser("~")
out = {"home": home, "files": sorted(os.listdir(home)), "six": six.__version__}
try:
    open("/srv/env/intruder", "w")
    out["env_write"] = "ok"
except OSError as e:
    out["env_write"] = type(e).__name__ + ": " + str(e)
open(os.path.join(home, "secret.txt"), "w").write("only mine")
print(json.dumps(out))
"""

SNOOP = """
import json, os
out = {"homes": sorted(os.listdir("/home"))}
for path in PATHS:
    try:
        out[path] = open(path).read()
    except OSError as e:
        out[path] = type(e).__name__
print(json.dumps(out))
"""


async def fetch(url: str, **kwargs: Any) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=60, **kwargs)


def collapsed(phases: list[str]) -> list[str]:
    """Phases with repeats folded: [a, a, b, a] -> [a, b, a]."""
    out: list[str] = []
    for phase in phases:
        if not out or out[-1] != phase:
            out.append(phase)
    return out


def ready_of(stream: Stream) -> dict[str, Any]:
    assert stream.status == 200, stream
    assert stream.last.get("phase") == "ready", stream.events[-5:]
    return stream.last


def failed_of(stream: Stream) -> dict[str, Any]:
    assert stream.status == 200, stream
    assert stream.last.get("phase") == "failed", stream.events[-5:]
    assert "ready" not in stream.phases
    message = stream.last["message"]
    assert "\n" not in message.strip() and "Traceback" not in message
    return stream.last


# -- the services ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def main(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with running_serve(tmp_path_factory.mktemp("serve-main")) as serve:
        yield serve


STRICT_CONFIG = """
c.SessionLauncher.per_repo_quota = 1
c.GitProvider.banned_specs = [r".*/banned-repo/"]
c.ManagedHub.cull_timeout = 5
c.ManagedHub.cull_every = 2
c.ChildWatcher.max_restarts = 0
"""


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with running_serve(tmp_path_factory.mktemp("serve-strict"), extra_config=STRICT_CONFIG) as s:
        yield s


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("repos")


@pytest.fixture(scope="module")
def main_repo(repos: Path) -> Path:
    return make_repo(
        repos / "analysis",
        {"requirements.txt": REQUIREMENTS, "index.ipynb": notebook("print(6*7)")},
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def first_launch(main: ServeProcess, main_repo: Path) -> Stream:
    """The first launch of ``main_repo`` on ``main`` (it builds)."""
    return await build_events(main.url, "git", git_spec(main_repo))


# -- main: launch, cache, concurrency, metrics -----------------------------------------


@module_loop
async def test_launch_end_to_end(main: ServeProcess, main_repo: Path, first_launch: Stream) -> None:
    stream = first_launch
    assert collapsed(stream.phases) == ["fetching", "building", "built", "launching", "ready"]
    built = stream.of("built")[0]
    assert built["cached"] is False
    ready = ready_of(stream)
    escaped = escaped_file_url(main_repo)
    sha = head(main_repo)
    assert ready["url"].startswith(f"{main.url}user/")
    assert re.fullmatch(r"[0-9a-f]{20,}", ready["token"]), ready["token"]
    assert ready["image"] == built["imageName"]
    assert ready["repo_url"] == f"file://{main_repo}"
    assert ready["binder_ref_url"] == ready["repo_url"]  # as BinderHub's GitRepoProvider
    assert ready["binder_launch_host"] == main.url
    assert ready["binder_request"] == f"v2/git/{escaped}/HEAD"
    assert ready["binder_persistent_request"] == f"v2/git/{escaped}/{sha}"

    # through the proxy's public port: the token opens the server, nothing else does
    url, token = ready["url"], ready["token"]
    assert (await fetch(f"{url}api/status?token={token}")).code == 200
    assert (await fetch(f"{url}api/status")).code in (302, 401, 403)
    out = json.loads(await run_code(url, token, PROBE))
    assert out["home"] == "/home/jovyan"
    assert {"requirements.txt", "index.ipynb"} <= set(out["files"])
    assert out["six"] == "1.16.0"
    assert out["env_write"].startswith("OSError"), out["env_write"]  # read-only file system
    assert "Read-only file system" in out["env_write"]
    assert not (Path(built["path"]) / "intruder").exists()

    # a second session cannot read the first one's home by any path
    first_home = main.data_dir / "homes" / f"{user_of(url)}-default"
    assert (first_home / "secret.txt").read_text() == "only mine"
    other = ready_of(await build_events(main.url, "git", git_spec(main_repo)))
    try:
        paths = [
            str(first_home / "secret.txt"),
            f"/home/{first_home.name}/secret.txt",
            f"/home/{user_of(url)}/secret.txt",
            f"/home/jovyan/../{first_home.name}/secret.txt",
            "/proc/1/root" + str(first_home / "secret.txt"),
        ]
        snoop = SNOOP.replace("PATHS", repr(paths))
        seen = json.loads(await run_code(other["url"], other["token"], snoop))
        assert seen["homes"] == ["jovyan"]
        for path in paths:
            assert seen[path] in ("FileNotFoundError", "PermissionError"), (path, seen[path])
        # and the first session's token does not open the second session
        assert (await fetch(f"{other['url']}api/status?token={token}")).code == 403
    finally:
        await end_session(main, other)
        await end_session(main, ready)
    assert not first_home.exists()


@module_loop
async def test_cached_launches_do_not_build(main: ServeProcess, main_repo: Path) -> None:
    # whatever ran before, this launch leaves the environment built
    ready_of(await build_events(main.url, "git", git_spec(main_repo)))
    again = await build_events(main.url, "git", git_spec(main_repo))
    ready = ready_of(again)
    try:
        assert "building" not in again.phases
        assert again.of("built")[0]["cached"] is True
    finally:
        await end_session(main, ready)
    assert collapsed(again.phases) == ["fetching", "built", "launching", "ready"]

    # a commit that changes only the notebook: no build, the session has the new notebook
    commit(main_repo, {"index.ipynb": notebook("print('new cell')")}, message="notebook only")
    sha = head(main_repo)
    changed = await build_events(main.url, "git", git_spec(main_repo))
    ready = ready_of(changed)
    try:
        assert "building" not in changed.phases
        built = changed.of("built")[0]
        assert built["cached"] is True
        assert built["imageName"] == ready["image"]
        assert ready["binder_persistent_request"].endswith(f"/{sha}")
        contents = await fetch(
            f"{ready['url']}api/contents/index.ipynb", headers=_auth(ready["token"])
        )
        assert contents.code == 200
        cells = json.loads(contents.body)["content"]["cells"]
        assert [cell["source"] for cell in cells] == ["print('new cell')"]
    finally:
        await end_session(main, ready)
    commit(main_repo, {"index.ipynb": notebook("print(6*7)")}, message="back")


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


@module_loop
async def test_concurrent_launches_share_one_build(main: ServeProcess, repos: Path) -> None:
    repo = make_repo(
        repos / "crowded",
        {"requirements.txt": "six==1.15.0\n", "index.ipynb": notebook("1")},
    )
    streams = await asyncio.gather(
        *(build_events(main.url, "git", git_spec(repo)) for _ in range(5))
    )
    readies = [ready_of(stream) for stream in streams]
    try:
        # one stream ran the build; the four others joined it (and saw its log)
        builders = [s for s in streams if "building" in s.phases and "waiting" not in s.phases]
        joiners = [s for s in streams if "waiting" in s.phases]
        assert len(builders) == 1, [collapsed(s.phases) for s in streams]
        assert len(joiners) == 4, [collapsed(s.phases) for s in streams]
        for stream in joiners:
            assert stream.of("waiting")[0]["message"].startswith("Joining a build")
            assert stream.phases.index("waiting") < stream.phases.index("built")
        images = {ready["image"] for ready in readies}
        assert len(images) == 1
        assert len({ready["url"] for ready in readies}) == 5
        assert len({ready["token"] for ready in readies}) == 5
        for ready in readies:
            status = await fetch(f"{ready['url']}api/status?token={ready['token']}")
            assert status.code == 200
    finally:
        for ready in readies:
            await end_session(main, ready)
    listing = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "binderbox", "envs", "list", "--data-dir", str(main.data_dir)),
        stdout=asyncio.subprocess.PIPE,
        cwd=repos,
    )
    stdout, _ = await listing.communicate()
    assert listing.returncode == 0
    lines = [line for line in stdout.decode().splitlines() if "crowded" in line]
    assert len(lines) == 1, stdout.decode()
    assert lines[0].split()[0] == images.pop()


@module_loop
async def test_a_session_whose_server_does_not_answer_shows_the_ended_page(
    main: ServeProcess,
) -> None:
    # what the proxy holds between a server's death and the hub removing its route: a
    # route to a port nothing answers on; the proxy's error target is the web app
    token = (main.data_dir / "hub" / "proxy_token").read_text().strip()
    proxy_api = HubClient(f"http://127.0.0.1:{main.ports['api']}/api/", token)
    target = {"target": f"http://127.0.0.1:{free_port()}"}
    await proxy_api.request("POST", "routes/user/gone-server", body=target)
    try:
        page = await fetch(f"{main.url}user/gone-server/lab", headers={"Accept": "text/html"})
        hub = await fetch(f"{main.url}user/gone-server/api/status")
    finally:
        await proxy_api.request("DELETE", "routes/user/gone-server")
    assert page.code == 503
    assert "This session has ended" in page.body.decode()
    assert "Your server appears to be down" not in page.body.decode()  # JupyterHub's page
    assert hub.code == 503
    gone = await fetch(f"{main.url}user/gone-server/lab", headers={"Accept": "text/html"})
    assert gone.code == 404  # no route any more: the web app answers for it directly
    assert "This session has ended" in gone.body.decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


@module_loop
async def test_metrics_and_health(
    main: ServeProcess, main_repo: Path, first_launch: Stream
) -> None:
    assert "building" in first_launch.phases  # this process built main_repo's environment
    ready = ready_of(await build_events(main.url, "git", git_spec(main_repo)))
    await end_session(main, ready)
    text = (await fetch(f"{main.url}metrics")).body.decode()
    repo_url = f"file://{main_repo}"
    launches = metric(text, "binderhub_launch_count_total", status="success", repo=repo_url)
    assert launches >= 2
    assert metric(text, "binderhub_build_count_total", status="success", repo=repo_url) == 1
    assert metric(text, "binderhub_build_count_total", status="failure", repo=repo_url) == 0
    assert "binderhub_launch_time_seconds_bucket" in text

    health = await fetch(f"{main.url}health")
    assert health.code == 200, health.body
    body = json.loads(health.body)
    assert body["ok"] is True
    checks = {check["service"]: check for check in body["checks"]}
    for service in ("Store", "JupyterHub API", "Proxy"):
        assert checks[service]["ok"] is True, checks


# -- strict: failures and culling ------------------------------------------------------


@module_loop
async def test_failures_are_plain_events_with_status(strict: ServeProcess, repos: Path) -> None:
    repo = make_repo(repos / "quota-repo", {"requirements.txt": REQUIREMENTS, "a.ipynb": "{}"})
    first = ready_of(await build_events(strict.url, "git", git_spec(repo)))
    try:
        over = failed_of(await build_events(strict.url, "git", git_spec(repo)))
        assert over["status_code"] == 429
        assert over["message"] == f"Too many users running file://{repo}! Try again soon."
    finally:
        await end_session(strict, first)
    # the quota counts running sessions: with the first one gone, launching works again
    again = ready_of(await build_events(strict.url, "git", git_spec(repo)))
    await end_session(strict, again)

    banned = make_repo(repos / "banned-repo", {"requirements.txt": REQUIREMENTS})
    refused_stream = await build_events(strict.url, "git", git_spec(banned))
    refused = failed_of(refused_stream)
    assert refused["status_code"] == 403
    assert refused_stream.phases == ["failed"]  # refused before anything is fetched

    unknown = failed_of(await build_events(strict.url, "nope", "someone/something/HEAD"))
    assert unknown["status_code"] == 404
    assert "nope" in unknown["message"]

    malformed = failed_of(await build_events(strict.url, "gh", "just-one-part"))
    assert malformed["status_code"] == 400
    assert "gh/<owner>/<repo>/<ref>" in malformed["message"]

    missing = failed_of(await build_events(strict.url, "git", git_spec(repo, "no-such-branch")))
    assert missing["status_code"] == 404
    assert "no-such-branch" in missing["message"]
    nowhere = failed_of(await build_events(strict.url, "git", git_spec(repos / "nowhere")))
    assert nowhere["status_code"] == 404
    assert "Check the URL" in nowhere["message"]

    broken = make_repo(
        repos / "broken-repo",
        {"requirements.txt": "binderbox-no-such-package-xyz==1.0\n", "a.ipynb": "{}"},
    )
    failed = await build_events(strict.url, "git", git_spec(broken))
    assert failed_of(failed)["status_code"] == 500
    assert "binderbox-no-such-package-xyz" in failed.last["message"]
    assert "building" in failed.phases
    envs = [p for p in (strict.data_dir / "store" / "envs").iterdir() if p.is_dir()]
    assert len(envs) == 1  # the quota repository's, nothing half-built


@module_loop
async def test_idle_session_is_culled_and_its_home_removed(
    strict: ServeProcess, repos: Path
) -> None:
    repo = make_repo(repos / "idle-repo", {"requirements.txt": REQUIREMENTS, "b.ipynb": "{}"})
    ready = ready_of(await build_events(strict.url, "git", git_spec(repo)))
    home = strict.data_dir / "homes" / f"{user_of(ready['url'])}-default"
    assert home.is_dir()
    try:
        # the culler stops the server (its home goes with it), then deletes the user
        async with asyncio.timeout(120):
            while home.exists() or user_of(ready["url"]) in await hub_users(strict):  # noqa: ASYNC110
                await asyncio.sleep(0.5)
        gone = await fetch(f"{ready['url']}api/status?token={ready['token']}")
        assert gone.code != 200
    finally:
        await strict.astop_sessions()


async def hub_users(serve: ServeProcess) -> set[str]:
    """The names of the hub's users (asked with binderbox's service token)."""
    response = await fetch(serve.hub_api_url + "users", headers=_auth(serve.api_token))
    return {user["name"] for user in json.loads(response.body)}


@module_loop
async def test_health_is_503_when_the_hub_is_down(strict: ServeProcess) -> None:
    await strict.astop_sessions()
    assert (await fetch(f"{strict.url}health")).code == 200
    pid = int((strict.data_dir / "hub" / "jupyterhub.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(30):
        while (health := await fetch(f"{strict.url}health")).code == 200:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    assert health.code == 503
    checks = {check["service"]: check for check in json.loads(health.body)["checks"]}
    assert checks["JupyterHub API"]["ok"] is False
    assert checks["Store"]["ok"] is True
    # restarts are off here: the watcher says so once, in plain words
    not_again = (
        "The hub exited with signal 9 (SIGKILL); it is not started again "
        "(ChildWatcher.max_restarts = 0).  Restart binderbox."
    )
    async with asyncio.timeout(30):
        while not_again not in strict.output():  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    assert (await fetch(f"{strict.url}health")).code == 503


# -- main again: restart (last: it restarts the module's service) -------------------------


@module_loop
async def test_restart_keeps_running_sessions(main: ServeProcess, main_repo: Path) -> None:
    ready = ready_of(await build_events(main.url, "git", git_spec(main_repo)))
    url, token = ready["url"], ready["token"]
    kernel = await start_kernel(url, token)
    assert await execute(url, token, kernel, "answer = 6 * 7\nprint(answer)") == "42\n"

    assert main.stop(signal.SIGHUP) == 0  # SIGHUP: the sessions are kept
    assert "session(s) running for a restart" in main.output()
    with pytest.raises(OSError):  # the proxy is gone with the service
        await AsyncHTTPClient().fetch(f"{url}api/status?token={token}", request_timeout=5)
    main.start()
    try:
        status = await fetch(f"{url}api/status?token={token}")
        assert status.code == 200, status.body
        # the same kernel, with its state, answers through the new proxy
        assert await execute(url, token, kernel, "print(answer + 1)") == "43\n"
        # and the restarted service launches new sessions
        fresh = ready_of(await build_events(main.url, "git", git_spec(main_repo)))
        assert fresh.get("url") != url
        await end_session(main, fresh)
    finally:
        await end_session(main, ready)


async def launched(serve: ServeProcess, repo: Path) -> tuple[str, int]:
    """Launch ``repo``: the session's hub user and its supervisor's pid."""
    ready = ready_of(await build_events(serve.url, "git", git_spec(repo)))
    name = user_of(ready["url"])
    client = HubClient(serve.hub_api_url, serve.api_token)
    return name, int((await client.get_user(name))["servers"][""]["state"]["pid"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_sigterm_and_sigint_end_every_session_with_the_service(
    tmp_path: Path, main_repo: Path, sig: signal.Signals
) -> None:
    serve = ServeProcess(tmp_path / "serve-term", tmp_path / "serve-term" / "data")
    serve.start()
    try:
        name, supervisor = await launched(serve, main_repo)
        home = serve.data_dir / "homes" / f"{name}-default"
        assert home.is_dir() and Path(f"/proc/{supervisor}").exists()
    finally:
        status = serve.stop(sig)
    assert status == 0, serve.output()[-3000:]
    assert "stopping: ending every session" in serve.output()
    assert "stopping: stopped 1 session(s)" in serve.output()  # says what it did
    assert "binderbox stopped" in serve.output()
    assert not Path(f"/proc/{supervisor}").exists()  # its sandbox ended with the service
    assert not home.exists()


async def test_kept_sessions_end_themselves_when_no_service_comes_back(
    tmp_path: Path, main_repo: Path
) -> None:
    config = "c.ManagedHub.spawner_config = {'orphan_timeout': 6}\n"
    serve = ServeProcess(tmp_path / "serve-hup", tmp_path / "serve-hup" / "data", config)
    serve.start()
    try:
        name, supervisor = await launched(serve, main_repo)
    finally:
        status = serve.stop(signal.SIGHUP)  # the sessions are kept for a restart...
    assert status == 0, serve.output()[-3000:]
    assert "stopping: kept 1 session(s) running for a restart" in serve.output()
    assert Path(f"/proc/{supervisor}").exists()
    for _ in range(600):  # ...that never comes: bounded wait, about 60 s at most
        if not Path(f"/proc/{supervisor}").exists():
            break
        await asyncio.sleep(0.1)
    assert not Path(f"/proc/{supervisor}").exists()
    log = (serve.data_dir / "logs" / "sessions" / f"{name}-default.log").read_text()
    assert "the service has been gone for 6 s" in log


async def test_a_session_the_hub_lost_is_stopped_and_tracked_ones_are_not(
    tmp_path: Path, main_repo: Path
) -> None:
    """A supervisor the hub has no record of (its hub died while it started) is
    stopped after a grace period; the sessions the hub knows run on."""
    config = "c.UntrackedSessions.interval = 1\nc.UntrackedSessions.grace = 2\n"
    serve = ServeProcess(tmp_path / "serve-lost", tmp_path / "serve-lost" / "data", config)
    serve.start()
    lost = None
    try:
        _, tracked = await launched(serve, main_repo)
        lock = serve.data_dir / "service.lock"
        supervise = [sys.executable, "-m", "binderbox.runtime.supervise"]
        options = ["--service-lock", str(lock), "--orphan-timeout", "600"]
        lost = await asyncio.create_subprocess_exec(
            *supervise, *options, "--", "sleep", "600", start_new_session=True
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lost.wait(), 60)  # bounded
        assert lost.returncode is not None, "the lost session was not stopped"
        assert Path(f"/proc/{tracked}").exists()  # the hub's own session runs on
        assert "the hub has no record of it" in serve.output()
    finally:
        if lost is not None and lost.returncode is None:
            lost.kill()
            await lost.wait()
        serve.stop()
