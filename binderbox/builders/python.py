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

The sandbox and how one uv command runs in it (uids, failures) are
:class:`~binderbox.builders.uvsteps.UvSteps`'s, the base of this builder.

System layer: when the spec has apt.txt packages, their layer
(:class:`~binderbox.builders.aptlayer.AptLayers`, :attr:`PythonBuilder.layers`) is
made or reused first; every step sees it over ``/usr`` (so ``pip`` and
``postBuild`` use its programs and libraries), ``build.json`` names it
(``system_layers``) and sessions show it the same way.  The key covers it:
:meth:`PythonBuilder.interpreter` adds the host's installed package set.

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

Old Pythons (3.6, 3.7: older than ``kernel_only_below``) get only a kernel
in their environment and the Jupyter server in ``/srv/env/server`` beside it,
made before any repository code runs (:mod:`binderbox.builders.server_env`).
Every uv install reads ``.binderbox/uv.toml`` and nothing else of uv's
configuration: metadata for old releases uv refuses (:mod:`.uvconfig`).

``PythonBuilder.version`` bump rule: bump whenever the same spec would give
a different environment (the steps, the session packages, their pinning
rule, the layout of ``.binderbox/``).  Upgrading uv does not bump it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

from traitlets import Instance, Integer, List, Unicode, default

from ..environments import ENV_PREFIX, HOME, EnvSpec
from ..errors import BuildError, PostBuildFailed
from ..runtime.host import SandboxHost, Step
from ..runtime.layout import META, reset_meta, session_environment
from ..runtime.ownership import take_back, take_back_folder
from ..runtime.process import StepOutput, last_line
from ..runtime.provision import provision
from ..util.sizes import disk_bytes, file_count
from . import bytecode, caches, server_env, uvconfig
from .aptlayer import AptLayers
from .buildrun import BasePlan, BuildRun, out_of_memory, too_big
from .bytecode import DONE as BYTECODE_DONE
from .bytecode import BytecodeCache
from .installs import PythonChoices, requirement_name
from .interpreters import Interpreter
from .overlay import capture_overlay, snapshot
from .seed import seed as _seed
from .server_env import SERVER_DIR, SERVER_PREFIX
from .uvsteps import TAIL, UV_INSIDE, UV_PIP, SourceBuildNeeded, UvSteps

# fmt: off
_PASS_ENV = (
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL",
    "UV_INDEX", "UV_NATIVE_TLS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
)
# fmt: on


