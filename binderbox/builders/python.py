"""The Python builder: uv builds a virtualenv at ``/srv/env`` inside bubblewrap.

Every step runs in a :class:`~binderbox.runtime.sandbox.Sandbox` (uid 1000
``jovyan`` inside) that sees:

* the empty host directory ``prefix`` writable at :data:`ENV_PREFIX`
  (``/srv/env``): the environment is built at its final in-sandbox path, so
  the scripts in ``bin/`` work in every session, which binds the published
  environment at the same path read-only;
* the repository content (the caller's private copy), when given, writable at
  :data:`HOME` (``/home/jovyan``), else an empty tmpfs there;
* the interpreter's prefix and uv's binary read-only, uv's cache writable
  (:attr:`PythonBuilder.cache_dir`), the system directories read-only, and
  the network (packages are downloaded).

Steps: ``uv venv``, then ONE ``uv pip install -r requirements.txt`` whose
file holds, in this order, the repository's normalised requirement lines,
what a session needs (:attr:`PythonBuilder.session_packages` and
``jupyterhub``), pip (and setuptools and wheel before Python 3.12: what
``uv venv --seed`` would add, for postBuild scripts and ``%pip`` in
notebooks; :attr:`PythonBuilder.seed`), and ``.`` when ``spec.install_repo``
(``pip install .`` semantics, from the home).
Because everything is resolved together, a user's pin wins wherever it is
compatible: ``jupyterlab==3.6.3`` in requirements.txt is kept and
``notebook`` resolves to a release that works with it.  A session package
the user names is not added a second time (the user's line decides).
``jupyterhub`` is pinned to the hub's own version
(:attr:`PythonBuilder.jupyterhub_version`) when the interpreter satisfies
that release's ``Requires-Python``; for older Pythons (jupyterhub 6 needs
3.10+) it is left unpinned so uv picks the newest release that runs there.
The file is kept as ``/srv/env/.binderbox/requirements.txt``.

Then ``postBuild`` (when present) runs as uid 1000 in the home with
``/srv/env/bin`` first on ``PATH`` and ``NB_PYTHON_PREFIX``, ``REPO_DIR``,
``NB_USER``, ``NB_UID``, ``HOME`` set.  Its writes to ``/srv/env`` are part
of the environment.  Its writes to the home are kept too: the files it
created or changed are copied into ``/srv/env/.binderbox/home-overlay/`` and
the paths it deleted are listed in ``.binderbox/home-deleted.json``;
:func:`apply_home_overlay` replays both onto a session's fresh copy of the
content at launch (that is how repo2docker's image home behaves, without
freezing the notebooks: only postBuild's own changes are replayed).
Anything else it writes (``/tmp``, the sandbox root) is thrown away.

Right after ``uv venv``, before any build code runs, binderbox writes its
own files: JupyterLab's ``overrides.json``, and a startup hook that defers
parser builds costing every server start about 1 s (``env_startup.py``).

Bytecode is not part of the build: it is compiled into the published
environment afterwards (:meth:`PythonBuilder.finish`, see
:mod:`binderbox.builders.bytecode`), so a launch does not wait for it.

Package cache: the install runs first with ``--no-build`` on the shared uv
cache (hard-linking files when no postBuild follows); only when something
must be built from source does it run again with a private cache.  The rule
and why are in :mod:`binderbox.builders.caches`.

``PythonBuilder.version`` bump rule: bump whenever the same spec would give
a different environment (the steps, the session packages, their pinning
rule, the layout of ``.binderbox/``).  Upgrading uv does not bump it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import ClassVar

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from traitlets import Bool, Instance, Integer, List, Unicode, default

from ..environments import ENV_PREFIX, HOME, EnvSpec
from ..errors import BuildError, PostBuildFailed, PythonVersionUnavailable
from ..runtime.host import SandboxHost, Step
from ..runtime.layout import META, base_sandbox, reset_meta, session_environment
from ..runtime.ownership import give_tree, take_back, take_back_folder
from ..runtime.process import StepOutput, run_step
from ..runtime.provision import provision
from ..runtime.sandbox import Sandbox
from ..util.sizes import disk_bytes, file_count
from . import bytecode, caches, interpreters, uvlog
from .base import Builder
from .buildrun import BuildRun, out_of_memory, too_big
from .bytecode import DONE as BYTECODE_DONE
from .bytecode import BytecodeCache
from .interpreters import Interpreter
from .overlay import capture_overlay, snapshot
from .seed import seed as _seed

#: where uv's binary and cache appear inside build sandboxes
UV_INSIDE = "/run/binderbox/uv"
CACHE_INSIDE = "/run/binderbox/uv-cache"
#: lines of a failing step's output kept for its error
TAIL = 20
# fmt: off
_PASS_ENV = (
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL",
    "UV_INDEX", "UV_NATIVE_TLS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
)
# fmt: on


def _installed_jupyterhub() -> str:
    try:
        return metadata.version("jupyterhub")
    except metadata.PackageNotFoundError:
        return ""


class PythonBuilder(Builder):
    """Builds ``kind == "python"`` specs with uv.  See the module docstring."""

    kinds: ClassVar[tuple[str, ...]] = ("python",)
    version: ClassVar[str] = "5"

    search_dirs = List(
        Unicode(),
        help="""Extra places to look for CPython interpreters, searched first: a bin
        directory holding python3.X, a prefix holding bin/python3.X, or a directory of
        such prefixes.  uv-managed, pyenv and /usr(/local)/bin interpreters are always
        searched.""",
    ).tag(config=True)
    pyenv_root = Unicode(
        help="pyenv's root (its versions/ are searched).  Default: $PYENV_ROOT or ~/.pyenv."
    ).tag(config=True)
    min_python = Unicode(
        "3.8", help="The oldest X.Y version offered; older interpreters on the machine are ignored."
    ).tag(config=True)
    uv_path = Unicode(help="The uv executable.  Default: the one installed with binderbox.").tag(
        config=True
    )
    cache_dir = Unicode(
        help="""uv's package cache (shared by all builds, writable inside build sandboxes).
        Default: $XDG_CACHE_HOME/binderbox/uv or ~/.cache/binderbox/uv."""
    ).tag(config=True)
    bytecode_dir = Unicode(
        help="""Compiled modules shared between environments (see builders/bytecode.py).
        Default: a 'bytecode' folder beside cache_dir.  Keep it on the store's filesystem
        so environments hard-link their .pyc files from it."""
    ).tag(config=True)
    cache_budget = Integer(
        20 * 2**30,
        help="""Bytes uv's package cache may hold that no environment shares; over it,
        the periodic clean-up empties the cache (the next builds download again).
        0 = no limit.""",
    ).tag(config=True)
    spare_cores = Integer(
        1,
        help="""Cores the background bytecode compile leaves to sessions starting meanwhile,
        once what a server imports is compiled (on every core).  `binderbox build` uses 0.""",
    ).tag(config=True)
    session_packages = List(
        Unicode(),
        ["jupyterlab", "notebook", "ipykernel", "jupyter-server"],
        help="""Packages every environment gets besides jupyterhub, resolved together with
        the repository's requirements (a user's pin on one of them wins).""",
    ).tag(config=True)
    jupyterhub_version = Unicode(
        help="""The jupyterhub release installed in environments (its jupyterhub-singleuser
        talks to the hub).  Default: the hub's own version.  Empty: add no jupyterhub.""",
    ).tag(config=True)
    jupyterhub_requires_python = Unicode(
        help="""Requires-Python of that jupyterhub release; older interpreters get the newest
        jupyterhub that supports them instead.  Default: read from the installed jupyterhub
        when its version matches, else no limit.""",
    ).tag(config=True)
    seed = Bool(
        True, help="Install pip (and setuptools/wheel on Python < 3.12) into environments."
    ).tag(config=True)
    pass_env = List(
        Unicode(),
        list(_PASS_ENV),
        help="""Host environment variables passed into build sandboxes when set (proxies,
        certificates, index URLs).  Nothing else of the host's environment is visible.""",
    ).tag(config=True)

    provision_dir = Unicode(
        help="""Readable copies of the interpreters and of uv for sandboxes that cannot read
        the originals (pyenv under /root).  Default: a 'provisioned' folder beside
        cache_dir (see binderbox/runtime/provision.py)."""
    ).tag(config=True)
    host = Instance(SandboxHost, help="Where build steps run (uids, network, limits).")

    @default("host")
    def _default_host(self) -> SandboxHost:
        return SandboxHost(parent=self)

    @default("provision_dir")
    def _default_provision_dir(self) -> str:
        return str(Path(self.cache_dir).parent / "provisioned")

    @default("pyenv_root")
    def _default_pyenv_root(self) -> str:
        return os.environ.get("PYENV_ROOT") or str(Path("~/.pyenv").expanduser())

    @default("uv_path")
    def _default_uv_path(self) -> str:
        try:
            from uv import find_uv_bin

            return str(find_uv_bin())
        except (ImportError, FileNotFoundError):
            return shutil.which("uv") or "uv"

    @default("cache_dir")
    def _default_cache_dir(self) -> str:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
        return str(Path(base) / "binderbox" / "uv")

    @default("bytecode_dir")
    def _default_bytecode_dir(self) -> str:
        return str(Path(self.cache_dir).parent / "bytecode")

    @default("jupyterhub_version")
    def _default_jupyterhub_version(self) -> str:
        return _installed_jupyterhub()

    @default("jupyterhub_requires_python")
    def _default_jupyterhub_requires_python(self) -> str:
        if self.jupyterhub_version and self.jupyterhub_version == _installed_jupyterhub():
            found = metadata.metadata("jupyterhub").get_all("Requires-Python") or [""]
            return str(found[0])
        return ""

    # -- interpreters -------------------------------------------------------

    def interpreters(self, minor: str | None = None) -> list[Interpreter]:
        """Every usable CPython on the machine (of version ``minor`` when given),
        best first within each version."""
        roots = interpreters.search_roots(
            extra=self.search_dirs,
            uv_dir=interpreters.uv_python_dir(self.uv_path),
            pyenv_root=Path(self.pyenv_root) if self.pyenv_root else None,
        )
        return interpreters.find_all(roots, minor)

    def find_interpreter(self, spec: EnvSpec) -> Interpreter:
        """The interpreter for ``spec.python``, or :class:`PythonVersionUnavailable`."""
        wanted = interpreters.version_tuple(spec.python)
        floor = interpreters.version_tuple(self.min_python) or (0, 0)
        interp = None
        if wanted and wanted >= floor:  # probe only what can fit
            minor = f"{wanted[0]}.{wanted[1]}"
            interp = interpreters.best(self.interpreters(minor), minor)
        if interp is None:
            offered = interpreters.available_minors(self.interpreters(), self.min_python)
            raise PythonVersionUnavailable(
                f"Python {spec.python} is not available on this server.",
                hint=f"Available: {', '.join(offered) or 'none'}.",
            )
        return interp

    def interpreter(self, spec: EnvSpec) -> str:
        """The identity of the interpreter ``spec`` builds with (see interpreters.py)."""
        return self.find_interpreter(spec).identity

    # -- building -----------------------------------------------------------

    async def build(
        self, spec: EnvSpec, content: Path | None, prefix: Path
    ) -> AsyncGenerator[str, None]:
        """Build ``spec`` into the empty ``prefix``; yields log lines (module docstring)."""
        interp = await asyncio.to_thread(self.find_interpreter, spec)
        self._check(spec, content, prefix)
        run = await asyncio.to_thread(self._start_run, interp, content, prefix)
        try:
            yield f"Using CPython {interp.version} ({interp.path})"
            async for line in self._venv(run, caches.copying(self.cache)):
                yield line
            _seed(prefix, interp)
            async for line in self._install(spec, run):
                yield line
            if spec.postbuild and content is not None:
                async for line in self._postbuild(spec.postbuild, run):
                    yield line
            else:
                reset_meta(prefix)
            if run.ran_code:  # published trees are writable by no sandbox uid
                await asyncio.to_thread(take_back, prefix)
            else:  # hard links into the builder's cache stay its own; the top and META not
                await asyncio.to_thread(take_back_folder, prefix)
            self._write_requirements(spec, interp, prefix)
            self._write_metadata(spec, run)
            (prefix / ".lock").unlink(missing_ok=True)  # uv's, world-writable
            over = await asyncio.to_thread(run.env_over_limit)
            if over:  # before it is published
                raise too_big(run, over)
            yield "Environment complete (its bytecode is compiled once it is published)."
        finally:
            run.close()

    def _start_run(self, interp: Interpreter, content: Path | None, prefix: Path) -> BuildRun:
        """Readable interpreter and uv, the build's own uid (blocking)."""
        own = self.host.lease_uid()
        try:
            root = Path(self.provision_dir)
            mounts = [(provision(p, root), p) for p in interp_prefixes(interp)]
            uv = provision(Path(self.uv_path).resolve(), root)
            run = BuildRun(interp, content, prefix, mounts, uv, self.host.builder_uid, own)
            run.limit, run.files = self.host.env_size_bytes, self.host.files_limit
            if content is not None:
                run.home_base, run.home_files = disk_bytes(content), file_count(content)
            return run
        except BaseException:
            if own is not None:
                own.release()
            raise

    def _check(self, spec: EnvSpec, content: Path | None, prefix: Path) -> None:
        if any(prefix.iterdir()):
            raise ValueError(f"{prefix} is not empty")
        if spec.postbuild and content is None:
            raise ValueError("a spec with postBuild needs the repository content")

    async def _install(self, spec: EnvSpec, run: BuildRun) -> AsyncIterator[str]:
        """The one ``uv pip install`` of everything (see the module docstring)."""
        interp, prefix = run.interp, run.prefix
        lines = self._write_requirements(spec, interp, prefix)
        wanted = [line for line in lines if not line.startswith("#")]
        if not wanted:
            return
        ours = "jupyterhub" not in {requirement_name(line) for line in spec.requirements}
        if ours and self.jupyterhub_version and self._jupyterhub_line(interp) == "jupyterhub":
            needs = f"{self.jupyterhub_version} needs Python {self.jupyterhub_requires_python}"
            yield f"jupyterhub {needs}; installing the newest that runs on Python {interp.version}"
        yield f"Installing: {' '.join(wanted)}"
        install = [UV_INSIDE, "pip", "install", "--no-config", "--python"]
        install += [f"{ENV_PREFIX}/bin/python", "-r", f"{ENV_PREFIX}/{META}/requirements.txt"]
        what = "Installing the requirements"
        if caches.installs_own_code(spec.install_repo, spec.requirements):
            yield "The repository's own code is built: installing with a private cache"
        else:
            first = caches.wheels_only(self.cache, prefix, postbuild=bool(spec.postbuild))
            try:
                async for line in self._step(run, install, what=what, cache=first):
                    yield line
                return
            except _SourceBuildNeeded:
                yield "Some requirements are built from source: installing with a private cache"
            await asyncio.to_thread(caches.reset_env, prefix)
        private = Path(tempfile.mkdtemp(prefix="uv-private-", dir=self.cache.parent))
        try:
            use = caches.copying(private)
            async for line in self._venv(run, use):
                yield line
            _seed(prefix, interp)
            async for line in self._step(run, install, what=what, cache=use):
                yield line
        finally:
            await asyncio.to_thread(shutil.rmtree, private, True)

    @property
    def cache(self) -> Path:
        """uv's shared package cache (created on first use, owned by the builder uid)."""
        path = Path(self.cache_dir).resolve()
        path.mkdir(parents=True, exist_ok=True)
        uid = self.host.builder_uid
        if uid is not None and path.stat().st_uid != uid:
            give_tree(path, uid)  # once: a cache made before binderbox switched uids
        return path

    def _venv(self, run: BuildRun, cache: caches.CacheUse) -> AsyncIterator[str]:
        venv = [UV_INSIDE, "venv", "--no-config", "--allow-existing", "--python"]
        venv += [str(run.interp.path), ENV_PREFIX]
        return self._step(run, venv, what="Creating the environment", cache=cache)

    def _write_requirements(self, spec: EnvSpec, interp: Interpreter, prefix: Path) -> list[str]:
        """Write ``.binderbox/requirements.txt`` (what is installed); returns its lines."""
        lines = self.requirement_lines(spec, interp)
        (prefix / META).mkdir(exist_ok=True)
        (prefix / META / "requirements.txt").write_text("\n".join(lines) + "\n")
        return lines

    def requirement_lines(self, spec: EnvSpec, interp: Interpreter) -> list[str]:
        """The one requirements file installed (see the module docstring)."""
        named = {name for name in map(requirement_name, spec.requirements) if name}
        lines = ["# the repository's requirements", *spec.requirements, "# what a session needs"]
        lines += [p for p in self.session_packages if canonicalize_name(p) not in named]
        if self.jupyterhub_version and "jupyterhub" not in named:
            lines.append(self._jupyterhub_line(interp))
        if self.seed:  # what ``uv venv --seed`` adds, resolved and fetched with the rest
            seeds = ["pip", "setuptools", "wheel"] if interp.version_tuple() < (3, 12) else ["pip"]
            lines += [name for name in seeds if name not in named]
        if spec.install_repo:
            lines += ["# the repository itself", "."]
        return lines

    def _jupyterhub_line(self, interp: Interpreter) -> str:
        try:
            fits = SpecifierSet(self.jupyterhub_requires_python).contains(
                interp.version, prereleases=True
            )
        except InvalidSpecifier:
            fits = True
        return f"jupyterhub=={self.jupyterhub_version}" if fits else "jupyterhub"

    def _sandbox(self, run: BuildRun, cache: caches.CacheUse | None = None) -> Sandbox:
        """The build sandbox (see the module docstring); cwd is the home.

        ``cache``: also show uv and that cache (never to postBuild); with a
        ``shared_root``, one mount holds cache and environment (hard links).
        """
        content, prefix = run.content, run.prefix
        box = base_sandbox(run.mounts, content and content.resolve())
        if cache is not None:
            box.ro_bind(run.uv, UV_INSIDE)
        if cache is not None and cache.shared_root is not None:
            box.bind(cache.shared_root).symlink(prefix.resolve(), ENV_PREFIX)
        else:
            if cache is not None:
                box.bind(cache.path, CACHE_INSIDE)
            box.bind(prefix.resolve(), ENV_PREFIX)
        box.setenv({name: os.environ[name] for name in self.pass_env if name in os.environ})
        return box

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
                raise _SourceBuildNeeded
            if step.oom_killed:
                raise out_of_memory(what, self.host.build_mem_limit)
            raise uvlog.classify(tail, what=what)

    async def _postbuild(self, script: str, run: BuildRun) -> AsyncIterator[str]:
        """Run postBuild sandboxed, as the build's own uid; keep its home changes."""
        content, prefix = run.content, run.prefix
        assert content is not None
        path = (content / script).resolve()  # a symlink must stay inside the content
        if not path.is_relative_to(content.resolve()) or not path.is_file():
            raise BuildError(f"The postBuild script {script} is not a file in the repository.")
        path.chmod(path.stat().st_mode | 0o111)
        with path.open("rb") as handle:
            shebang = handle.read(2) == b"#!"
        inside = f"{HOME}/{script}"
        command = [inside] if shebang else ["/bin/bash", inside]
        uid = await asyncio.to_thread(run.hand_over, None, False)
        box = self._sandbox(run)
        box.setenv({**session_environment(), "XDG_CACHE_HOME": "/tmp/.cache"})
        before = await asyncio.to_thread(snapshot, content)
        yield f"Running {script}"
        step = Step(output=StepOutput(tail=deque(maxlen=TAIL)))
        trees = run.trees()
        async for line in self.host.run_step(box, command, uid=uid, step=step, trees=trees):
            yield line
        code, tail = step.output.code, step.output.tail
        if step.over_limit:
            raise too_big(run, step.over_limit)
        if code != 0 and step.oom_killed:
            raise out_of_memory("postBuild", self.host.build_mem_limit)
        if code != 0:
            last = next((line.strip()[:200] for line in reversed(tail) if line.strip()), "")
            output = "\n".join(tail)
            raise PostBuildFailed(
                f"postBuild failed with exit status {code}" + (f": {last}" if last else "."),
                hint="The build log shows the script's output.",
                log_message=f"postBuild failed with exit status {code}; its last lines:\n{output}",
            )
        meta = reset_meta(prefix)
        changed, deleted = await asyncio.to_thread(
            capture_overlay, content, before, meta / "home-overlay", self.host.env_size_bytes
        )
        (meta / "home-deleted.json").write_text(json.dumps(deleted))
        yield f"postBuild changed {changed} file(s) and deleted {len(deleted)} in the home."

    # -- after publishing ---------------------------------------------------

    def finished(self, path: Path) -> bool:
        """Whether the environment at ``path`` has its bytecode."""
        return (path / META / BYTECODE_DONE).is_file()

    async def finish(self, path: Path) -> str:
        """Link cached .pyc files into the published env; compile those never seen.

        After publishing (store/finishing.py): a launch need not wait for it.
        Only the host writes here: no build code runs after publishing.
        """
        identity = json.loads((path / META / "build.json").read_text())["interpreter"]
        found = await asyncio.to_thread(self.interpreters)
        interp = next((i for i in found if i.identity == identity), None)
        if interp is None:
            return f"no bytecode: the interpreter {identity} is gone"
        tag = f"{interp.implementation}-{interp.minor.replace('.', '')}"
        cache = BytecodeCache(Path(self.bytecode_dir), tag)
        plan = await asyncio.to_thread(cache.plan, path)
        compiled = 0
        batches = cache.batches(plan, self.spare_cores)  # the server's first, then the rest
        for batch, workers in batches:
            argv = await asyncio.to_thread(cache.compile_argv, interp.path, batch, workers)
            try:
                async for _line in run_step(argv, StepOutput()):
                    pass
            finally:
                compiled += await asyncio.to_thread(cache.finish, batch)
        counts = {"reused": plan.reused, "compiled": compiled, "failed": len(plan.jobs) - compiled}
        (path / META / BYTECODE_DONE).write_text(json.dumps(counts) + "\n")
        return "bytecode: {reused} modules reused, {compiled} compiled, {failed} not".format(
            **counts
        )

    def gc(self) -> None:
        """Drop compiled modules no environment uses; empty uv's cache when over budget.

        Environments keep working: their files are hard links or copies, so
        removing the cache's names for them frees only what no environment uses.
        """
        bytecode.collect(Path(self.bytecode_dir))
        cache = Path(self.cache_dir)
        if (
            self.cache_budget
            and cache.is_dir()
            and caches.unshared_bytes(cache) > self.cache_budget
        ):
            self.log.info("uv's cache is over %d bytes: cleaning it", self.cache_budget)
            subprocess.run(
                [self.uv_path, "cache", "clean", "--cache-dir", str(cache)],
                capture_output=True,
                check=False,
                timeout=600,
            )

    def _write_metadata(self, spec: EnvSpec, run: BuildRun) -> None:
        interp, prefix = run.interp, run.prefix
        info = {
            "builder": type(self).__name__,
            "builder_version": self.version,
            "interpreter": interp.identity,
            "interpreter_path": str(interp.path),
            "interpreter_prefixes": [str(p) for p in interp_prefixes(interp)],
            "interpreter_mounts": [[str(host), str(inside)] for host, inside in run.mounts],
            "python": interp.version,
            "home_overlay": (prefix / META / "home-overlay").is_dir(),
        }
        (prefix / META).mkdir(exist_ok=True)
        (prefix / META / "build.json").write_text(json.dumps(info, indent=1) + "\n")


class _SourceBuildNeeded(Exception):
    """A --no-build install met something that must be built from source."""


def requirement_name(line: str) -> str | None:
    """The canonical project name a requirement line names, if it names one."""
    egg = re.search(r"[#&]egg=([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    if egg:
        return canonicalize_name(egg.group(1))
    if line.lstrip().startswith(("-", "#", ".", "/")):
        return None
    try:
        return canonicalize_name(Requirement(line.split(" --")[0].strip()).name)
    except InvalidRequirement:
        return None


def interp_prefixes(interp: Interpreter) -> list[Path]:
    """The host directories an interpreter needs (bound read-only)."""
    return list(dict.fromkeys([interp.prefix, interp.exec_prefix]))
