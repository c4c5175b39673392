"""Bytecode for read-only environments, compiled once per source file.

Environments are mounted read-only in sessions, so Python cannot write the
``.pyc`` files it would otherwise create on first import: without them every
session start recompiles what Jupyter imports (about 2 s).  Compiling
everything is the slowest part of making an environment, though (about 7 s
of two cores for numpy + pandas + matplotlib + JupyterLab, more than
downloading and installing them), and nearly all of it is the same work
again: the same package files, in the same place.  So it is done once per
file, and after the environment is published (``PythonBuilder.finish``, run
in the background by ``store/finishing.py``): a launch does not wait for it.

Every environment is built *at* ``/srv/env``, so the bytecode of a module
depends only on the interpreter (its cache tag, e.g. ``cpython-310``), the
file's path under ``/srv/env`` (it is embedded as ``co_filename``) and the
source bytes.  :class:`BytecodeCache` keeps compiled files under
``<root>/<cache tag>/`` keyed by a hash of path and source, and links them
into each environment (a hard link when on one filesystem, else a copy);
only files it has never seen are compiled, in parallel, by the
environment's own interpreter (``py_compile`` parses and compiles; it does
not run the code), at the lowest CPU priority, so that sessions starting
meanwhile are not slowed.  The files a session's server and its first
kernel import (``server_modules.txt``, in import order) are compiled and
linked first, as a batch of their own: the first session of a new
environment, started while the rest compiles, finds them.  Test folders
come last.  Each file appears whole (a link), so a session importing
meanwhile finds a module's bytecode or compiles it in memory, never half a
file.

The files are *checked-hash* pycs (PEP 552): the interpreter verifies the
source's hash on import instead of its timestamp, so a copied or re-dated
source is still matched, and a source changed after the build (by a
postBuild that edits an installed file in place) is never paired with stale
bytecode.  :meth:`BytecodeCache.gc` drops entries no environment links to.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..environments import ENV_PREFIX
from ..runtime.process import StepOutput, run_step
from .interpreters import Interpreter

#: written into an environment's ``.binderbox/`` once it has its bytecode
DONE = "bytecode.json"

#: compiles the jobs listed in a JSON file: [[source, dfile, cfile], ...]
#: (Python 3.6 has no checked-hash pycs, PEP 552: its pycs are checked by the source's
#: modification time, which hard links and copies made by uv keep; a stale one is only
#: recompiled in memory.  Its pool takes no start method: fork is the default there.)
COMPILER = """
import concurrent.futures, json, os, py_compile, sys
from multiprocessing import get_context

MODE = getattr(py_compile, "PycInvalidationMode", None)
HOW = {"invalidation_mode": MODE.CHECKED_HASH} if MODE else {}

def one(job):
    try:
        py_compile.compile(job[0], cfile=job[2], dfile=job[1], doraise=True, **HOW)
        return 1
    except Exception:
        return 0

os.nice(19)  # behind sessions starting meanwhile (inherited by the workers)
with open(sys.argv[1]) as f:
    jobs = json.load(f)
workers = int(sys.argv[2]) if len(sys.argv) > 2 else (os.cpu_count() or 1)
try:
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=get_context("fork"))
except TypeError:  # Python 3.6
    pool = concurrent.futures.ProcessPoolExecutor(workers)
with pool:
    done = sum(pool.map(one, jobs, chunksize=64))
