"""Limits on what untrusted code can consume, against real components.

Builds go through the REAL pipeline (``LaunchPipeline`` as ``/build`` runs it, real
git repositories, real uv installs in bubblewrap under the supervisor); sessions
are REAL sandboxed servers of a REAL hub and proxy, their code run through the
kernel API as a visitor's notebook runs it.  Each hostile repository or cell must
end as a plain ``failed`` event, a failed fork or a stopped session, with nothing
of it left behind and the service and other sessions unaffected.

Builds here install no session packages (an environment with pip only): what is
tested is the sandbox's limits, not the resolver.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
from kernels import execute, run_code, start_kernel
from repos import make_repo
from session_helpers import launcher_for, new_session, running_hub, user_of
from testcache import CACHE as TEST_CACHE

from binderbox.app import BinderboxApp
from binderbox.builders import run_in_env
from binderbox.events import Building, Built, Event, Failed, Waiting
from binderbox.hub import ManagedHub
from binderbox.pipeline import LaunchPipeline, LaunchRequest
from binderbox.runtime.host import SandboxHost, Step
from binderbox.runtime.layout import base_sandbox
from binderbox.runtime.limits import limits_status
from binderbox.serve import Service
from binderbox.sessions.hubclient import HubClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
module_loop = pytest.mark.asyncio(loop_scope="module")

UV_CACHE = TEST_CACHE / "uv"


def make_pipeline(data: Path, **config: dict[str, Any]) -> LaunchPipeline:
    """The service's pipeline on ``data``; ``config``: {class name: {trait: value}}."""
    app = BinderboxApp(data_dir=str(data))
    app.config.PythonBuilder.cache_dir = str(UV_CACHE)
    app.config.PythonBuilder.session_packages = []
    app.config.PythonBuilder.jupyterhub_version = ""
    for section, traits in config.items():
        for name, value in traits.items():
            app.config[section][name] = value
    return app.make_pipeline(allow_local=True)


@contextlib.asynccontextmanager
async def pipeline_on(data: Path, **config: dict[str, Any]) -> AsyncIterator[LaunchPipeline]:
    UV_CACHE.mkdir(parents=True, exist_ok=True)
    made = make_pipeline(data, **config)
    try:
        yield made
    finally:
        await made.finisher.aclose()
        await made.store.aclose()


async def build(pipeline: LaunchPipeline, repo: Path) -> list[Event]:
    request = LaunchRequest(provider="", spec=str(repo), build_only=True)
    return [event async for event in pipeline.launch(request)]


def failed(events: list[Event]) -> Failed:
    last = events[-1]
    assert isinstance(last, Failed), f"expected failed, got {last.to_wire()}"
    assert "Traceback" not in last.message
    return last


def assert_nothing_left(pipeline: LaunchPipeline) -> None:
    """No environment, no temporary tree, no repository copy of a failed build."""
    assert pipeline.store.list() == []
    root = Path(pipeline.store.root)
    for sub in ("envs", "tmp"):
        assert not (root / sub).exists() or not any((root / sub).iterdir()), sub
    assert not any(Path(pipeline.work_dir).iterdir())


def lines(events: list[Event]) -> list[str]:
    return [event.message for event in events if isinstance(event, Building)]


# -- builds ---------------------------------------------------------------------------

MEMORY_HOG = """#!/bin/bash
echo "allocating"
/srv/env/bin/python -c "held = b'x' * (2 << 30); print('allocated', len(held))"
"""


async def test_a_memory_hog_in_postbuild_fails_plainly(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "hog", {"postBuild": MEMORY_HOG}, executable=("postBuild",))
    config = {"SandboxHost": {"build_mem_limit": "300M"}}
    async with pipeline_on(tmp_path / "data", **config) as pipeline:
        events = await build(pipeline, repo)
        end = failed(events)
        assert end.reason == "build_memory", end.to_wire()
        assert end.message.startswith(
            "postBuild ran out of memory (this service allows a build 300M)."
        )
        assert "allocating" in lines(events)
        assert not [line for line in lines(events) if line.startswith("allocated")]
        assert_nothing_left(pipeline)


