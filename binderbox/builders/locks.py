"""Locked Python environments: ``uv.lock`` (with its ``pyproject.toml``) and ``pylock.toml``.

:class:`LockBuilder` is the Python builder with the lock as its base layer;
everything else (the sandbox, uv's cache and its trust rule, the session
packages, postBuild, bytecode) is :class:`~binderbox.builders.python.PythonBuilder`'s.
The environment holds exactly the locked versions, plus what a session needs
where the lock does not name it (resolved *with* the locked pins, so a
session package adapts to the lock, never the reverse):

* ``uv-lock``: first ``uv lock --check`` of the project (the two files as
  committed, in a folder of their own) says whether the lock matches its
  ``pyproject.toml`` (a plain message: run ``uv lock``).  Checking may run the
  project's build backend (dynamic metadata), which is repository code: it
  runs as the build's own uid with a private, throwaway cache, in a sandbox
  that sees neither the environment nor the shared cache.  Then ``uv export
  --frozen`` (which builds nothing) of the same files, on the shared cache,
  gives the pinned, hashed lines of the lock's default groups, as ``uv sync``
  installs them.  The project itself is installed only when the lock says it
  is a package (``-e .``, installed from the repository content like ``pip
  install .``, not editable: the environment is read-only); a ``virtual``
  project is not;
* ``pylock``: ``uv pip install -r pylock.toml`` (uv reads PEP 751 itself; it
  takes no other requirement beside a lock), then the session packages with
  every locked ``name==version`` as a constraint.

Workspaces and path dependencies other than the project itself are not
supported by the copy in ``.binderbox/project/``: uv says which file it
misses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import posixpath
import re
import shutil
import tempfile
import tomllib
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

from ..environments import ENV_PREFIX, EnvSpec
from ..errors import BuildError
from ..runtime.host import Step
from ..runtime.layout import META, base_sandbox
from ..runtime.ownership import give_tree
from ..runtime.process import StepOutput
from ..runtime.treewatch import WatchedTree
from . import caches, uvlog
from .buildrun import BuildRun, out_of_memory
from .python import PythonBuilder
from .uvsteps import TAIL, UV_INSIDE, UV_PIP

#: the lock's pins as constraints of the session packages (pylock)
CONSTRAINTS = "locked-constraints.txt"
#: what ``uv export`` wrote (uv-lock)
EXPORTED = "locked.txt"
#: where the lock check's folder is seen inside its sandbox
CHECK_INSIDE = "/run/binderbox/lockcheck"
_CONTINUATION = re.compile(r"\s*\\\n\s*")


class LockBuilder(PythonBuilder):
    """Builds ``uv-lock`` and ``pylock`` specs.  See the module docstring."""

    kinds: ClassVar[tuple[str, ...]] = ("uv-lock", "pylock")
    #: the Python builder's version and this one's: both change what is built
    version: ClassVar[str] = f"{PythonBuilder.version}-lock1"

    async def base_layer(self, spec: EnvSpec, run: BuildRun) -> AsyncIterator[str]:
        """The virtual environment, then the lock read into ``.binderbox/``."""
        async for line in super().base_layer(spec, run):
            yield line
        base = json.loads(spec.base or "{}")
        meta = run.prefix / META
        meta.mkdir(exist_ok=True)
        if spec.kind == "pylock":
            (meta / "pylock.toml").write_text(base["lock"])
            (meta / CONSTRAINTS).write_text("\n".join(pylock_constraints(base["lock"])) + "\n")
            return
        project = meta / "project"
        project.mkdir(exist_ok=True)
        (project / "pyproject.toml").write_text(base["project"])
        (project / "uv.lock").write_text(base["lock"])
        yield "Checking that uv.lock matches pyproject.toml (uv lock --check)"
        async for line in self._check_lock(base, run):
            yield line
        yield "Reading uv.lock (uv export --frozen)"
        export = [UV_INSIDE, "export", "--no-config", "--frozen", "--format", "requirements.txt"]
        export += ["--no-header", "--no-annotate", "--python", f"{ENV_PREFIX}/bin/python"]
        export += ["--project", f"{ENV_PREFIX}/{META}/project"]
        export += ["-o", f"{ENV_PREFIX}/{META}/{EXPORTED}"]
        use = caches.CacheUse(self.cache, "copy", no_build=True)  # --frozen builds nothing
        async for line in self._step(run, export, what="Reading uv.lock", cache=use):
            yield line

    async def _check_lock(self, base: dict[str, str], run: BuildRun) -> AsyncIterator[str]:
        """``uv lock --check`` as the build's own uid, apart from the environment and the
        shared cache (it may run the project's build backend: module docstring)."""
        work = Path(tempfile.mkdtemp(prefix="uv-lockcheck-", dir=self.cache.parent))
        try:
            (work / "project").mkdir()
            (work / "project" / "pyproject.toml").write_text(base["project"])
            (work / "project" / "uv.lock").write_text(base["lock"])
            (work / "cache").mkdir()
            uid = run.own.value if run.own is not None else None
            if uid is not None:
                await asyncio.to_thread(give_tree, work, uid)
            box = base_sandbox(run.mounts, None).ro_bind(run.uv, UV_INSIDE)
            box.bind(work, CHECK_INSIDE).setenv(
                {
                    "UV_CACHE_DIR": f"{CHECK_INSIDE}/cache",
                    "UV_PYTHON_DOWNLOADS": "never",
                    "UV_NO_PROGRESS": "1",
                    "NO_COLOR": "1",
                    **self.passed_env(),
                }
            )
            command = [
                UV_INSIDE,
                "lock",
                "--no-config",
                "--check",
                "--python",
                str(run.interp.path),
            ]
            command += ["--project", f"{CHECK_INSIDE}/project"]
            step = Step(output=StepOutput(tail=deque(maxlen=TAIL)))
            trees = [WatchedTree(work, run.limit, run.files)] if run.limit else []
            async for line in self.host.run_step(box, command, uid=uid, step=step, trees=trees):
                yield line
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        tail = "\n".join(step.output.tail)
        if step.output.code == 0:
            return
        if "needs to be updated" in tail:
            raise BuildError(
                "uv.lock does not match its pyproject.toml.",
                hint="Run `uv lock` and commit the updated uv.lock.",
                log_message=tail,
            )
        if step.oom_killed:
            raise out_of_memory("Checking uv.lock", self.host.build_mem_limit)
        raise uvlog.classify(list(step.output.tail), what="Checking uv.lock")

    def pip_spec(self, spec: EnvSpec, run: BuildRun) -> EnvSpec:
        """uv-lock: the exported lines are the pip layer (with the session packages)."""
        if spec.kind != "uv-lock":
            return spec
        text = read_no_follow(run.prefix / META / EXPORTED)  # uv's, as the builder uid
        lines = exported_lines(text, spec.config_dir)
        return dataclasses.replace(spec, requirements=(*lines, *spec.requirements))

    def pip_installs(self, spec: EnvSpec) -> list[list[str]]:
        """pylock: the lock first, then the session packages constrained to its pins."""
        if spec.kind != "pylock":
            return super().pip_installs(spec)
        where = f"{ENV_PREFIX}/{META}"
        install = [*UV_PIP, "--python", f"{ENV_PREFIX}/bin/python"]
        return [
            [*install, "-r", f"{where}/pylock.toml"],
            [*install, "-r", f"{where}/requirements.txt", "-c", f"{where}/{CONSTRAINTS}"],
        ]


def read_no_follow(path: Path) -> str:
    """A file's text, refusing a link in its place (the tree's uid could plant one)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as handle:
        return handle.read()


def exported_lines(text: str, config_dir: str) -> list[str]:
    """``uv export``'s requirements, one line each; the project's own (``-e .``) and
    other local lines as non-editable paths relative to the repository root."""
    lines = []
    for line in _CONTINUATION.sub(" ", text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-e ", "./", ".")):
            path = line.removeprefix("-e ").strip()
            joined = posixpath.normpath(posixpath.join(config_dir or ".", path))
            line = "." if joined == "." else f"./{joined}"
        lines.append(line)
    return lines


def pylock_constraints(text: str) -> list[str]:
    """Every versioned package of a PEP 751 lock as ``name==version ; marker``."""
    lines = []
    for package in tomllib.loads(text).get("packages", []):
        if not isinstance(package, dict) or not package.get("version"):
            continue
        marker = package.get("marker")
        line = f"{package['name']}=={package['version']}"
        lines.append(f"{line} ; {marker}" if marker else line)
    return lines
