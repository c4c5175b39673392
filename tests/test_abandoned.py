"""Launches nobody waits for cost nothing: the real ``binderbox serve``, hub, proxy, sessions.

One service runs for the module (``launches_per_address = 3``).  Clients go
through the proxy's public port and leave at the points of
:data:`storm_helpers.LEAVE_POINTS`, from several loopback addresses (each one
a client address for the service: the proxy's ``X-Forwarded-For``).  What is
left is read from the hub's API and from ``/proc`` (session supervisors of
the service's data directory, so that sessions the hub lost count too),
polled in bounded loops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from repos import make_repo, notebook
from serve_helpers import ServeProcess, build_events, end_session, git_spec, running_serve
from storm_helpers import LEAVE_POINTS, held_at, leave_at, storm, until_clean

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
module_loop = pytest.mark.asyncio(loop_scope="module")

PER_ADDRESS = 3
#: a session that takes its time to start: its spawn stays pending
SLOW_START = '#!/bin/bash\nsleep 120\nexec "$@"\n'
#: a build that takes its time (its postBuild), so that a second visitor joins it
SLOW_POSTBUILD = "#!/bin/bash\nsleep 5\necho slow build done\n"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    config = f"c.SessionLauncher.launches_per_address = {PER_ADDRESS}\n"
    with running_serve(tmp_path_factory.mktemp("serve-abandoned"), extra_config=config) as s:
        yield s


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("repos")


def build_url(serve: ServeProcess, repo: Path) -> str:
    return f"{serve.url.rstrip('/')}/build/git/{git_spec(repo)}"


async def launch_once(serve: ServeProcess, repo: Path) -> dict[str, object]:
    """A whole launch (to ``ready``), then its session ended; the ``built`` event."""
    stream = await build_events(serve.url, "git", git_spec(repo))
    assert stream.last.get("phase") == "ready", stream.events[-5:]
    await end_session(serve, stream.last)
    return stream.of("built")[0]


def assert_plain_refusal(event: dict[str, object]) -> None:
    assert event["phase"] == "failed" and event["status_code"] == 429, event
    assert event["message"] == (
        "Too many launches from your address at the same time."
        " Wait until one is ready, then try again."
    )


@module_loop
async def test_a_disconnect_storm_leaves_no_session_and_no_user(
    service: ServeProcess, repos: Path
) -> None:
    repo = make_repo(
        repos / "stormy", {"requirements.txt": "six==1.16.0\n", "index.ipynb": notebook("1")}
    )
    await launch_once(service, repo)  # builds: the storm launches a cached environment
    sources = [f"127.0.0.{i}" for i in range(1, 11)]
    outcomes = await storm(build_url(service, repo), clients=200, at_once=20, sources=sources)
    endings = collections.Counter(o.ending for o in outcomes)
    # each client left where it meant to, or was refused (its address had 3 under way)
    failed = [(o.point, o.last) for o in outcomes if o.ending not in {*LEAVE_POINTS, "refused"}]
    assert set(endings) <= {*LEAVE_POINTS, "refused"}, (endings, failed)
    assert all(endings[point] for point in LEAVE_POINTS), endings
    for outcome in outcomes:
        if outcome.ending == "refused":
            assert_plain_refusal(outcome.last)
    left = await until_clean(service, within=30)
    assert left.clean, left
    # the service is none the worse
    assert (await launch_once(service, repo))["cached"] is True
    assert (await until_clean(service, within=30)).clean


@module_loop
async def test_launches_per_address_count_until_their_session_is_gone(
    service: ServeProcess, repos: Path
) -> None:
    repo = make_repo(
        repos / "sleepy",
        {"requirements.txt": "six==1.16.0\n", "start": SLOW_START, "index.ipynb": notebook("1")},
    )
    url = build_url(service, repo)
    crowded, other = "127.0.0.20", "127.0.0.21"
    async with contextlib.AsyncExitStack() as stack:
        held = [
            await stack.enter_async_context(held_at(url, "server starting", crowded))
            for _ in range(PER_ADDRESS)
        ]
        assert [h.ending for h in held] == ["server starting"] * PER_ADDRESS, held
        refused = await leave_at(url, "server starting", crowded)
        assert refused.ending == "refused", refused
        assert_plain_refusal(refused.last)
        assert "launching" in refused.phases  # past the build: it is the launches that count
        elsewhere = await leave_at(url, "server starting", other)
        assert elsewhere.ending == "server starting", elsewhere
    # the three have left: once their sessions are gone the address may launch again
    again = None
    for _ in range(60):  # the clean-ups take a second or two
        again = await leave_at(url, "server starting", crowded)
        if again.ending != "refused":
            break
        await asyncio.sleep(0.5)
    assert again is not None and again.ending == "server starting", again
    left = await until_clean(service, within=30)
    assert left.clean, left


@module_loop
async def test_a_build_whose_visitor_left_finishes_for_the_next_one(
    service: ServeProcess, repos: Path
) -> None:
    repo = make_repo(
        repos / "patient",
        {"requirements.txt": "six==1.16.0\n", "postBuild": SLOW_POSTBUILD},
        executable=("postBuild",),
    )
    url = build_url(service, repo)
    first = await leave_at(url, "building")
    assert first.ending == "building", first
    # the next visitor joins the build the first one started and left
    second = await build_events(service.url, "git", git_spec(repo))
    assert second.last.get("phase") == "ready", second.events[-5:]
    await end_session(service, second.last)
    assert second.of("waiting")[0]["message"].startswith("Joining a build"), second.phases
    assert any("slow build done" in e["message"] for e in second.of("building"))
    # and the one after finds it built
    built = await launch_once(service, repo)
    assert built["cached"] is True
    assert built["imageName"] == second.of("built")[0]["imageName"]
    assert (await until_clean(service, within=30)).clean