#: writes 10 MiB files into the environment, up to 1 GiB, then waits: only a limit
#: enforced while it runs stops it before the build's time limit does
DISK_FILLER = """#!/bin/bash
for i in $(seq 1 100); do
    head -c 10485760 /dev/zero > "$NB_PYTHON_PREFIX/filler-$i"
    echo "wrote $i"
done
sleep 600
"""


#: the same, deeper in the environment than a path can name (PATH_MAX): a walk by
#: path names would not see it
DEEP_FILLER = """#!/bin/bash
/srv/env/bin/python - <<'DEEP'
import os
here = os.open(os.environ["NB_PYTHON_PREFIX"], os.O_RDONLY)
for _ in range(20):
    os.mkdir("d" * 250, dir_fd=here)
    here = os.open("d" * 250, os.O_RDONLY, dir_fd=here)
for i in range(1, 101):
    out = os.open(f"filler-{i}", os.O_WRONLY | os.O_CREAT, dir_fd=here)
    os.write(out, bytes(10 << 20))
    os.close(out)
    print("wrote", i, flush=True)
DEEP
sleep 600
"""


#: empty files: hardly any bytes, but inodes
FILE_FILLER = """#!/bin/bash
mkdir "$NB_PYTHON_PREFIX/many"
for i in $(seq 1 100); do
    (cd "$NB_PYTHON_PREFIX/many" && touch $(seq -f "f$i-%g" 1 1000))
    echo "wrote $i"
done
sleep 600
"""
BYTES_PAST = "the environment grew past this service's limit of 100 MiB."
FILES_PAST = "the environment holds more files than this service allows (20000)."


@pytest.mark.parametrize(
    ("script", "setting", "past"),
    [
        (DISK_FILLER, {"env_size_limit": "100M"}, BYTES_PAST),
        (DEEP_FILLER, {"env_size_limit": "100M"}, BYTES_PAST),
        (FILE_FILLER, {"files_limit": 20000}, FILES_PAST),
    ],
    ids=["bytes", "bytes-deeper-than-a-path", "files"],
)
async def test_a_postbuild_writing_past_an_environment_limit_fails_plainly(
    tmp_path: Path, script: str, setting: dict[str, Any], past: str
) -> None:
    repo = make_repo(tmp_path / "filler", {"postBuild": script}, executable=("postBuild",))
    config: dict[str, dict[str, Any]] = {
        "SandboxHost": setting,
        "LaunchPipeline": {"build_timeout": 300},
    }
    async with pipeline_on(tmp_path / "data", **config) as pipeline:
        events = await build(pipeline, repo)
        end = failed(events)
        assert end.reason == "env_size", end.to_wire()
        assert end.message.startswith(f"The build was stopped: {past}")
        written = [int(line.split()[1]) for line in lines(events) if line.startswith("wrote ")]
        assert written and max(written) < 100  # stopped while it wrote, not at its end
        assert_nothing_left(pipeline)


#: a package at the repository root whose setup.py leaves a child holding its output:
#: uv reads that output to its end, so without the supervisor reaping orphans the
#: build waits for the child (a day) -- the build's time limit here is 300 s
HOLDING_SETUP_PY = """\
import subprocess
from setuptools import setup

subprocess.Popen(["sleep", "86399"])  # inherits stdout and stderr: uv's pipes
setup(name="holder", version="0.1", py_modules=["holder"])
"""


