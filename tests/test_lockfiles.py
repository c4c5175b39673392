"""uv.lock and pylock.toml end to end: locks made by the real uv, built by the real
pipeline (store, uv, bubblewrap), checked inside the built environment."""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from build_helpers import build_only, built
from repos import commit, make_repo, notebook
from testcache import CACHE as TEST_CACHE

from binderbox.app import BinderboxApp
from binderbox.builders import run_in_env
from binderbox.builders.locks import exported_lines
from binderbox.builders.python import PythonBuilder
from binderbox.environments import EnvSpec
from binderbox.environments.detect import detect
from binderbox.events import Building, Failed
from binderbox.pipeline import LaunchPipeline

pytestmark = pytest.mark.slow
UV_CACHE = TEST_CACHE / "uv"
UV = PythonBuilder().uv_path
PY310 = str(PythonBuilder().find_interpreter(EnvSpec(python="3.10")).path)

PROJECT = """\
[project]
name = "lock-demo"
version = "0.1"
requires-python = ">=3.10"
dependencies = ["six==1.16.0", "idna>=3.3,<3.5"]

[dependency-groups]
dev = ["packaging==23.2"]
"""
PACKAGE = """\
[project]
name = "lockpkg"
version = "0.2"
requires-python = ">=3.10"
dependencies = ["six==1.16.0"]

[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"
"""


def uv(folder: Path, *args: str) -> str:
    """The real uv in ``folder`` (no user configuration), its stdout."""
    env = {**os.environ, "UV_CACHE_DIR": str(UV_CACHE), "UV_NO_PROGRESS": "1"}
    done = subprocess.run(
        [UV, *args, "--no-config"], cwd=folder, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def locked_project(folder: Path, pyproject: str = PROJECT) -> dict[str, str]:
    """``pyproject`` and the uv.lock the real ``uv lock`` makes of it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(pyproject)
    uv(folder, "lock", "--python", PY310)
    return {"pyproject.toml": pyproject, "uv.lock": (folder / "uv.lock").read_text()}


def locked_versions(lock_text: str, key: str) -> dict[str, str]:
    """name -> version of every versioned package of a uv.lock (``package``) or a
    pylock.toml (``packages``) but the project itself."""
    packages = tomllib.loads(lock_text)[key]
    return {p["name"]: p["version"] for p in packages if "version" in p and "virtual" not in str(p)}


def installed(env: Path) -> dict[str, str]:
    """name -> version of what the environment's pip lists."""
    listed = run_in_env(env, ["python", "-m", "pip", "list", "--format=json"])
    assert listed.returncode == 0, listed.stderr
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(listed.stdout)}


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[LaunchPipeline]:
    UV_CACHE.mkdir(parents=True, exist_ok=True)
    app = BinderboxApp(data_dir=str(tmp_path / "data"))
    app.config.PythonBuilder.cache_dir = str(UV_CACHE)
    made = app.make_pipeline(allow_local=True)
    yield made
    await made.finisher.aclose()


async def test_uv_lock_environment_is_the_lock(pipeline: LaunchPipeline, tmp_path: Path) -> None:
    files = locked_project(tmp_path / "project")
    files["requirements.txt"] = "six==1.15.0\n"  # the loose file beside the lock loses
    repo = make_repo(tmp_path / "repo", {**files, "index.ipynb": notebook("1")})
    assert detect(repo).kind == "uv-lock"
    env = built(await build_only(pipeline, str(repo)))
    have = installed(Path(env.path))
    want = locked_versions(files["uv.lock"], "package")
    assert want.keys() == {"six", "idna", "packaging"}  # the dev group is installed too
    assert {name: have.get(name) for name in want} == want
    assert "lock-demo" not in have  # a virtual project is not installed
    assert "jupyterlab" in have  # with what a session needs

    # a commit that changes only a notebook reuses it; one that changes the lock rebuilds
    commit(repo, {"index.ipynb": notebook("2")})
    again = await build_only(pipeline, str(repo))
    assert built(again).cached and not any(isinstance(e, Building) for e in again)
    relocked = locked_project(tmp_path / "project", PROJECT.replace("<3.5", "<3.4"))
    commit(repo, relocked)
    rebuilt = built(await build_only(pipeline, str(repo)))
    assert not rebuilt.cached and rebuilt.image_name != env.image_name
    assert (
        installed(Path(rebuilt.path))["idna"]
        == locked_versions(relocked["uv.lock"], "package")["idna"]
    )


async def test_uv_lock_that_does_not_match_its_pyproject_fails_plainly(
    pipeline: LaunchPipeline, tmp_path: Path
) -> None:
    files = locked_project(tmp_path / "project")
    files["pyproject.toml"] = PROJECT.replace('"six==1.16.0", ', '"six==1.16.0", "attrs", ')
    repo = make_repo(tmp_path / "repo", files)
    events = await build_only(pipeline, str(repo))
    failed = events[-1]
    assert isinstance(failed, Failed), failed.to_wire()
    assert "uv.lock does not match its pyproject.toml" in failed.message
    assert "uv lock" in failed.message and "Traceback" not in failed.message
    assert pipeline.store.list() == []


async def test_uv_lock_of_a_package_installs_the_project(
    pipeline: LaunchPipeline, tmp_path: Path
) -> None:
    files = locked_project(tmp_path / "project", PACKAGE)
    files["src/lockpkg/__init__.py"] = "VALUE = 7\n"
    repo = make_repo(tmp_path / "repo", files)
    env = built(await build_only(pipeline, str(repo)))
    out = run_in_env(Path(env.path), ["python", "-c", "import lockpkg; print(lockpkg.VALUE)"])
    assert out.stdout.strip() == "7", out.stderr
    assert installed(Path(env.path))["lockpkg"] == "0.2"


async def test_pylock_environment_is_the_lock(pipeline: LaunchPipeline, tmp_path: Path) -> None:
    project = tmp_path / "project"
    locked_project(project)
    pylock = uv(project, "export", "--frozen", "--format", "pylock.toml", "--no-header")
    repo = make_repo(
        tmp_path / "repo",
        {"binder/pylock.toml": pylock, "binder/requirements.txt": "six==1.15.0\n"},
    )
    assert detect(repo).kind == "pylock"
    env = built(await build_only(pipeline, str(repo)))
    have = installed(Path(env.path))
    want = locked_versions(pylock, "packages")
    assert want and {name: have.get(name) for name in want} == want
    assert "jupyterlab" in have


def test_exported_lines_name_local_paths_from_the_root() -> None:
    text = "-e .\nsix==1.16.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n-e ./sub\n"
    assert exported_lines(text, "binder") == [
        "./binder",
        "six==1.16.0 --hash=sha256:aa --hash=sha256:bb",
        "./binder/sub",
    ]
    assert exported_lines("-e .\n", "")[0] == "."
