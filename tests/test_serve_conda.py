"""A conda repository launched through ``binderbox serve``: built by rattler from the
local stand-in for conda-forge (tests/condachannel.py, served on loopback as the
operator's mirror of ``conda-forge``), ready, and code runs in its kernel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from condachannel import ENVIRONMENT, ChannelServer, stand_in_for_conda_forge
from kernels import run_code
from repos import make_repo, notebook
from serve_helpers import ServeProcess, build_events, end_session, git_spec, running_serve
from testcache import CACHE as TEST_CACHE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROBE = """
import json, subprocess, sys, six, demo_noarch
answer = subprocess.run(["demo-answer"], capture_output=True, text=True).stdout.strip()
print(json.dumps({"answer": answer, "noarch": demo_noarch.GREETING, "prefix": sys.prefix,
                  "python": list(sys.version_info[:2]), "six": six.__version__}))
"""


@pytest.fixture(scope="module")
def channels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChannelServer]:
    """The local stand-in for conda-forge, at ``<server>/conda-forge``."""
    with stand_in_for_conda_forge(tmp_path_factory.mktemp("channels")) as server:
        yield server


@pytest.fixture(scope="module")
def serve(
    tmp_path_factory: pytest.TempPathFactory, channels: ChannelServer
) -> Iterator[ServeProcess]:
    config = "\n".join(
        [
            f"c.CondaBuilder.pkgs_dir = {str(TEST_CACHE / 'conda')!r}",
            f"c.CondaBuilder.mirrors = {{'conda-forge': '{channels.url}/conda-forge'}}",
        ]
    )
    with running_serve(tmp_path_factory.mktemp("serve-conda"), extra_config=config) as running:
        yield running


async def test_conda_repository_reaches_ready_and_runs_code(
    serve: ServeProcess, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "conda-repo",
        {"environment.yml": ENVIRONMENT, "index.ipynb": notebook("print(6*7)")},
    )
    stream = await build_events(serve.url, "git", git_spec(repo))
    assert stream.status == 200 and stream.last.get("phase") == "ready", stream.events[-5:]
    ready = stream.last
    try:
        out = json.loads(await run_code(ready["url"], ready["token"], PROBE))
    finally:
        await end_session(serve, ready)
    assert out == {
        "answer": "the answer is 42",
        "noarch": "hello from demo-noarch",
        "prefix": "/srv/env",
        "python": [3, 11],
        "six": "1.16.0",
    }
