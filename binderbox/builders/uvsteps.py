"""How a Python build runs its steps: the build sandbox, and one uv command in it.

:class:`UvSteps` is a mixin of :class:`~binderbox.builders.python.PythonBuilder`
(and so of the kinds built on it) for what every one of its steps shares.  It
reads three of the builder's settings, declared (with their help) on the
builder: ``cache_dir``, ``pass_env`` and ``host``.

* :meth:`UvSteps._sandbox`: the build sandbox (see the python module's
  docstring), with uv and a package cache when a uv step runs in it, and the
  host variables of ``pass_env``;
* :meth:`UvSteps._step`: one uv command in it, as the builder uid on the shared
  cache or as the build's own uid on a private one (:mod:`.buildrun`); a
  failure becomes a plain :class:`~binderbox.errors.BuildError`
  (:mod:`.uvlog`), or :class:`SourceBuildNeeded` when a ``--no-build`` install
  meets something to build from source (:mod:`.caches`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from ..environments import ENV_PREFIX
from ..runtime.host import SandboxHost, Step
from ..runtime.layout import META, base_sandbox
from ..runtime.ownership import give_tree
from ..runtime.sandbox import Sandbox
from . import caches, uvconfig, uvlog
from .buildrun import BuildRun, out_of_memory, too_big

#: where uv's binary and cache appear inside build sandboxes
UV_INSIDE = "/run/binderbox/uv"
CACHE_INSIDE = "/run/binderbox/uv-cache"
#: how every uv install starts: no uv configuration but the build's own (uvconfig.py)
UV_PIP = (
    *(UV_INSIDE, "pip", "install", "--no-config"),
    *("--config-file", f"{ENV_PREFIX}/{META}/{uvconfig.CONFIG_NAME}"),
)
#: lines of a failing step's output kept for its error
TAIL = 20


class UvSteps:
    """The build sandbox and the uv steps run in it.  See the module docstring."""

    #: settings of the builder (``PythonBuilder.<name>``, with their help there)
    cache_dir: str
    pass_env: list[str]
    host: SandboxHost

    @property
    def cache(self) -> Path:
        """uv's shared package cache (created on first use, owned by the builder uid)."""
        path = Path(self.cache_dir).resolve()
        path.mkdir(parents=True, exist_ok=True)
        uid = self.host.builder_uid
        if uid is not None and path.stat().st_uid != uid:
            give_tree(path, uid)  # once: a cache made before binderbox switched uids
        return path

    def _sandbox(self, run: BuildRun, cache: caches.CacheUse | None = None) -> Sandbox:
        """The build sandbox (what it sees: :mod:`.python`'s docstring); cwd is the home.

        ``cache``: also show uv and that cache (never to postBuild); with a
        ``shared_root``, one mount holds cache and environment (hard links).
        """
        content, prefix = run.content, run.prefix
        box = base_sandbox(run.mounts, content and content.resolve(), run.layers)
        if cache is not None:
            box.ro_bind(run.uv, UV_INSIDE)
        if cache is not None and cache.shared_root is not None:
            box.bind(cache.shared_root).symlink(prefix.resolve(), ENV_PREFIX)
        else:
            if cache is not None:
                box.bind(cache.path, CACHE_INSIDE)
            box.bind(prefix.resolve(), ENV_PREFIX)
        return box.setenv(self.passed_env())

    def passed_env(self) -> dict[str, str]:
        """The host variables build sandboxes get (:attr:`pass_env`: proxies, certificates)."""
        return {name: os.environ[name] for name in self.pass_env if name in os.environ}

    async def _step(
        self, run: BuildRun, command: Sequence[str], *, what: str, cache: caches.CacheUse
    ) -> AsyncIterator[str]:
        """Run one uv command in the build sandbox; a failure becomes a BuildError.

        With the shared cache it runs as the builder uid (no repository code runs),
        with a private one as the build's own uid."""
        shared = cache.path == self.cache
        uid = await asyncio.to_thread(run.hand_over, cache.path, shared)
        box = self._sandbox(run, cache)
        inside = str(cache.path) if cache.shared_root is not None else CACHE_INSIDE
        box.setenv(
            {
                "UV_CACHE_DIR": inside,
                "UV_PYTHON_DOWNLOADS": "never",
                "UV_LINK_MODE": cache.link_mode,
                "UV_NO_PROGRESS": "1",
                "NO_COLOR": "1",
            }
        )
        if cache.no_build:
            command = [*command, "--no-build"]
        step = Step()
        trees = run.trees(None if shared else cache.path)
        async for line in self.host.run_step(box, command, uid=uid, step=step, trees=trees):
            yield line
        if step.over_limit:
            raise too_big(run, step.over_limit)
        if step.output.code != 0:
            tail = list(step.output.tail)
            if cache.no_build and caches.needs_source_build(tail):
                raise SourceBuildNeeded
            if step.oom_killed:
                raise out_of_memory(what, self.host.build_mem_limit)
            raise uvlog.classify(tail, what=what)


class SourceBuildNeeded(Exception):
    """A --no-build install met something that must be built from source."""
