"""``binderbox status`` and ``binderbox sessions`` against a real running service.

One ``binderbox serve`` (tests/serve_helpers.py) with its real hub and proxy;
the commands run as subprocesses, as an operator types them, naming the
service's data directory.  Also: the plain message where no service runs, and
what ``serve`` prints about its config file.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from repos import head, make_repo, notebook
from serve_helpers import ServeProcess, build_events, git_spec, running_serve, user_of

from binderbox.sessions.hubclient import HubAPIError, HubClient
from binderbox.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
module_loop = pytest.mark.asyncio(loop_scope="module")


def binderbox(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``binderbox ARGS --data-dir DATA`` as an operator runs it (no config file)."""
    return subprocess.run(
        [sys.executable, "-m", "binderbox", *args, "--data-dir", str(data)],
        cwd=data.parent,
        env={k: v for k, v in os.environ.items() if k != "BINDERBOX_DATA_DIR"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def status_json(serve: ServeProcess) -> dict[str, Any]:
    result = binderbox(serve.data_dir, "status", "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with running_serve(tmp_path_factory.mktemp("serve-ops")) as service:
        yield service


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = {"requirements.txt": "six==1.16.0\n", "index.ipynb": notebook("print(1)")}
    return make_repo(tmp_path_factory.mktemp("repos") / "ops-analysis", files)


async def launch(serve: ServeProcess, repo: Path) -> tuple[str, int]:
    """Launch ``repo`` anonymously: the session's hub user and its supervisor's pid."""
    stream = await build_events(serve.url, "git", git_spec(repo))
    assert stream.last.get("phase") == "ready", stream.events[-5:]
    name = user_of(stream.last["url"])
    user = await HubClient(serve.hub_api_url, serve.api_token).get_user(name)
    return name, int(user["servers"][""]["state"]["pid"])


async def gone(pid: int) -> bool:
    for _ in range(300):  # bounded: 30 s at most
        if not Path(f"/proc/{pid}").exists():
            return True
        await asyncio.sleep(0.1)
    return False


def test_serve_says_which_config_file_it_loaded(serve: ServeProcess) -> None:
    lines = serve.output().splitlines()
    config = serve.workdir.resolve() / "binderbox_config.py"
    assert f"config: {config}" in lines
    running = next(i for i, line in enumerate(lines) if line.startswith("binderbox is running"))
    assert lines.index(f"config: {config}") < running
    state = json.loads((serve.data_dir / "service.json").read_text())
    assert state["url"] == serve.url and state["pid"] == serve.proc.pid  # type: ignore[union-attr]


def test_status_of_a_service_without_sessions(serve: ServeProcess) -> None:
    result = binderbox(serve.data_dir, "status")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"service: running at {serve.url}" in out
    assert "hub: up (JupyterHub " in out and "proxy: up" in out
    assert "sessions: 0" in out
    report = status_json(serve)
    assert report["service"]["url"] == serve.url
    assert report["hub"]["up"] and report["proxy"]["up"]
    assert report["sessions"] == []
    assert report["datasets"] == {"datasets": 0, "bytes": 0}


@module_loop
async def test_status_and_list_show_a_launched_session(serve: ServeProcess, repo: Path) -> None:
    name, supervisor = await launch(serve, repo)
    report = status_json(serve)
    [session] = report["sessions"]
    assert session["name"] == name and session["user"] == name and session["server"] == ""
    assert session["ready"] and session["temporary"]
    assert repo.name in session["repo_url"]
    assert session["ref"] == head(repo)
    assert 0 <= session["age_seconds"] < 600
    assert session["memory_bytes"] > 1024 * 1024  # its Jupyter server's processes
    envs = Store(root=str(serve.data_dir / "store")).list()
    assert report["store"]["environments"] == len(envs) >= 1
    assert report["store"]["bytes"] == sum(e.size for e in envs) > 0
    assert "token" not in json.dumps(report["sessions"]).replace("temporary", "")

    plain = binderbox(serve.data_dir, "status").stdout
    assert "sessions: 1" in plain and name in plain and head(repo)[:12] in plain
    listed = binderbox(serve.data_dir, "sessions", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split()[0] == name and "1 sessions" in listed.stderr
    rows = json.loads(binderbox(serve.data_dir, "sessions", "list", "--json").stdout)
    assert [row["name"] for row in rows] == [name]

    stopped = binderbox(serve.data_dir, "sessions", "stop", name)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped {name}" in stopped.stderr
    with pytest.raises(HubAPIError) as err:  # the temporary user is gone
        await HubClient(serve.hub_api_url, serve.api_token).get_user(name)
    assert err.value.status == 404
    assert await gone(supervisor)
    assert status_json(serve)["sessions"] == []


def test_stopping_an_unknown_session_is_a_plain_message(serve: ServeProcess) -> None:
    for name in ("nobody", "nobody/server", "/x"):
        result = binderbox(serve.data_dir, "sessions", "stop", name)
        assert result.returncode == 1
        assert result.stderr.startswith(f"error: No session named {name!r}."), result.stderr
        assert "Traceback" not in result.stderr
    usage = binderbox(serve.data_dir, "sessions", "stop")
    assert usage.returncode == 2 and usage.stderr.startswith("usage: binderbox sessions")


@module_loop
async def test_stop_all_ends_every_session(serve: ServeProcess, repo: Path) -> None:
    first, first_pid = await launch(serve, repo)
    second, second_pid = await launch(serve, repo)
    assert first != second
    listed = binderbox(serve.data_dir, "sessions", "list").stdout.split("\n")
    assert sorted(line.split()[0] for line in listed if line) == sorted([first, second])
    result = binderbox(serve.data_dir, "sessions", "stop", "--all")
    assert result.returncode == 0, result.stderr
    assert await gone(first_pid) and await gone(second_pid)
    assert json.loads(binderbox(serve.data_dir, "sessions", "list", "--json").stdout) == []


@pytest.mark.parametrize(
    "args", [["status"], ["status", "--json"], ["sessions", "list"], ["sessions", "stop", "x"]]
)
def test_no_service_is_a_plain_message(tmp_path: Path, args: list[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # what a service that was killed leaves: its state file, but no lock held
    (data / "service.json").write_text('{"url": "http://127.0.0.1:9/"}\n')
    (data / "service.lock").touch()
    result = binderbox(data, *args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: No binderbox service is running with the data directory {data}. "
        "Start one with `binderbox serve`, or name its directory with --data-dir.\n"
    )


def test_a_token_that_cannot_be_read_is_a_plain_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    state = {"url": "http://127.0.0.1:9/", "hub_api_url": "http://127.0.0.1:9/hub/api/"}
    state |= {"proxy_api_url": "", "pid": os.getpid(), "hub": "managed"}
    (data / "service.json").write_text(json.dumps(state))
    fd = os.open(data / "service.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held as a service holds it; no hub/ folder
        result = binderbox(data, "sessions", "list")
    finally:
        os.close(fd)
    assert result.returncode == 1
    token = data / "hub" / "service_token"
    assert result.stderr.startswith(f"error: Cannot read the service's token {token}: ")
    assert "Run this command as the user the service runs as." in result.stderr
    assert "Traceback" not in result.stderr


def test_a_state_file_others_could_write_is_not_trusted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "hub").mkdir(parents=True)
    (data / "hub" / "service_token").write_text("the-service-token\n")
    state = {"url": "http://127.0.0.1:9/", "hub_api_url": "http://127.0.0.1:9/hub/api/"}
    state |= {"proxy_api_url": "", "pid": os.getpid(), "hub": "managed"}
    (data / "service.json").write_text(json.dumps(state))
    (data / "service.json").chmod(0o666)  # anyone could have pointed it elsewhere
    fd = os.open(data / "service.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = binderbox(data, "sessions", "list")
    finally:
        os.close(fd)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"error: {data / 'service.json'} is writable by other users than the service's: not used."
    )
    assert "the-service-token" not in result.stdout + result.stderr