class PythonBuilder(PythonChoices, UvSteps):
    """Builds ``kind == "python"`` specs with uv.  See the module docstring."""

    kinds: ClassVar[tuple[str, ...]] = ("python",)
    version: ClassVar[str] = "6"

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
    layers = Instance(AptLayers, help="System layers of apt.txt (c.AptLayers).")

    @default("layers")
    def _default_layers(self) -> AptLayers:
        layers = AptLayers(parent=self)
        if "root" not in self.config.AptLayers:
            layers.root = str(Path(self.cache_dir).parent / "layers")
        return layers

    @default("host")
    def _default_host(self) -> SandboxHost:
        return SandboxHost(parent=self)

    @default("provision_dir")
    def _default_provision_dir(self) -> str:
        return str(Path(self.cache_dir).parent / "provisioned")

    @default("cache_dir")
    def _default_cache_dir(self) -> str:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
        return str(Path(base) / "binderbox" / "uv")

    @default("bytecode_dir")
    def _default_bytecode_dir(self) -> str:
        return str(Path(self.cache_dir).parent / "bytecode")

    # -- interpreters -------------------------------------------------------

    def interpreter(self, spec: EnvSpec) -> str:
        """The identity of the interpreter ``spec`` builds with (see interpreters.py),
        of the server's beside it for old Pythons, and of the host's package set when
        it has a system layer."""
        self.check_layers(spec)
        interp = self.find_interpreter(spec)
        server = self.server_interpreter(interp)
        identity = interp.identity + (f"+server-{server.identity}" if server else "")
        if self.dependency_metadata:  # the operator's entries can change what is built
            table = json.dumps(uvconfig.merged(self.dependency_metadata), sort_keys=True)
            identity += f"+metadata-{hashlib.sha256(table.encode()).hexdigest()[:12]}"
        if self.system_packages(spec):
            identity += f"+{self.layers.identity()}"
        return identity

    # -- building -----------------------------------------------------------

    async def build(
        self, spec: EnvSpec, content: Path | None, prefix: Path
    ) -> AsyncGenerator[str, None]:
        """Build ``spec`` into the empty ``prefix``; yields log lines (module docstring)."""
        self.check_layers(spec)
        self._check(spec, content, prefix)
        plan = BasePlan(spec)
        async for line in self._prepare(plan):
            yield line
        interp = plan.interp
        assert interp is not None
        server = await asyncio.to_thread(self.server_interpreter, interp)
        system = self.system_packages(spec)
        if system:  # not evicted until the build ends (run.close)
            plan.holds.append(await asyncio.to_thread(self.layers.hold, system))
        async for line in self.system_layer(spec):
            yield line
        layer = await asyncio.to_thread(self.layers.tree, system) if system else None
        run = await asyncio.to_thread(self._start_run, interp, server, content, prefix)
        run.plan = plan
        run.layers = [layer] if layer is not None else []
        try:
            async for line in self.base_layer(spec, run):
                yield line
            spec = self.pip_spec(spec, run)
            async for line in self._install(spec, run):
                yield line
            async for line in self.code_layer(spec, run):
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

    async def _prepare(self, plan: BasePlan) -> AsyncIterator[str]:
        """Choose the interpreter (``plan.interp``) before any sandbox starts (a conda
        builder solves here: its interpreter is a package of the environment)."""
        interp = await asyncio.to_thread(self.find_interpreter, plan.spec)
        plan.interp = interp
        yield f"Using CPython {interp.version} ({interp.path})"

    async def base_layer(self, spec: EnvSpec, run: BuildRun) -> AsyncIterator[str]:
        """The environment's base layer, before the pip layer: here a virtual
        environment of the interpreter.  Builders of other kinds override it."""
        if run.server is not None:
            yield (
                f"The Jupyter server runs on CPython {run.server.version} ({run.server.path}) "
                f"beside the kernel: Python {run.interp.minor} is too old for it"
            )
        async for line in self.rebuild_base(spec, run, caches.copying(self.cache)):
            yield line

    async def rebuild_base(
        self, spec: EnvSpec, run: BuildRun, cache: caches.CacheUse
    ) -> AsyncIterator[str]:
        """Make the virtual environment (and binderbox's files) in the emptied prefix
        with ``cache``: in the base layer, and again when the install is retried with
        a private cache (``_install``)."""
        async for line in self._venv(run, cache):
            yield line
        _seed(run.prefix, run.interp)

    def interpreter_mounts(
        self, interp: Interpreter, server: Interpreter | None
    ) -> list[tuple[Path, Path]]:
        """The read-only mounts of the interpreters (readable copies shown at the paths
        the environment knows)."""
        root = Path(self.provision_dir)
        folders = interp_prefixes(interp) + (interp_prefixes(server) if server else [])
        return [(provision(p, root), p) for p in dict.fromkeys(folders)]

    def code_runs_later(self, spec: EnvSpec) -> bool:
        """Whether repository code runs after the pip layer (postBuild, a kind's code
        layer): then nothing is hard-linked from a shared cache (its files would be
        handed to that code's uid)."""
        return bool(spec.postbuild)

    async def code_layer(self, spec: EnvSpec, run: BuildRun) -> AsyncIterator[str]:
        """Repository code of a kind's own, after the pip layer and before postBuild
        (R's install.R): nothing here.  It runs in the build sandbox only; the host
        writes nothing into the environment afterwards but its own META files."""
        return
        yield  # an async generator

    def check_layers(self, spec: EnvSpec) -> None:
        """Refuse a spec whose layers this builder cannot build (every kind it builds
        takes a system layer: nothing to refuse here; subclasses may)."""

    def system_packages(self, spec: EnvSpec) -> tuple[str, ...]:
        """The Debian packages of ``spec``'s system layer (here its apt.txt; a kind may
        add its own, as R does)."""
        return spec.apt_packages

    async def system_layer(self, spec: EnvSpec) -> AsyncIterator[str]:
        """Make (or reuse) the system layer of :meth:`system_packages` (:attr:`layers`)."""
        if self.system_packages(spec):
            async for line in self.layers.ensure(self.system_packages(spec), self.host):
                yield line

    def _start_run(
        self, interp: Interpreter, server: Interpreter | None, content: Path | None, prefix: Path
    ) -> BuildRun:
        """Readable interpreters and uv, the build's own uid (blocking)."""
        own = self.host.lease_uid()
        try:
            mounts = self.interpreter_mounts(interp, server)
            root = Path(self.provision_dir)
            uv = provision(Path(self.uv_path).resolve(), root)
            run = BuildRun(interp, content, prefix, mounts, uv, self.host.builder_uid, own)
            run.server = server
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
        uvconfig.write(prefix / META, self.dependency_metadata)
        wanted = [line for line in lines if not line.startswith("#")]
        if not wanted:
            return
        ours = "jupyterhub" not in {requirement_name(line) for line in spec.requirements}
        if ours and run.server is None and self._jupyterhub_line(interp) == "jupyterhub":
            needs = f"{self.jupyterhub_version} needs Python {self.jupyterhub_requires_python}"
            yield f"jupyterhub {needs}; installing the newest that runs on Python {interp.version}"
        yield f"Installing: {' '.join(wanted)}"
        what = "Installing the requirements"
        if caches.installs_own_code(spec.install_repo, spec.requirements):
            yield "The repository's own code is built: installing with a private cache"
        elif run.ran_code:  # a base layer's (R's install.R): what it left is not trusted
            yield "Repository code ran before: installing with a private cache"
        else:
            first = caches.wheels_only(self.cache, prefix, postbuild=self.code_runs_later(spec))
            try:
                async for line in self._server(run, first):
                    yield line
                for install in self.pip_installs(spec):
                    async for line in self._step(run, install, what=what, cache=first):
                        yield line
                return
            except SourceBuildNeeded:
                yield "Some requirements are built from source: installing with a private cache"
            await asyncio.to_thread(caches.reset_env, prefix)
        private = Path(tempfile.mkdtemp(prefix="uv-private-", dir=self.cache.parent))
        try:
            use = caches.copying(private)
            async for line in self.rebuild_base(spec, run, use):
                yield line
            # the server's packages before any repository code runs: copied, never linked
            copy = caches.CacheUse(self.cache, "copy", no_build=True)
            async for line in self._server(run, copy, last=True):
                yield line
            for install in self.pip_installs(spec):
                async for line in self._step(run, install, what=what, cache=use):
                    yield line
        finally:
            await asyncio.to_thread(shutil.rmtree, private, True)

    def pip_installs(self, spec: EnvSpec) -> list[list[str]]:
        """The uv commands of the pip layer, run in order (each attempt runs them all):
        here the one install of ``.binderbox/requirements.txt``."""
        install = [*UV_PIP, "--python", f"{ENV_PREFIX}/bin/python"]
        return [[*install, "-r", f"{ENV_PREFIX}/{META}/requirements.txt"]]

    def pip_spec(self, spec: EnvSpec, run: BuildRun) -> EnvSpec:
        """The spec the pip layer installs, once the base layer is built (other kinds
        put what their lock says there).  Here: ``spec``."""
        return spec

    def _venv(
        self, run: BuildRun, cache: caches.CacheUse, server: Interpreter | None = None
    ) -> AsyncIterator[str]:
        """``uv venv`` of the environment (``server``: of the server's beside it)."""
        interp, where = (run.interp, ENV_PREFIX) if server is None else (server, SERVER_PREFIX)
        venv = [UV_INSIDE, "venv", "--no-config", "--allow-existing", "--python"]
        venv += [str(interp.path), where]
        what = "Creating the environment" if server is None else "Creating the server's environment"
        return self._step(run, venv, what=what, cache=dataclasses.replace(cache, no_build=False))

    async def _server(
        self, run: BuildRun, cache: caches.CacheUse, *, last: bool = False
    ) -> AsyncIterator[str]:
        """The Jupyter server's environment beside an old Python's kernel, its kernel spec
        and commands (builders/server_env.py); nothing for other Pythons.  Runs before
        any repository code: the host writes into the environment here."""
        server, prefix = run.server, run.prefix
        if server is None:
            return
        async for line in self._venv(run, cache, server):
            yield line
        _seed(prefix / SERVER_DIR, server)
        lines = self.server_lines(server)
        yield f"Installing the Jupyter server: {' '.join(lines)}"
        install = [*UV_PIP, "--python", f"{SERVER_PREFIX}/bin/python"]
        install += ["-r", f"{ENV_PREFIX}/{META}/server-requirements.txt"]
        try:
            async for line in self._step(run, install, what="Installing the server", cache=cache):
                yield line
        except SourceBuildNeeded:
            if last:
                raise BuildError("The Jupyter server's packages have no wheels here.") from None
            raise
        server_env.write_kernelspec(prefix, run.interp)
        linked = server_env.link_scripts(prefix)
        yield f"Kernel: Python {run.interp.minor}; commands of the server: {' '.join(linked)}"

    def _write_requirements(self, spec: EnvSpec, interp: Interpreter, prefix: Path) -> list[str]:
        """Write ``.binderbox/requirements.txt`` (what is installed; and the server's
        beside an old Python's kernel); returns its lines."""
        lines = self.requirement_lines(spec, interp)
        (prefix / META).mkdir(exist_ok=True)
        (prefix / META / "requirements.txt").write_text("\n".join(lines) + "\n")
        server = self.server_interpreter(interp)
        if server is not None:
            text = "\n".join(self.server_lines(server)) + "\n"
            (prefix / META / "server-requirements.txt").write_text(text)
        return lines

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
            last = last_line(tail)[:200]
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
        record = json.loads((path / META / "build.json").read_text())
        found = await asyncio.to_thread(self.interpreters)
        trees = [(record["interpreter"], path, ENV_PREFIX)]
        if record.get("server_interpreter"):  # the server's first: a session imports it first
            trees.insert(0, (record["server_interpreter"], path / SERVER_DIR, SERVER_PREFIX))
        counts = {"reused": 0, "compiled": 0, "failed": 0}
        for identity, tree, inside in trees:
            interp = self.compiler(identity, found)
            if interp is None:
                return f"no bytecode: the interpreter {identity} is gone"
            cache = BytecodeCache(Path(self.bytecode_dir), bytecode.cache_tag(interp))
            done = await cache.compile_tree(interp.path, tree, inside, self.spare_cores)
            counts = {name: counts[name] + done[name] for name in counts}
        (path / META / BYTECODE_DONE).write_text(json.dumps(counts) + "\n")
        return "bytecode: {reused} modules reused, {compiled} compiled, {failed} not".format(
            **counts
        )

    def compiler(self, identity: str, found: list[Interpreter]) -> Interpreter | None:
        """Of the machine's interpreters ``found``, the one that compiles the bytecode of
        an environment built with the interpreter ``identity`` (here: that one)."""
        return next((i for i in found if i.identity == identity), None)

    def gc(self) -> None:
        """Drop compiled modules no environment uses; evict system layers over their
        budget; empty uv's cache when over budget.

        Environments keep working: their files are hard links or copies, so
        removing the cache's names for them frees only what no environment uses.
        """
        bytecode.collect(Path(self.bytecode_dir))
        self.layers.gc()
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
            "server_interpreter": run.server.identity if run.server else None,
            "interpreter_mounts": [[str(host), str(inside)] for host, inside in run.mounts],
            "system_layers": [str(layer) for layer in run.layers],
            "python": interp.version,
            "home_overlay": (prefix / META / "home-overlay").is_dir(),
            **self._metadata(spec, run),
        }
        (prefix / META).mkdir(exist_ok=True)
        (prefix / META / "build.json").write_text(json.dumps(info, indent=1) + "\n")

    def _metadata(self, spec: EnvSpec, run: BuildRun) -> dict[str, Any]:
        """What a subclass adds to ``build.json`` (here: nothing)."""
        return {}


def interp_prefixes(interp: Interpreter) -> list[Path]:
    """The host directories an interpreter needs (bound read-only)."""
    return list(dict.fromkeys([interp.prefix, interp.exec_prefix]))
