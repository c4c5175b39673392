"""Build-speed figures: uv cold / warm / cache hit against venv + pip.

Run: .venv/bin/python benchmarks/build.py   (needs PyPI; takes a few minutes)

One repository shape (numpy, pandas, matplotlib in requirements.txt) is
built four ways on this machine, in one run, and the figures printed:

* cold      -- an empty uv package cache, a new environment key
* warm      -- a new key (one extra small requirement), packages cached
* cache hit -- the same commit again: the store already has the key
* raw uv    -- ``uv venv`` + ``uv pip install`` of the very same requirement
               lines into an empty cache, outside binderbox: the network's
               share of a cold build (what binderbox adds is cold - raw uv)
* pip       -- ``python -m venv`` + ``pip install --no-cache-dir`` of the same
               packages with the same interpreter, from PyPI (the machine's pip
               configuration ignored), as repo2docker-style builds make them

A binderbox build ends when its environment is published and usable; its
bytecode is compiled afterwards in the background (builders/bytecode.py), and
the script also prints when each environment had all of it.
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

from binderbox.app import BinderboxApp
from binderbox.builders.python import PythonBuilder
from binderbox.events import Built, Event
from binderbox.pipeline import LaunchRequest
from tests.repos import commit, make_repo

REQUIREMENTS = "numpy\npandas\nmatplotlib\n"


#: per build name: seconds from the start until its bytecode was complete
BYTECODE: dict[str, float] = {}


async def timed_build(
    app: BinderboxApp, repo: Path, name: str = "", *, verbose: bool = False
) -> tuple[float, Built]:
    """Time one build up to ``built`` (usable); then until its bytecode is done.
    ``verbose``: print each event's message with its time."""
    pipeline = app.make_pipeline(allow_local=True)
    started = time.perf_counter()
    last: Event | None = None
    async for event in pipeline.launch(LaunchRequest(provider="", spec=str(repo), build_only=True)):
        last = event
        if verbose:
            print(f"  {time.perf_counter() - started:6.2f} {event.to_wire().get('message', '')}")
    elapsed = time.perf_counter() - started
    if not isinstance(last, Built):
        raise SystemExit(f"build failed: {last.to_wire() if last else 'no events'}")
    await pipeline.finisher.drain()
    if name:
        BYTECODE[name] = time.perf_counter() - started
    if not pipeline.builder.finished(Path(last.path)):
        raise SystemExit("the environment did not get its bytecode")
    return elapsed, last


def raw_uv(work: Path, env: Built) -> float:
    """The cold build's requirement lines with plain uv, an empty cache, no sandbox."""
    built = Path(env.path)
    python = json.loads((built / ".binderbox" / "build.json").read_text())
    uv = PythonBuilder().uv_path
    cache = ["--no-config", "--cache-dir", str(work / "raw-uv-cache")]
    started = time.perf_counter()
    venv = [uv, "venv", "-q", *cache, "--python", python["interpreter_path"], str(work / "rawenv")]
    subprocess.run(venv, check=True)
    install = [
        uv,
        "pip",
        "install",
        "-q",
        *cache,
        "--python",
        str(work / "rawenv" / "bin" / "python"),
    ]
    subprocess.run([*install, "-r", str(built / ".binderbox" / "requirements.txt")], check=True)
    return time.perf_counter() - started


def pip_baseline(work: Path, env: Built) -> float:
    """venv + pip with the interpreter the environment was built with."""
    python = json.loads((Path(env.path) / ".binderbox" / "build.json").read_text())
    started = time.perf_counter()
    subprocess.run([python["interpreter_path"], "-m", "venv", str(work / "pipenv")], check=True)
    pip = work / "pipenv" / "bin" / "pip"
    builder = PythonBuilder()
    packages = [
        *REQUIREMENTS.split(),
        *builder.session_packages,
        f"jupyterhub=={builder.jupyterhub_version}",
    ]
    # from PyPI alone, as uv fetches: no pip configuration of this machine (extra local
    # indexes, find-links) and no pip cache
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    subprocess.run(
        [str(pip), "install", "-q", "--no-cache-dir", "--disable-pip-version-check", *packages],
        check=True,
        env={**clean, "PIP_CONFIG_FILE": os.devnull},
    )
    return time.perf_counter() - started


async def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="binderbox-bench-"))
    try:
        app = BinderboxApp(data_dir=str(work / "data"))
        repo = make_repo(work / "repo", {"requirements.txt": REQUIREMENTS})
        cold, env = await timed_build(app, repo, "cold")
        commit(repo, {"requirements.txt": REQUIREMENTS + "six\n"})
        warm, env2 = await timed_build(app, repo, "warm")
        assert env2.image_name != env.image_name and not env2.cached
        hit, env3 = await timed_build(app, repo)
        assert env3.cached
        raw = raw_uv(work, env)
        pip = pip_baseline(work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("environment: numpy + pandas + matplotlib + the Jupyter session packages")
    print(f"pip (venv + pip install, no cache): {pip:7.2f} s")
    print(f"uv cold (empty cache):              {cold:7.2f} s   {pip / cold:5.1f}x faster than pip")
    print(f"  (raw uv, same lines, empty cache: {raw:5.2f} s; binderbox adds {cold - raw:+.2f} s)")
    print(f"uv warm (new key, cached packages): {warm:7.2f} s   {pip / warm:5.1f}x faster than pip")
    print(f"cache hit (same environment):       {hit:7.3f} s   {pip / hit:5.0f}x faster than pip")
    print("(a build ends when its environment is published and usable; its bytecode is")
    print(" then compiled in the background, while the launch goes on)")
    for name, seconds in BYTECODE.items():
        print(f"  the {name} environment had all its bytecode after {seconds:.2f} s")


if __name__ == "__main__":
    asyncio.run(main())