print("compiled %d of %d files" % (done, len(jobs)))
"""


_TESTS = re.compile(r"/tests?/")
_SITE = re.compile(r"/site-packages/(.*)$")
#: the files a session's server and first kernel import, in import order
FIRST = Path(__file__).with_name("server_modules.txt")


@functools.cache
def _first_order() -> dict[str, int]:
    """``server_modules.txt``: site-packages path -> its place in import order."""
    lines = FIRST.read_text().splitlines() if FIRST.is_file() else []
    paths = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return {path: index for index, path in enumerate(paths)}


def _site_path(dfile: str) -> str:
    match = _SITE.search(dfile)
    return match.group(1) if match else ""


def _job_order(dfile: str, first: dict[str, int]) -> tuple[int, int]:
    """What the server imports first, in its order; then the rest; tests last."""
    place = first.get(_site_path(dfile))
    if place is not None:
        return (0, place)
    return (2 if _TESTS.search(dfile) else 1, 0)


@dataclass
class Plan:
    """What one environment needs: links already made, sources still to compile."""

    reused: int = 0
    #: (source on the host, path inside the sandbox, pyc target in the env, cache entry)
    jobs: list[tuple[Path, str, Path, Path]] = field(default_factory=list)
    workdir: Path | None = None
    #: how many of ``jobs`` (at their start) a session's server imports
    first: int = 0


class BytecodeCache:
    """Compiled modules shared between environments.  See the module docstring."""

    def __init__(self, root: Path, cache_tag: str) -> None:
        self.root = root / cache_tag
        self.cache_tag = cache_tag

    def plan(self, prefix: Path, inside: str = ENV_PREFIX) -> Plan:
        """Link every cached pyc into ``prefix`` (``inside`` the sandbox); list the sources
        still to compile."""
        plan = Plan()
        lib = prefix / "lib"
        if prefix.is_symlink() or lib.is_symlink():  # build code's link: never followed
            return plan
        for source in _sources(lib):
            rel = source.relative_to(prefix).as_posix()
            digest = hashlib.sha256(rel.encode() + b"\0" + source.read_bytes()).hexdigest()
            entry = self.root / digest[:2] / f"{digest}.pyc"
            target = source.parent / "__pycache__" / f"{source.stem}.{self.cache_tag}.pyc"
            if target.parent.is_symlink():
                continue  # never write through a link build code left in the env
            try:
                _link(entry, target)
                plan.reused += 1
            except FileNotFoundError:  # never compiled, or just dropped by gc
                plan.jobs.append((source, f"{inside}/{rel}", target, entry))
        first = _first_order()
        plan.jobs.sort(key=lambda job: _job_order(job[1], first))
        plan.first = sum(1 for job in plan.jobs if _site_path(job[1]) in first)
        return plan

    def batches(self, plan: Plan, spare: int = 1) -> list[tuple[Plan, int]]:
        """``plan`` split so what a session's server imports is linked in first: (batch,
        compiling processes).  The first batch gets every core; the rest leaves
        ``spare`` cores to sessions starting meanwhile."""
        cores = os.cpu_count() or 1
        rest = max(1, cores - spare)
        parts = [(plan.jobs[: plan.first], cores), (plan.jobs[plan.first :], rest)]
        return [(Plan(jobs=part), workers) for part, workers in parts if part]

    def compile_argv(self, python: Path, plan: Plan, workers: int | None = None) -> list[str]:
        """The command that compiles ``plan``'s jobs (run it, then :meth:`finish`)."""
        plan.workdir = self.root.parent / "tmp" / uuid.uuid4().hex
        plan.workdir.mkdir(parents=True)
        jobs = [
            [str(source), dfile, str(plan.workdir / entry.name)]
            for source, dfile, _target, entry in plan.jobs
        ]
        jobs_file = plan.workdir / "jobs.json"
        jobs_file.write_text(json.dumps(jobs))
        count = workers or os.cpu_count() or 1
        return [str(python), "-I", "-c", COMPILER, str(jobs_file), str(count)]

    def finish(self, plan: Plan) -> int:
        """Move compiled files into the cache and link them into the env; returns how many."""
        assert plan.workdir is not None
        done = 0
        try:
            for _source, _dfile, target, entry in plan.jobs:
                compiled = plan.workdir / entry.name
                if not compiled.is_file():
                    continue  # did not compile (Python 2 syntax in a test folder...)
                _link(compiled, target)  # first: a gc running now cannot take it away
                entry.parent.mkdir(parents=True, exist_ok=True)
                if not entry.exists():
                    compiled.replace(entry)
                done += 1
        finally:
            shutil.rmtree(plan.workdir, ignore_errors=True)
        return done

    async def compile_tree(
        self, python: Path, prefix: Path, inside: str = ENV_PREFIX, spare: int = 1
    ) -> dict[str, int]:
        """Plan, compile with ``python`` and link the bytecode of ``prefix`` (seen at
        ``inside``): what a server imports first, then the rest (:meth:`batches`).
        Returns how many modules were ``reused``, ``compiled`` and ``failed``."""
        plan = await asyncio.to_thread(self.plan, prefix, inside)
        compiled = 0
        for batch, workers in self.batches(plan, spare):
            argv = await asyncio.to_thread(self.compile_argv, python, batch, workers)
            try:
                async for _line in run_step(argv, StepOutput()):
                    pass
            finally:
                compiled += await asyncio.to_thread(self.finish, batch)
        return {"reused": plan.reused, "compiled": compiled, "failed": len(plan.jobs) - compiled}

    def gc(self) -> int:
        """Delete cached pycs no environment links to; returns how many."""
        removed = 0
        for entry in self.root.glob("*/*.pyc") if self.root.is_dir() else ():
            if entry.stat().st_nlink == 1:
                entry.unlink(missing_ok=True)
                removed += 1
        return removed


def cache_tag(interp: Interpreter) -> str:
    """The interpreter's bytecode cache tag, e.g. ``cpython-310``."""
    return f"{interp.implementation}-{interp.minor.replace('.', '')}"


def collect(root: Path, *, max_age: float = 86400.0) -> int:
    """Garbage-collect every cache under ``root``; also the work folders a killed
    compile left (older than ``max_age`` seconds).  Returns the pycs deleted."""
    removed = 0
    for tag in root.iterdir() if root.is_dir() else ():
        if tag.name != "tmp":
            removed += BytecodeCache(root, tag.name).gc()
    for workdir in (root / "tmp").iterdir() if (root / "tmp").is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            if time.time() - workdir.stat().st_mtime > max_age:
                shutil.rmtree(workdir, ignore_errors=True)
    return removed


def _sources(lib: Path) -> list[Path]:
    """The regular ``.py`` files under ``lib`` (build code may leave links, FIFOs...)."""
    found: list[Path] = []
    for dirpath, dirnames, _filenames in os.walk(lib):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        with os.scandir(dirpath) as entries:
            found += [
                Path(entry.path)
                for entry in entries
                if entry.name.endswith(".py") and entry.is_file(follow_symlinks=False)
            ]
    return found


def _link(entry: Path, target: Path) -> None:
    """Put ``entry`` at ``target``: a hard link, else a copy.  FileNotFoundError if
    ``entry`` is missing."""
    target.parent.mkdir(exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(entry, target)
    except FileNotFoundError:
        raise
    except OSError:
        shutil.copyfile(entry, target)
