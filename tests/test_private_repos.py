"""Private repositories: fetched with the logged-in visitor's own token, never served
to someone who could not read them.

A REAL git server on loopback that demands credentials (git's smart HTTP protocol
through ``git http-backend``, HTTP basic auth with a token as the password:
tests/fixtures_git.py ``GitHttpServer(tokens=...)``), REAL builds, and a REAL hub for
the launch.  The visitors are :class:`~binderbox.sessions.identity.Visitor` values as
the web layer makes them from a login.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from session_helpers import running_hub
from testcache import CACHE as TEST_CACHE

from binderbox.app import BinderboxApp
from binderbox.events import Built, Event, Failed, Ready
from binderbox.pipeline import LaunchPipeline, LaunchRequest
from binderbox.providers.gitutil import run_git, token_header
from binderbox.sessions import SessionLauncher
from binderbox.sessions.identity import Visitor
from tests.fixtures_git import GitHttpServer, commit_file, git

pytestmark = pytest.mark.timeout(600)
TOKEN = "tok-alice-0123456789"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitHttpServer]:
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", str(work))
    commit_file(work, "README.md", "private notes\n", "first")
    git("clone", "-q", "--bare", str(work), str(tmp_path / "served" / "o" / "priv.git"))
    served = GitHttpServer(tmp_path / "served", tokens={TOKEN})
    yield served
    served.close()


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[LaunchPipeline]:
    app = BinderboxApp(data_dir=str(tmp_path / "data"))
    app.config.PythonBuilder.cache_dir = str(TEST_CACHE / "uv")
    app.config.GitProvider.allow_private_hosts = True  # the server is on loopback
    made = app.make_pipeline(allow_local=False)
    yield made
    await made.finisher.aclose()


def alice(server: GitHttpServer) -> Visitor:
    return Visitor(name="alice", tokens={server.url.split("://")[1]: TOKEN})


def bob(server: GitHttpServer) -> Visitor:
    return Visitor(name="bob", tokens={server.url.split("://")[1]: "tok-bob-not-valid"})


def spec(server: GitHttpServer, ref: str = "main") -> str:
    return f"{quote(server.url + '/o/priv.git', safe='')}/{ref}"


async def run(pipeline: LaunchPipeline, spec: str, visitor: Visitor, **kw: object) -> list[Event]:
    request = LaunchRequest(provider="git", spec=spec, visitor=visitor, **kw)  # type: ignore[arg-type]
    return [event async for event in pipeline.launch(request)]


def messages(events: list[Event]) -> str:
    return "\n".join(str(event.to_wire()) for event in events)


async def test_a_private_repository_builds_with_the_visitors_own_token_only(
    pipeline: LaunchPipeline, server: GitHttpServer
) -> None:
    anonymous = await run(pipeline, spec(server), Visitor(), build_only=True)
    refused = anonymous[-1]
    assert isinstance(refused, Failed)
    assert "Could not reach" in refused.message and "public" in refused.message
    assert all(header == "" for header in server.authorizations)  # nothing sent anonymously
    wrong = (await run(pipeline, spec(server), bob(server), build_only=True))[-1]
    assert isinstance(wrong, Failed) and "your account may read" in wrong.message
    events = await run(pipeline, spec(server), alice(server), build_only=True)
    assert isinstance(events[-1], Built), messages(events)
    assert (Path(events[-1].path).parent).exists()
    everything = messages(events + anonymous + [wrong])
    assert TOKEN not in everything and base64.b64encode(TOKEN.encode()).decode() not in everything


async def test_a_cached_private_commit_is_not_served_to_others(
    pipeline: LaunchPipeline, server: GitHttpServer
) -> None:
    built = (await run(pipeline, spec(server), alice(server), build_only=True))[-1]
    assert isinstance(built, Built)
    sha = git("--git-dir", str(server.root / "o" / "priv.git"), "rev-parse", "main").strip()
    for visitor in (Visitor(), bob(server)):  # a commit named in full asks no ref of git
        refused = (await run(pipeline, spec(server, sha), visitor, build_only=True))[-1]
        assert isinstance(refused, Failed), refused.to_wire()
        assert "Could not reach" in refused.message
    again = (await run(pipeline, spec(server, sha), alice(server), build_only=True))[-1]
    assert isinstance(again, Built) and again.path == built.path


async def test_a_private_repository_launches_for_its_reader_and_never_for_others(
    pipeline: LaunchPipeline, server: GitHttpServer, tmp_path: Path
) -> None:
    async with running_hub(tmp_path / "hub") as hub:
        pipeline.launcher = SessionLauncher(hub_api_url=hub.hub_api_url, api_token=hub.api_token)
        events = await run(pipeline, spec(server), alice(server), launch_host=hub.public_url)
        assert isinstance(events[-1], Ready), messages(events)
        # its environment and content are cached now: others still get nothing of it,
        # by its branch or by its commit named in full (which asks git no ref)
        sha = git("--git-dir", str(server.root / "o" / "priv.git"), "rev-parse", "main").strip()
        for ref in ("main", sha):
            for visitor in (Visitor(), bob(server)):
                last = await run(pipeline, spec(server, ref), visitor, launch_host=hub.public_url)
                refused = last[-1]
                assert isinstance(refused, Failed), messages(last)
                assert "Could not reach" in refused.message
                assert not any(isinstance(event, Ready) for event in last)
        users = [user["name"] for user in await pipeline.launcher.hub.request("GET", "users")]
        assert "bob" not in users and len(users) == 1  # alice's session only
        alice_visitor = alice(server)
        for session in await pipeline.launcher.sessions_of(alice_visitor):
            await pipeline.launcher.stop_session(alice_visitor, session["name"])


async def test_a_token_reaches_git_through_its_environment_not_its_command_line() -> None:
    header = token_header("https://git.example.org", "x-access-token", TOKEN)
    result = await run_git(
        ["config", "--get-urlmatch", "http.extraHeader", "https://git.example.org/o/r.git"],
        config=header,
    )
    assert result.ok and TOKEN not in " ".join(result.args)
    assert base64.b64decode(result.stdout.split()[-1]).decode() == f"x-access-token:{TOKEN}"
    elsewhere = await run_git(
        ["config", "--get-urlmatch", "http.extraHeader", "https://other.example.org/r.git"],
        config=header,
    )
    assert elsewhere.stdout.strip() == ""  # another host never gets it
