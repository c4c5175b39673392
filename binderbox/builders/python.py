"""The Python builder: uv builds a virtualenv at ``/srv/env`` inside bubblewrap.

Every step runs in a :class:`~binderbox.sandbox.Sandbox` (uid 1000
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

Steps: ``uv venv --seed`` (pip is present for postBuild scripts), then ONE
``uv pip install --compile-bytecode -r requirements.txt`` whose file holds,
in this order, the repository's normalised requirement lines, what a session
needs (:attr:`PythonBuilder.session_packages` and ``jupyterhub``), and ``.``
when ``spec.install_repo`` (``pip install .`` semantics, from the home).
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

Link mode: uv's cache and ``prefix`` are two bind mounts inside the sandbox,
and Linux refuses hard links across mount points (``EXDEV``) even on one
filesystem, so uv copies (:attr:`PythonBuilder.link_mode`, default
``copy``; measured: hardlink falls back to copy with a warning here).

``PythonBuilder.version`` bump rule: bump whenever the same spec would give
a different environment (the steps, the session packages, their pinning
rule, the layout of ``.binderbox/``).  Upgrading uv does not bump it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import ClassVar

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from traitlets import Bool, List, Unicode, default

from ..environments import ENV_PREFIX, HOME, EnvSpec
from ..errors import BuildError, PostBuildFailed, PythonVersionUnavailable
from ..sandbox import UID, USER, Sandbox, passwd_file
from . import interpreters, uvlog
from .base import Builder
from .interpreters import Interpreter

#: the folder inside an environment holding binderbox's own files
META = ".binderbox"
#: where uv's binary and cache appear inside build sandboxes
UV_INSIDE = "/run/binderbox/uv"
CACHE_INSIDE = "/run/binderbox/uv-cache"
#: lines of a failing step's output kept for its error
TAIL = 20
_BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
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
    version: ClassVar[str] = "1"

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
    link_mode = Unicode(
        "copy",
        help="""UV_LINK_MODE inside build sandboxes.  'copy' by default: the cache and the
        environment are separate bind mounts there, and Linux refuses hard links across
        mount points (EXDEV), so 'hardlink' only falls back to copying with a warning.""",
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

    def interpreters(self) -> list[Interpreter]:
        """Every usable CPython on the machine, best first within each version."""
        roots = interpreters.search_roots(
            extra=self.search_dirs,
            uv_dir=interpreters.uv_python_dir(self.uv_path),
            pyenv_root=Path(self.pyenv_root) if self.pyenv_root else None,
        )
        return interpreters.find_all(roots)

    def available_versions(self) -> list[str]:
        """The ``X.Y`` versions this builder can build, ascending."""
        return interpreters.available_minors(self.interpreters(), self.min_python)

    def find_interpreter(self, spec: EnvSpec) -> Interpreter:
        """The interpreter for ``spec.python``, or :class:`PythonVersionUnavailable`."""
        found = self.interpreters()
        wanted = interpreters.version_tuple(spec.python)
        floor = interpreters.version_tuple(self.min_python) or (0, 0)
        interp = interpreters.best(found, spec.python) if wanted and wanted >= floor else None
        if interp is None:
            offered = interpreters.available_minors(found, self.min_python)
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
        interp = self.find_interpreter(spec)
        self._check(spec, content, prefix)
        yield f"Using CPython {interp.version} ({interp.path})"
        venv = [UV_INSIDE, "venv", "--no-config", "--python", str(interp.path), ENV_PREFIX]
        if self.seed:
            venv.insert(2, "--seed")
        async for line in self._step(
            interp, content, prefix, venv, what="Creating the environment"
        ):
            yield line
        async for line in self._install(spec, interp, content, prefix):
            yield line
        if spec.postbuild and content is not None:
            async for line in self._postbuild(spec.postbuild, interp, content, prefix):
                yield line
        self._write_metadata(spec, interp, prefix)
        (prefix / ".lock").unlink(missing_ok=True)  # uv's, world-writable
        yield "Environment complete."

    def _check(self, spec: EnvSpec, content: Path | None, prefix: Path) -> None:
        if any(prefix.iterdir()):
            raise ValueError(f"{prefix} is not empty")
        if spec.postbuild and content is None:
            raise ValueError("a spec with postBuild needs the repository content")
        Path(self.cache_dir).mkdir(parents=True, exist_ok=True)

    async def _install(
        self, spec: EnvSpec, interp: Interpreter, content: Path | None, prefix: Path
    ) -> AsyncIterator[str]:
        """The one ``uv pip install`` of everything (see the module docstring)."""
        lines = self.requirement_lines(spec, interp)
        (prefix / META).mkdir()
        (prefix / META / "requirements.txt").write_text("\n".join(lines) + "\n")
        wanted = [line for line in lines if not line.startswith("#")]
        if not wanted:
            return
        if "jupyterhub" in wanted:
            needs = f"{self.jupyterhub_version} needs Python {self.jupyterhub_requires_python}"
            yield f"jupyterhub {needs}; installing the newest that runs on Python {interp.version}"
        yield f"Installing: {' '.join(wanted)}"
        install = [UV_INSIDE, "pip", "install", "--no-config", "--compile-bytecode", "--python"]
        install += [f"{ENV_PREFIX}/bin/python", "-r", f"{ENV_PREFIX}/{META}/requirements.txt"]
        what = "Installing the requirements"
        async for line in self._step(interp, content, prefix, install, what=what):
            yield line

    def requirement_lines(self, spec: EnvSpec, interp: Interpreter) -> list[str]:
        """The one requirements file installed (see the module docstring)."""
        named = {name for name in map(requirement_name, spec.requirements) if name}
        lines = ["# the repository's requirements", *spec.requirements, "# what a session needs"]
        lines += [p for p in self.session_packages if canonicalize_name(p) not in named]
        if self.jupyterhub_version and "jupyterhub" not in named:
            lines.append(self._jupyterhub_line(interp))
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

    def _sandbox(
        self, interp: Interpreter, content: Path | None, prefix: Path, *, uv: bool
    ) -> Sandbox:
        """The build sandbox (see the module docstring); cwd is the home.

        ``uv``: also show uv and its cache (not to postBuild: a shared cache must
        not be writable by a script that does not need it).
        """
        box = _base_sandbox(interp_prefixes(interp), content and content.resolve())
        if uv:
            box.ro_bind(Path(self.uv_path).resolve(), UV_INSIDE)
            box.bind(Path(self.cache_dir).resolve(), CACHE_INSIDE)
        box.bind(prefix.resolve(), ENV_PREFIX)
        box.setenv({name: os.environ[name] for name in self.pass_env if name in os.environ})
        return box

    async def _step(
        self,
        interp: Interpreter,
        content: Path | None,
        prefix: Path,
        command: Sequence[str],
        *,
        what: str,
    ) -> AsyncIterator[str]:
        """Run one uv command in the build sandbox; a failure becomes a BuildError."""
        box = self._sandbox(interp, content, prefix, uv=True)
        box.setenv(
            {
                "UV_CACHE_DIR": CACHE_INSIDE,
                "UV_PYTHON_DOWNLOADS": "never",
                "UV_LINK_MODE": self.link_mode,
                "UV_NO_PROGRESS": "1",
                "NO_COLOR": "1",
            }
        )
        tail: deque[str] = deque(maxlen=200)
        async with _Process.start(box.argv(command)) as proc:
            async for line in proc.lines():
                tail.append(line)
                yield line
            code = await proc.wait()
        if code != 0:
            raise uvlog.classify(list(tail), what=what)

    async def _postbuild(
        self, script: str, interp: Interpreter, content: Path, prefix: Path
    ) -> AsyncIterator[str]:
        """Run postBuild sandboxed; keep its home changes as the overlay."""
        path = (content / script).resolve()  # a symlink must stay inside the content
        if not path.is_relative_to(content.resolve()) or not path.is_file():
            raise BuildError(f"The postBuild script {script} is not a file in the repository.")
        path.chmod(path.stat().st_mode | 0o111)
        with path.open("rb") as handle:
            shebang = handle.read(2) == b"#!"
        inside = f"{HOME}/{script}"
        command = [inside] if shebang else ["/bin/bash", inside]
        box = self._sandbox(interp, content, prefix, uv=False)
        box.setenv({**session_environment(), "XDG_CACHE_HOME": "/tmp/.cache"})
        before = await asyncio.to_thread(snapshot, content)
        yield f"Running {script}"
        tail: deque[str] = deque(maxlen=TAIL)
        async with _Process.start(box.argv(command)) as proc:
            async for line in proc.lines():
                tail.append(line)
                yield line
            code = await proc.wait()
        if code != 0:
            last = next((line.strip()[:200] for line in reversed(tail) if line.strip()), "")
            output = "\n".join(tail)
            raise PostBuildFailed(
                f"postBuild failed with exit status {code}" + (f": {last}" if last else "."),
                hint="The build log shows the script's output.",
                log_message=f"postBuild failed with exit status {code}; its last lines:\n{output}",
            )
        overlay = prefix / META / "home-overlay"
        changed, deleted = await asyncio.to_thread(capture_overlay, content, before, overlay)
        (prefix / META / "home-deleted.json").write_text(json.dumps(deleted))
        yield f"postBuild changed {changed} file(s) and deleted {len(deleted)} in the home."

    def _write_metadata(self, spec: EnvSpec, interp: Interpreter, prefix: Path) -> None:
        info = {
            "builder": type(self).__name__,
            "builder_version": self.version,
            "interpreter": interp.identity,
            "interpreter_path": str(interp.path),
            "interpreter_prefixes": [str(p) for p in interp_prefixes(interp)],
            "python": interp.version,
            "home_overlay": (prefix / META / "home-overlay").is_dir(),
        }
        (prefix / META).mkdir(exist_ok=True)
        (prefix / META / "build.json").write_text(json.dumps(info, indent=1) + "\n")


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


# -- processes --------------------------------------------------------------


class _Process:
    """A subprocess in its own session; leaving ``start``'s context kills its group."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, argv: Sequence[str]) -> AsyncIterator[_Process]:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            limit=1 << 20,
        )
        try:
            yield cls(proc)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.shield(proc.wait())

    async def lines(self) -> AsyncIterator[str]:
        """Merged stdout+stderr, line by line, as it comes."""
        assert self.proc.stdout is not None
        while True:
            try:
                raw = await self.proc.stdout.readline()
            except ValueError:  # a line longer than the limit (dropped by asyncio)
                yield "[an over-long output line was cut]"
                continue
            if not raw:
                return
            yield raw.decode(errors="replace").rstrip("\r\n")

    async def wait(self) -> int:
        return await self.proc.wait()


