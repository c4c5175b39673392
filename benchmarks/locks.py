"""Build figures for locked and old-Python environments: binderbox cold / warm against raw uv.

Run: .venv/bin/python benchmarks/locks.py   (needs PyPI; takes a few minutes)

Two repository shapes, each built in one run on this machine, the figures printed:

* ``uv.lock``: a uv project (numpy, pandas, matplotlib) locked by the real ``uv lock``;
* old Python: the 2019 Pipfile.lock of the tests (Python 3.7: pandas 0.24.2, numpy
  1.16, ipykernel 5.1, two packages built from source), whose Jupyter server runs
  beside the kernel in Python 3.11 (builders/server_env.py).

For each: *cold* (an empty uv package cache, a new key), *warm* (a new key: the lock
changed by one package; packages cached), and *raw uv*: the same steps with plain uv,
an empty cache, no sandbox, outside binderbox (``uv export --locked`` then ``uv venv`` +
``uv pip install`` of the very lines binderbox installed; for the old Python, both
environments).  What binderbox adds is cold - raw uv.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from build import timed_build  # type: ignore[import-not-found]

from binderbox.app import BinderboxApp
from binderbox.builders.python import PythonBuilder
from binderbox.builders.uvconfig import config_text
from binderbox.environments import EnvSpec
from binderbox.events import Built
from tests.repos import commit, make_repo

PROJECT = """\
[project]
name = "bench"
version = "0"
requires-python = ">=3.10"
dependencies = [{deps}]
"""
DEPS = '"numpy", "pandas", "matplotlib"'
PIPFILE_LOCK = Path(__file__).resolve().parent.parent / "tests/data/pipenv-2019/Pipfile.lock"
UV = PythonBuilder().uv_path


def uv(folder: Path, cache: Path, *args: str) -> None:
    env = {**os.environ, "UV_CACHE_DIR": str(cache), "UV_NO_PROGRESS": "1"}
    subprocess.run([UV, *args, "--no-config", "-q"], cwd=folder, env=env, check=True)


def lock(folder: Path, deps: str, cache: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(PROJECT.format(deps=deps))
    py310 = PythonBuilder().find_interpreter(EnvSpec(python="3.10")).path
    uv(folder, cache, "lock", "--python", str(py310))
    return {name: (folder / name).read_text() for name in ("pyproject.toml", "uv.lock")}


def raw(work: Path, env: Built, project: Path | None = None) -> float:
    """The build's steps with plain uv, an empty cache (module docstring)."""
    built = Path(env.path)
    info = json.loads((built / ".binderbox" / "build.json").read_text())
    cache = work / f"raw-cache-{time.monotonic_ns()}"
    (work / "uv.toml").write_text(config_text())
    started = time.perf_counter()
    if project is not None:
        uv(project, cache, "export", "--locked", "-o", str(work / "exported.txt"))
    trees = [(info["interpreter_path"], "requirements.txt", work / "raw-env")]
    if info.get("server_interpreter"):
        server = PythonBuilder().find_interpreter(EnvSpec(python=PythonBuilder().server_python))
        trees.append((str(server.path), "server-requirements.txt", work / "raw-server"))
    for python, listed, target in trees:
        shutil.rmtree(target, ignore_errors=True)
        uv(work, cache, "venv", "--python", python, str(target))
        install = ["pip", "install", "--config-file", str(work / "uv.toml")]
        install += ["--python", str(target / "bin" / "python")]
        uv(work, cache, *install, "-r", str(built / ".binderbox" / listed))
    return time.perf_counter() - started


async def uv_lock_figures(work: Path) -> tuple[float, float, float]:
    app = BinderboxApp(data_dir=str(work / "data-uvlock"))
    files = lock(work / "project", DEPS, work / "lock-cache")
    repo = make_repo(work / "uvlock-repo", files)
    cold, env = await timed_build(app, repo)
    commit(repo, lock(work / "project", DEPS + ', "six"', work / "lock-cache"))
    warm, env2 = await timed_build(app, repo)
    assert not env2.cached and env2.image_name != env.image_name
    return cold, warm, raw(work, env, work / "project")


async def old_python_figures(work: Path) -> tuple[float, float, float]:
    app = BinderboxApp(data_dir=str(work / "data-py37"))
    text = PIPFILE_LOCK.read_text()
    repo = make_repo(work / "py37-repo", {"Pipfile.lock": text})
    cold, env = await timed_build(app, repo)
    data = json.loads(text)
    data["develop"] = {"attrs": {"version": "==19.1.0"}}
    commit(repo, {"Pipfile.lock": json.dumps(data, indent=4)})
    warm, env2 = await timed_build(app, repo)
    assert not env2.cached and env2.image_name != env.image_name
    return cold, warm, raw(work, env)


async def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="binderbox-bench-locks-"))
    work.chmod(0o711)  # the sandboxes' uids enter it (not list it)
    try:
        figures = {
            "uv.lock (numpy, pandas, matplotlib)": await uv_lock_figures(work),
            "Python 3.7 Pipfile.lock of 2019": await old_python_figures(work),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, (cold, warm, plain) in figures.items():
        print(f"{name}, with the Jupyter session packages:")
        print(f"  binderbox cold (empty cache):        {cold:7.2f} s")
        added = f"binderbox adds {cold - plain:+.2f} s"
        print(f"  raw uv, the same steps, empty cache: {plain:7.2f} s   {added}")
        print(f"  binderbox warm (new key, cached):    {warm:7.2f} s")
    print("(a build ends when its environment is published; bytecode is compiled afterwards)")


if __name__ == "__main__":
    asyncio.run(main())