def sleepers() -> list[int]:
    """Processes on this machine running this test's ``sleep 86399``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(entry.path, "cmdline").read_bytes() == b"sleep\x0086399\x00":
                    found.append(int(entry.name))
    return found


async def test_a_setup_py_child_holding_the_output_cannot_hold_the_build_open(
    tmp_path: Path,
) -> None:
    files = {"setup.py": HOLDING_SETUP_PY, "holder.py": "ANSWER = 42\n"}
    repo = make_repo(tmp_path / "holder", files)
    config = {"LaunchPipeline": {"build_timeout": 300}}
    async with pipeline_on(tmp_path / "data", **config) as pipeline:
        events = await build(pipeline, repo)
        end = events[-1]
        assert isinstance(end, Built), end.to_wire()
        assert any("left running by a finished one" in line for line in lines(events))
        check = run_in_env(Path(end.path), ["python", "-c", "import holder; print(holder.ANSWER)"])
        assert check.stdout.strip() == "42", check.stderr
    assert sleepers() == []


async def test_a_build_step_closes_only_its_own_descriptors(tmp_path: Path) -> None:
    """Builds run side by side in one process: a step that closed a descriptor number
    twice closed what another build had opened under it meanwhile (its lock; once, the
    event loop's own descriptors: the service hung)."""
    host = SandboxHost()
    lease = host.lease_uid()
    step = Step()
    try:
        uid = lease.value if lease is not None else None
        async with host.run(base_sandbox([], None), ["/bin/true"], uid=uid, step=step) as proc:
            mine = (tmp_path / "opened-meanwhile").open("w")  # the lowest free number
            assert await proc.wait() == 0
        mine.write("still open\n")
        mine.close()  # flushes: EBADF had the step closed it
    finally:
        if lease is not None:
            lease.release()
    assert (tmp_path / "opened-meanwhile").read_text() == "still open\n"


def gated_postbuild(name: str) -> str:
    """A postBuild that waits (up to 120 s) for a file ``release`` in its home."""
    return (
        f"#!/bin/bash\necho 'build {name} running'\n"
        "for i in $(seq 1 1200); do [ -e release ] && exit 0; sleep 0.1; done\nexit 1\n"
    )


async def release_the_running_build(pipeline: LaunchPipeline) -> None:
    """Let the one gated postBuild running (its home is the only repository copy) end."""
    work = Path(pipeline.work_dir)
    async with asyncio.timeout(300):
        while not (homes := list(work.glob("*/content/postBuild"))):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    (homes[0].parent / "release").touch()


async def until_event(stream: AsyncIterator[Event], seen: list[Event], kind: type[Event]) -> Event:
    """Read ``stream`` into ``seen`` up to an event of type ``kind`` (or the last one)."""
    async with asyncio.timeout(300):
        async for event in stream:
            seen.append(event)
            if isinstance(event, kind) or event.terminal:
                return event
    raise AssertionError(f"the stream ended before {kind.__name__}: {seen}")


def ahead(event: Event) -> int:
    """How many builds a waiting event says are ahead."""
    found = re.fullmatch(
        r"Waiting for a build slot: (\d+) builds? ahead of this one "
        r"\(this service runs 1 at once\)\.",
        event.message,
    )
    assert isinstance(event, Waiting) and found, event.to_wire()
    return int(found.group(1))


async def test_builds_past_the_cap_wait_with_waiting_events(tmp_path: Path) -> None:
    names = ("first", "leaver", "second")
    repos = {
        name: make_repo(
            tmp_path / name, {"postBuild": gated_postbuild(name)}, executable=("postBuild",)
        )
        for name in names
    }
    async with pipeline_on(tmp_path / "data", Store={"concurrent_builds": 1}) as pipeline:
        first, leaver, second = (
            cast(
                AsyncGenerator[Event, None],  # what launch returns: the web layer closes it
                pipeline.launch(LaunchRequest(provider="", spec=str(repos[name]), build_only=True)),
            )
            for name in names
        )
        seen: dict[str, list[Event]] = {name: [] for name in names}
        await until_event(first, seen["first"], Building)  # a free slot: no waiting
        assert ahead(await until_event(leaver, seen["leaver"], Waiting)) == 1
        assert ahead(await until_event(second, seen["second"], Waiting)) == 2
        await leaver.aclose()  # that visitor leaves the queue: its place is freed
        assert ahead(await until_event(second, seen["second"], Waiting)) == 1
        assert (pipeline.store.queue.running, pipeline.store.queue.waiting) == (1, 1)

        await release_the_running_build(pipeline)
        seen["first"] += [event async for event in first]
        await until_event(second, seen["second"], Building)  # its turn
        await release_the_running_build(pipeline)
        seen["second"] += [event async for event in second]

    assert not [e for e in seen["first"] if isinstance(e, Waiting)]
    assert isinstance(seen["first"][-1], Built) and isinstance(seen["second"][-1], Built)
    waited = [ahead(e) for e in seen["second"] if isinstance(e, Waiting)]
    assert waited == [2, 1]  # told again as the queue moved
    assert "build second running" in lines(seen["second"])
    assert len(pipeline.store.list()) == 2  # the build whose visitor left never ran


# -- sessions -------------------------------------------------------------------------

#: the home limit of this module's sessions (the default is 2G)
HOME_LIMIT = "20M"


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("content")
    (root / "README.md").write_text("# limits\n")
    return root


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ManagedHub]:
    """A real hub whose sessions have a small home limit (and are polled every second,
    so a stopped one is noticed soon); the other limits at their defaults."""
    data = tmp_path_factory.mktemp("data")
    async with running_hub(
        data, home_limit=HOME_LIMIT, log_limit=LOG_LIMIT, poll_interval=1
    ) as managed:
        yield managed