# -- the session layout (also used by tests and the CLI) --------------------


def session_environment() -> dict[str, str]:
    """Variables a session (and postBuild) sees (reference: environment-files.md)."""
    return {
        "PATH": f"{ENV_PREFIX}/bin:{_BASE_PATH}",
        "HOME": HOME,
        "USER": USER,
        "NB_USER": USER,
        "NB_UID": str(UID),
        "NB_PYTHON_PREFIX": ENV_PREFIX,
        "REPO_DIR": HOME,
        "LANG": "C.UTF-8",
        "SHELL": "/bin/bash",
    }


def _etc_dir() -> Path:
    return passwd_file(Path(tempfile.gettempdir()) / f"binderbox-{os.getuid()}" / "etc")


def _base_sandbox(prefixes: Iterable[Path], content: Path | None) -> Sandbox:
    box = Sandbox(cwd=HOME)
    etc = _etc_dir()
    box.file(etc / "passwd", "/etc/passwd").file(etc / "group", "/etc/group")
    for path in prefixes:
        box.ro_bind(path)
    if content is not None:
        box.bind(content, HOME)
    else:
        box.tmpfs(HOME)
    return box.setenv(session_environment())


def env_interpreter_prefixes(env_path: Path) -> list[Path]:
    """The interpreter directories a built environment needs bound read-only."""
    info = env_path / META / "build.json"
    if info.is_file():
        return [Path(p) for p in json.loads(info.read_text())["interpreter_prefixes"]]
    for line in (env_path / "pyvenv.cfg").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return [Path(value.strip()).parent]
    raise FileNotFoundError(f"{env_path} is not a built environment")


