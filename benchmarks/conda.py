"""conda build figures: binderbox's CondaBuilder against raw rattler, in one run.

Run: .venv/bin/python benchmarks/conda.py   (a minute; PyPI only for the last row)

conda-forge cannot be reached from here, so every figure uses the tests' local
stand-in for conda-forge (tests/condachannel.py: ``python`` repackaged from
pyenv's 3.11, 18 MB; a compiled library and program; a noarch package; pip),
served on loopback HTTP.  Rows:

* raw rattler cold -- ``rattler.solve`` + ``rattler.install`` into a new prefix
                      with an empty package cache, in this process (no sandbox)
* binderbox cold   -- ``binderbox build`` of an environment.yml of the same
                      specs (no Jupyter packages, no pip seed: the conda layer
                      alone), empty conda cache and new store
* raw rattler warm -- the same into another new prefix, the package cache warm
* binderbox warm   -- a new environment key (one more spec), conda cache warm
* binderbox hit    -- the same commit again (the store has the key)
* full, warm       -- with the Jupyter server packages from PyPI (uv's cache as
                      the suite left it), conda cache warm

What binderbox adds to rattler is the difference of each pair: the sandboxed
link step (starting a sandbox and the service's interpreter there), the
host's archive download and hash check, uv's seed step and the store.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import rattler
from build import timed_build  # type: ignore[import-not-found]
from condachannel import ChannelServer, make_channel
from repos import commit, make_repo
from testcache import CACHE

from binderbox.app import BinderboxApp

VERBOSE = "-v" in sys.argv
SPECS = ["python 3.11.*", "libdemo", "pip"]
YML = "channels: [conda-forge]\ndependencies:\n" + "".join(f"  - {s}\n" for s in SPECS)


async def raw(url: str, prefix: Path, cache: Path) -> float:
    started = time.perf_counter()
    records = await rattler.solve([url], SPECS, platforms=["linux-64", "noarch"])
    await rattler.install(
        records, prefix, cache_dir=cache, show_progress=False, alternative_target_prefix="/srv/env"
    )
    return time.perf_counter() - started


def app_for(work: Path, server: ChannelServer, name: str, *, full: bool) -> BinderboxApp:
    app = BinderboxApp(data_dir=str(work / name))
    app.config.PythonBuilder.cache_dir = str(CACHE / "uv") if full else str(work / "uv")
    app.config.CondaBuilder.pkgs_dir = str(work / "conda")
    # readable copies of the service's interpreter: made once per machine, not per build
    app.config.PythonBuilder.provision_dir = str(CACHE / "provisioned")
    app.config.CondaBuilder.mirrors = {"conda-forge": f"{server.url}/conda-forge"}
    if not full:
        app.config.CondaBuilder.session_packages = []
        app.config.CondaBuilder.jupyterhub_version = ""
        app.config.CondaBuilder.seed = False
    return app


async def main(work: Path) -> None:
    try:
        server = ChannelServer(work / "channels")
        url = f"{server.url}/conda-forge"
        rows: list[tuple[str, float]] = []
        rows.append(("raw rattler cold", await raw(url, work / "raw1", work / "raw-cache")))
        repo = make_repo(work / "repo", {"environment.yml": YML})
        seconds, _ = await timed_build(
            app_for(work, server, "data", full=False), repo, verbose=VERBOSE
        )
        rows.append(("binderbox cold", seconds))
        rows.append(("raw rattler warm", await raw(url, work / "raw2", work / "raw-cache")))
        commit(repo, {"environment.yml": YML + "  - demo-noarch\n"})
        seconds, _ = await timed_build(
            app_for(work, server, "data", full=False), repo, verbose=VERBOSE
        )
        rows.append(("binderbox warm (new key)", seconds))
        seconds, _ = await timed_build(
            app_for(work, server, "data", full=False), repo, verbose=VERBOSE
        )
        rows.append(("binderbox hit", seconds))
        seconds, _ = await timed_build(
            app_for(work, server, "full", full=True), repo, verbose=VERBOSE
        )
        rows.append(("full (Jupyter from PyPI), warm", seconds))
        server.close()
        for name, value in rows:
            print(f"{name:32} {value:6.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    folder = Path(tempfile.mkdtemp(prefix="bbx-conda-bench-", dir="/tmp"))
    folder.chmod(0o755)
    make_channel(folder / "channels" / "conda-forge")
    asyncio.run(main(folder))