def home_of(hub: ManagedHub, ready: Any) -> Path:
    return Path(hub.data_dir) / "homes" / f"{user_of(ready)}-default"


#: a fork bomb (every process forks on) that stops itself after 10 s: forks past the
#: session's pids limit fail instead of taking the machine
FORK_BOMB = """
import os, time
kernel, refused = os.getpid(), 0
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        if os.fork() == 0:
            continue
    except BlockingIOError:
        refused += 1
        time.sleep(0.01)
if os.getpid() != kernel:
    os._exit(0)
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
print("forks refused:", refused)
"""


@module_loop
async def test_a_fork_bomb_in_a_session_fails_to_fork(hub: ManagedHub, content: Path) -> None:
    bomber = await new_session(hub, content, "bomber")
    other = await new_session(hub, content, "bystander")

    async def meanwhile() -> str:
        await asyncio.sleep(3)  # the bomb is at the session's limit by then
        return await run_code(other.url, other.token, "print(6 * 7)")

    bombed, beside = await asyncio.gather(
        run_code(bomber.url, bomber.token, FORK_BOMB), meanwhile()
    )
    refused = re.fullmatch(r"forks refused: (\d+)\n", bombed)
    assert refused and int(refused.group(1)) > 0, bombed
    assert beside == "42\n"  # another session kept working while the bomb ran
    assert await run_code(bomber.url, bomber.token, "print('still here')") == "still here\n"
    after = await new_session(hub, content, "after-bomb")  # the service too
    assert await run_code(after.url, after.token, "print(1 + 1)") == "2\n"


#: a session's log, at most (the hub fixture's sessions)
LOG_LIMIT = "1M"
#: 12.5 MiB written straight to the output the kernel was started with (the server's:
#: the session's log), the one ipykernel keeps aside when it captures fd 1
FLOOD_THE_LOG = """
import os, sys
log = sys.stdout._original_stdstream_copy
for _ in range(200):
    os.write(log, b"x" * 65536)
print("flooded")
"""


async def test_a_session_flooding_its_log_keeps_only_so_much(
    hub: ManagedHub, content: Path
) -> None:
    ready = await new_session(hub, content, "chatterbox")
    assert await run_code(ready.url, ready.token, FLOOD_THE_LOG) == "flooded\n"
    log = Path(hub.data_dir) / "logs" / "sessions" / f"{user_of(ready)}-default.log"
    text = log.read_bytes()
    assert len(text) < 1.1 * (1 << 20), len(text)
    assert b"the sandbox's output passed 1048576 bytes: the rest is not kept" in text
    assert await run_code(ready.url, ready.token, "print(2 + 2)") == "4\n"  # still works


#: writes 40 MiB into the home (in five-MiB files) from a thread, so the cell returns
WRITE_PAST_HOME = """
import os, threading
def write():
    for i in range(8):
        with open(os.path.expanduser(f"~/big-{i}"), "wb") as out:
            out.write(b"\\1" * (5 << 20))
threading.Thread(target=write).start()
print("writing")
"""


