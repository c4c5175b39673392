"""Builds in a pod without user namespaces (``binderbox build --in-pod``).

The pod here is a stand-in (tests/podrun.py: a mount namespace made by root, then an
unprivileged uid with no capabilities and no new privileges, and no bubblewrap to be
had).  The service's side is real: its pipeline and store, the pod's `binderbox
build --json` lines turned into the launch's events, the store publishing the pod's
output by rename; the published environment then runs in a session's sandbox.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from podrun import BINDERBOX, POD_UID, StandInPodBuilds, StandInPods, owned
from repos import make_repo

from binderbox.app import BinderboxApp
from binderbox.builders import run_in_env
from binderbox.events import Building, Built, Event, Failed
from binderbox.pipeline import LaunchPipeline, LaunchRequest

pytestmark = pytest.mark.slow


@pytest.fixture
async def pod_pipeline(tmp_path: Path) -> AsyncIterator[LaunchPipeline]:
    """The service's pipeline, its builds in stand-in pods."""
    app = BinderboxApp(data_dir=str(tmp_path / "data"))
    app.builder_class = StandInPodBuilds
    pipeline = app.make_pipeline(allow_local=True)
    assert isinstance(pipeline.builder, StandInPodBuilds)
    pipeline.builder.pods = StandInPods(tmp_path / "pods")
    yield pipeline
    await pipeline.finisher.aclose()


async def build(pipeline: LaunchPipeline, repo: Path) -> list[Event]:
    request = LaunchRequest(provider="", spec=f"file://{repo}", build_only=True)
    return [event async for event in pipeline.launch(request)]


async def test_build_in_pod_unprivileged_publishes_into_store(
    pod_pipeline: LaunchPipeline, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {"requirements.txt": "six==1.16.0\n", "postBuild": "#!/bin/sh\nid -u > ~/built-by\n"},
        executable=("postBuild",),
    )
    events = await build(pod_pipeline, repo)
    last = events[-1]
    assert isinstance(last, Built), last.to_wire()
    lines = [e.message for e in events if isinstance(e, Building)]
    assert any("six==1.16.0" in line for line in lines), lines  # the pod's uv output
    env = pod_pipeline.store.get(last.image_name)
    assert env is not None and Path(last.path) == env.path
    # built by the pod's uid, without bubblewrap (its path was /nonexistent/bwrap)
    assert env.path.stat().st_uid == POD_UID
    overlay = env.path / ".binderbox" / "home-overlay" / "built-by"
    assert overlay.read_text().strip() == str(POD_UID)
    result = run_in_env(env.path, ["python", "-c", "import six, sys; print(six.__version__)"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1.16.0"
    # published by rename: nothing left in the store's build folder
    assert not list((Path(pod_pipeline.store.root) / "tmp").iterdir())


async def test_failed_build_in_pod_is_a_plain_failed_event(
    pod_pipeline: LaunchPipeline, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "bad", {"requirements.txt": "binderbox-no-such-package==1.0\n"})
    events = await build(pod_pipeline, repo)
    last = events[-1]
    assert isinstance(last, Failed), last.to_wire()
    assert "binderbox-no-such-package" in last.message
    assert "Traceback" not in last.message and last.reason != "internal"
    assert pod_pipeline.store.list() == []
    assert not list((Path(pod_pipeline.store.root) / "tmp").iterdir())


def test_build_in_pod_refuses_root(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"requirements.txt": "six\n"})
    assert os.geteuid() == 0  # the suite runs as root; this is the case refused
    out = owned(tmp_path / "out")
    result = subprocess.run(
        [BINDERBOX, "build", "--in-pod", f"--output={out}", str(repo)],
        capture_output=True,
        text=True,
        env={**os.environ, "BINDERBOX_DATA_DIR": str(tmp_path / "data")},
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: Builds in a pod"), result.stderr
    assert "Traceback" not in result.stderr
    assert not list(out.iterdir())


def test_build_in_pod_outside_its_layout_says_so(tmp_path: Path) -> None:
    """Built into the store of the pod itself (no --output): the environment would not
    be at /srv/env, which without mounts cannot be arranged: a plain refusal."""
    repo = make_repo(tmp_path / "repo", {"requirements.txt": "six\n"})
    pods = StandInPods(tmp_path / "pods")
    volumes = pods.build_volumes(tmp_path / "out")
    env = pods.env({"BINDERBOX_DATA_DIR": "/srv/binderbox"})
    result = pods.run([BINDERBOX, "build", "--in-pod", str(repo)], volumes, env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: This build cannot run in a pod: it needs" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
