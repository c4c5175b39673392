"""Session sizes: who may pick which, and the chosen size's limits are the ones enforced.

The rules are checked on their own; the enforcement with a REAL hub and REAL sandboxed
servers (their cgroup where this host enforces memory limits, and ``MEM_LIMIT`` /
``CPU_LIMIT`` inside the session always).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from kernels import run_code
from repos import make_repo
from session_helpers import (
    launch,
    launcher_for,
    make_hub,
    resolved,
    session_env,
    started_hub,
    user_of,
)
from traitlets import TraitError
from traitlets.config import Config

from binderbox.app import BinderboxApp
from binderbox.errors import LaunchError
from binderbox.events import Failed
from binderbox.hub import ManagedHub
from binderbox.hub.children import free_port
from binderbox.pipeline import LaunchRequest
from binderbox.runtime.limits import limits_status
from binderbox.sessions import SessionRequest
from binderbox.sessions.sizes import SessionSizes, SizeRefused

pytestmark = pytest.mark.timeout(600)
module_loop = pytest.mark.asyncio(loop_scope="module")
SIZES = [
    {"name": "small", "display": "1 GB, 1 CPU", "mem_limit": "1G", "cpu_limit": 1},
    {"name": "medium", "mem_limit": "3G", "cpu_limit": 2},
    {"name": "large", "mem_limit": "6G", "cpu_limit": 2, "groups": ["staff"]},
]


def sizes() -> SessionSizes:
    return SessionSizes(config=Config({"SessionSizes": {"sizes": SIZES}}))


def test_anonymous_visitors_get_the_default_size_only() -> None:
    offered = sizes()
    default = offered.choose("", logged_in=False, groups=[])
    assert default is not None and default.name == "small" and default.mem_bytes == 1 << 30
    with pytest.raises(SizeRefused, match="Log in to pick the size 'medium'"):
        offered.choose("medium", logged_in=False, groups=[])
    assert [s.name for s in offered.offered(logged_in=False, groups=[])] == ["small"]


def test_group_limits_on_sizes() -> None:
    offered = sizes()
    assert offered.choose("medium", logged_in=True, groups=[]).name == "medium"  # type: ignore[union-attr]
    with pytest.raises(SizeRefused, match="Your account may not pick the size 'large'"):
        offered.choose("large", logged_in=True, groups=["students"])
    assert offered.choose("large", logged_in=True, groups=["staff"]).name == "large"  # type: ignore[union-attr]
    assert [s.name for s in offered.offered(True, ["staff"])] == ["small", "medium", "large"]
    with pytest.raises(
        SizeRefused, match=re.escape("no size 'huge' here (sizes: small, medium, large)")
    ):
        offered.choose("huge", logged_in=True, groups=["staff"])


def test_a_bad_size_setting_is_refused_naming_it() -> None:
    for bad, words in [
        ([{"name": "x y"}], "a size needs a name"),
        ([{"name": "a", "mem_limit": "lots"}], "'lots' is not a size"),
        ([{"name": "a"}, {"name": "a"}], "unique"),
        ([{"name": "a", "memory": "1G"}], "unknown field"),
    ]:
        with pytest.raises(TraitError, match=words):
            SessionSizes(config=Config({"SessionSizes": {"sizes": bad}})).sizes  # noqa: B018


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ManagedHub]:
    ports = {"public": free_port(), "hub": free_port(), "api": free_port(), "web": 0}
    config = Config({"SessionSizes": {"sizes": SIZES}})
    async with started_hub(make_hub(tmp_path_factory.mktemp("data"), ports, config=config)) as m:
        yield m


def request(hub: ManagedHub, content: Path, size: str) -> SessionRequest:
    return SessionRequest(
        "env-test",
        session_env(),
        content,
        resolved("sizes"),
        launch_host=hub.public_url,
        size=size,
    )


LIMITS = (
    "import json, os; print(json.dumps([os.environ.get('MEM_LIMIT'), os.environ.get('CPU_LIMIT')]))"
)


@module_loop
async def test_the_chosen_size_is_the_limit_the_session_gets(
    hub: ManagedHub, tmp_path: Path
) -> None:
    content = tmp_path / "content"
    content.mkdir()
    _, ready = await launch(launcher_for(hub), request(hub, content, "medium"))
    seen = json.loads(await run_code(ready.url, ready.token, LIMITS))
    assert seen == [str(3 << 30), "2.0"]
    if limits_status()["backend"] == "cgroup-v1":  # enforced, not only announced
        group = Path(f"/sys/fs/cgroup/memory/binderbox/{user_of(ready)}-default")
        assert (group / "memory.limit_in_bytes").read_text().strip() == str(3 << 30)
    _, plain = await launch(launcher_for(hub), request(hub, content, ""))
    assert json.loads(await run_code(plain.url, plain.token, LIMITS))[0] == str(1 << 30)


@module_loop
async def test_the_hub_refuses_a_size_the_user_may_not_have(
    hub: ManagedHub, tmp_path: Path
) -> None:
    """Options come from whoever starts the server (a logged-in user may start their
    own through the hub API): the spawner checks the size itself, and starts nothing."""
    content = tmp_path / "content"
    content.mkdir()
    with pytest.raises(LaunchError):
        async for _event in launcher_for(hub).launch(request(hub, content, "large")):
            pass
    log = (Path(hub.data_dir) / "logs" / "hub.log").read_text()
    assert "may not pick the size 'large'" in log


async def test_a_launch_asking_for_a_size_it_may_not_have_fails_before_building(
    tmp_path: Path,
) -> None:
    app = BinderboxApp(data_dir=str(tmp_path / "data"))
    app.config.SessionSizes.sizes = SIZES
    pipeline = app.make_pipeline(allow_local=True)
    repo = make_repo(tmp_path / "repo", {"requirements.txt": "numpy\n"})
    events = [
        event
        async for event in pipeline.launch(
            LaunchRequest(provider="", spec=str(repo), size="medium")
        )
    ]
    assert len(events) == 1 and isinstance(events[0], Failed), events
    assert events[0].message == "Log in to pick the size 'medium'."