def env_sandbox(env_path: Path, content: Path | None = None) -> Sandbox:
    """The session layout: env read-only at /srv/env, content writable at the home."""
    box = _base_sandbox(env_interpreter_prefixes(env_path), content and content.resolve())
    return box.ro_bind(env_path.resolve(), ENV_PREFIX)


def run_in_env(
    env_path: Path,
    argv: Sequence[str],
    *,
    content: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside a built environment's session layout; output captured."""
    box = env_sandbox(env_path, content)
    if env:
        box.setenv(env)
    return subprocess.run(
        box.argv(argv), capture_output=True, text=True, timeout=timeout, check=False
    )


# -- postBuild's home changes -----------------------------------------------

_Entry = tuple[str, int, int, str]


def snapshot(root: Path) -> dict[str, _Entry]:
    """Relative path -> (type, size, mtime_ns, link target) of everything under ``root``."""
    entries: dict[str, _Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            kind = _kind(info.st_mode)
            target = str(path.readlink()) if kind == "l" else ""
            entries[str(path.relative_to(root))] = (kind, info.st_size, info.st_mtime_ns, target)
    return entries


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "l"
    if stat.S_ISDIR(mode):
        return "d"
    return "f" if stat.S_ISREG(mode) else "o"


def capture_overlay(root: Path, before: dict[str, _Entry], overlay: Path) -> tuple[int, list[str]]:
    """Copy what changed under ``root`` since ``before`` into ``overlay``.

    Returns the number of files/links copied and the deleted relative paths.
    """
    after = snapshot(root)
    changed = 0
    for rel, entry in sorted(after.items()):
        if (before.get(rel) == entry and entry[0] != "d") or entry[0] == "o":
            continue
        if entry[0] == "d":
            if rel not in before:
                (overlay / rel).mkdir(parents=True, exist_ok=True)
            continue
        target = overlay / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target, follow_symlinks=False)
        changed += 1
    deleted = sorted(rel for rel in before if rel not in after)
    return changed, deleted


def apply_home_overlay(env_path: Path, home: Path) -> None:
    """Replay postBuild's home changes (if any) onto a session's copy of the content."""
    meta = env_path / META
    deleted = meta / "home-deleted.json"
    if deleted.is_file():
        for rel in json.loads(deleted.read_text()):
            path = home / rel
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    overlay = meta / "home-overlay"
    if overlay.is_dir():
        shutil.copytree(overlay, home, symlinks=True, dirs_exist_ok=True)
