"""Real environments for tests, built once by the real builder and cached.

Tests of sessions and data code sources need an environment built at
``/srv/env`` like a launch gets.  :func:`built_env` makes one with
:class:`~binderbox.builders.python.PythonBuilder` (uv, in bubblewrap) and
keeps it under ``<test cache>/envs/`` (tests/testcache.py) keyed by the environment
key, so later runs reuse it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from testcache import CACHE as TEST_CACHE

from binderbox.builders.python import PythonBuilder
from binderbox.environments import EnvSpec

CACHE = TEST_CACHE


def built_env(*requirements: str, session: bool = True, python: str = "3.11") -> Path:
    """The host path of an environment with ``requirements``.

    ``session``: with what a Jupyter session needs (jupyterlab, notebook,
    ipykernel, jupyter-server, jupyterhub); else a bare virtualenv.
    """
    builder = PythonBuilder(cache_dir=str(CACHE / "uv"))
    if not session:
        builder.session_packages = []
        builder.jupyterhub_version = ""
    spec = EnvSpec(python=python, requirements=tuple(requirements))
    return built_spec(builder, spec, "session" if session else "bare")


def built_spec(builder: PythonBuilder, spec: EnvSpec, label: str) -> Path:
    """The host path of ``spec`` built by ``builder`` (no repository content), kept under
    ``<test cache>/envs/<key>-<label>``."""
    key = spec.key(interpreter=builder.interpreter(spec), builder_version=builder.version)
    final = CACHE / "envs" / f"{key}-{label}"
    if (final / ".binderbox" / "build.json").exists():
        if not builder.finished(final):
            _run(builder.finish(final))
        return final
    tmp = CACHE / "envs" / f"tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    async def build() -> None:
        async for _line in builder.build(spec, None, tmp):
            pass
        await builder.finish(tmp)

    _run(build())
    try:
        tmp.rename(final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent build won
    return final


def _run(work: Coroutine[Any, Any, Any]) -> None:
    """Run ``work`` to its end; callers may be inside a running loop (async fixtures)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, work).result()