@module_loop
async def test_a_session_writing_past_its_home_limit_is_stopped_and_its_home_removed(
    hub: ManagedHub, content: Path
) -> None:
    writer = await new_session(hub, content, "writer")
    other = await new_session(hub, content, "neighbour")
    assert home_of(hub, writer).is_dir() and home_of(hub, other).is_dir()
    kernel = await start_kernel(writer.url, writer.token)
    assert await execute(writer.url, writer.token, kernel, WRITE_PAST_HOME) == "writing\n"

    await stopped_and_removed(hub, writer)
    assert await run_code(other.url, other.token, "print('unaffected')") == "unaffected\n"
    assert home_of(hub, other).is_dir()


#: takes every process the session may have (the forks wait five minutes), then
#: writes past the home limit: the supervisor must still measure (it runs ``du``)
WRITE_AT_THE_PIDS_LIMIT = """
import os, time
kernel, deadline = os.getpid(), time.monotonic() + 300
while True:
    try:
        if os.fork() == 0:
            continue
    except BlockingIOError:
        break
if os.getpid() != kernel:
    time.sleep(max(0.0, deadline - time.monotonic()))
    os._exit(0)
for i in range(8):
    with open(os.path.expanduser(f"~/big-{i}"), "wb") as out:
        out.write(b"\\1" * (5 << 20))
print("written")
"""


def cgroups_of(ready: Any) -> list[Path]:
    """The session's cgroups (none where limits are advisory)."""
    return list(Path("/sys/fs/cgroup").glob(f"*/binderbox/{user_of(ready)}-default"))


async def stopped_and_removed(hub: ManagedHub, ready: Any) -> None:
    """Wait (bounded) until the hub has no server for ``ready``'s user and its home
    and cgroups are gone; the session's log says the supervisor stopped it for its size."""
    client = HubClient(hub.hub_api_url, hub.api_token)
    async with asyncio.timeout(120):
        while (await client.get_user(user_of(ready)))["servers"]:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        while home_of(hub, ready).exists() or cgroups_of(ready):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    log = Path(hub.data_dir) / "logs" / "sessions" / f"{user_of(ready)}-default.log"
    assert "stopping the sandbox: a folder it writes holds" in log.read_text()


@module_loop
async def test_a_session_at_its_pids_limit_is_still_held_to_its_home_limit(
    hub: ManagedHub, content: Path
) -> None:
    writer = await new_session(hub, content, "crowded-writer")
    assert cgroups_of(writer) or limits_status()["mode"] == "advisory"
    kernel = await start_kernel(writer.url, writer.token)
    cell = asyncio.create_task(execute(writer.url, writer.token, kernel, WRITE_AT_THE_PIDS_LIMIT))
    try:
        await stopped_and_removed(hub, writer)
    finally:
        cell.cancel()
        with contextlib.suppress(BaseException):
            await cell  # the session died under it


@module_loop
async def test_health_says_how_each_limit_is_enforced(hub: ManagedHub, tmp_path: Path) -> None:
    async with pipeline_on(tmp_path / "data") as pipeline:
        service = Service(pipeline, hub, launcher_for(hub), SandboxHost())
        checks = {check["service"]: check for check in await service.health()}
    cgroups = limits_status()
    for name in ("Build limits", "Session limits"):
        check = checks[name]
        assert check["ok"] is True and check["cgroups"] == cgroups
        for kind in ("memory", "cpu", "pids"):
            how = cgroups["backend"] if cgroups[kind] else "advisory"
            assert check["limits"][kind]["enforced"] == how, (name, kind, check)
    build = checks["Build limits"]["limits"]
    assert build["memory"]["limit"] == "4 GiB" and build["pids"]["limit"] == 1024
    assert build["env_size"]["limit"] == "10 GiB"
    assert build["env_size"]["enforced"] == "measured"
    assert "no filesystem quota" in build["env_size"]["how"]
    session = checks["Session limits"]["limits"]
    assert session["pids"]["limit"] == 512 and session["memory"]["limit"] == "2 GiB"
    assert session["home"]["limit"] == "20 MiB" and session["home"]["enforced"] == "measured"
    assert "no filesystem quota" in session["home"]["how"]
    assert "every 15 s" in session["home"]["how"]
    builds = checks["Builds"]
    assert builds["concurrent_builds"] == 2 and builds["timeout_seconds"] == 900
