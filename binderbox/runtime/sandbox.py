"""Bubblewrap sandboxes: the one place that knows bwrap's command line.

Builds (uv installs that may run ``setup.py``, ``postBuild``, data code
sources) and sessions (``jupyterhub-singleuser``) run repository code we do
not trust.  They run inside :class:`Sandbox`: a fresh user namespace (uid
1000 ``jovyan`` inside; no further user namespaces may be made in it), own
pid/ipc/uts namespaces, a read-only view of the system directories, and only
the host paths the caller binds.  The process dies with its parent.  Where it
runs from -- which host uid, which network, which cgroups -- is
:class:`~binderbox.runtime.host.SandboxHost`'s part.

Usage::

    box = Sandbox(cwd=HOME)
    box.ro_bind(interpreter_prefix)
    box.bind(tmp_env_dir, ENV_PREFIX)
    argv = box.argv(["python", "-c", "print(1)"])

Which bubblewrap: system layers (apt.txt, see
:mod:`binderbox.builders.aptlayer`) are shown with overlayfs mounts that
bubblewrap makes inside the sandbox's own user and mount namespace
(``--overlay-src``/``--ro-overlay``, bubblewrap 0.9 and newer).  Debian 12's
bubblewrap is 0.8, without them, so ``scripts/setup`` builds the current
Debian stable source package of bubblewrap (fetched with ``apt-get source``
from the Debian mirror, checked against its signed index) into
:data:`PROJECT_BWRAP`, which :func:`bwrap_path` prefers.  Why this way rather
than a kernel overlay mounted by root before the sandbox drops privileges:
the overlay is made by the unprivileged sandbox itself (Linux allows
overlayfs in user namespaces since 5.11), so it works for leased host uids
and for a service that is not root alike, it needs no mount namespace
bookkeeping on the host and dies with the sandbox, and the mount stays in the
one place that knows bwrap's command line.  A read-only bind of the layer at
another path with ``PATH``/``LD_LIBRARY_PATH`` pointed at it works only for
the simplest packages (plugins, data files and alternatives look under
``/usr``).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BinderboxError

#: system directories every sandbox sees read-only (when they exist)
SYSTEM_DIRS = ("/usr", "/etc/alternatives", "/etc/ssl", "/etc/ca-certificates", "/opt")
#: single files from /etc a program expects (name resolution, TLS, time zone)
SYSTEM_FILES = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/gitconfig",
)
#: merged-/usr symlinks of Debian
USR_LINKS = {"/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib", "/lib64": "usr/lib64"}

UID = 1000
GID = 1000
USER = "jovyan"


class SandboxUnavailable(BinderboxError):
    """bubblewrap is missing or cannot create namespaces here."""

    reason = "sandbox"


#: where scripts/setup installs a bubblewrap with overlay support (see the module docstring)
PROJECT_BWRAP = "/usr/local/libexec/binderbox/bwrap"
#: the first bubblewrap release with --overlay-src / --ro-overlay
OVERLAY_VERSION = (0, 9)


def bwrap_path() -> str:
    """The bwrap executable, or a clear error saying how to get it: ``$BINDERBOX_BWRAP``,
    else :data:`PROJECT_BWRAP` when scripts/setup installed it, else ``bwrap`` on PATH."""
    chosen = os.environ.get("BINDERBOX_BWRAP")
    if chosen:
        return chosen
    if os.access(PROJECT_BWRAP, os.X_OK):
        return PROJECT_BWRAP
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed.",
            hint="Install it with `apt-get install bubblewrap` (scripts/setup does).",
        )
    return path


@functools.cache
def _bwrap_version(path: str) -> tuple[int, ...]:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError:
        return ()
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(part) for part in found.groups() if part is not None) if found else ()


def require_overlays() -> None:
    """Raise :class:`SandboxUnavailable` unless :func:`bwrap_path` can mount overlays."""
    path = bwrap_path()
    version = _bwrap_version(path)
    if version < OVERLAY_VERSION:
        shown = ".".join(map(str, version)) or "unknown"
        raise SandboxUnavailable(
            f"System packages (apt.txt) need bubblewrap 0.9 or newer; {path} is {shown}.",
            hint="scripts/setup builds one into " + PROJECT_BWRAP + ".",
        )


@dataclass
class Sandbox:
    """A bubblewrap command line under construction.  See the module docstring."""

    cwd: str = "/"
    hostname: str = "binder"
    env: dict[str, str] = field(default_factory=dict)
    _mounts: list[str] = field(default_factory=list)
    _files: dict[str, str] = field(default_factory=dict)

    def ro_bind(self, host: str | Path, inside: str | Path | None = None) -> Sandbox:
        """Show ``host`` read-only at ``inside`` (default: the same path)."""
        self._mounts += ["--ro-bind", str(host), str(inside or host)]
        return self

    def bind(self, host: str | Path, inside: str | Path | None = None) -> Sandbox:
        """Show ``host`` writable at ``inside`` (default: the same path)."""
        self._mounts += ["--bind", str(host), str(inside or host)]
        return self

    def symlink(self, target: str | Path, inside: str | Path) -> Sandbox:
        """A symbolic link at ``inside`` pointing to ``target`` (a path inside the sandbox)."""
        self._mounts += ["--symlink", str(target), str(inside)]
        return self

    def ro_overlay(self, sources: Sequence[str | Path], inside: str | Path) -> Sandbox:
        """Show the host folders ``sources`` merged read-only at ``inside``, the last on
        top (an overlayfs mount the sandbox makes; see :func:`require_overlays`)."""
        if len(sources) < 2:
            raise ValueError("an overlay needs at least two sources")
        for source in sources:
            self._mounts += ["--overlay-src", str(source)]
        self._mounts += ["--ro-overlay", str(inside)]
        return self

    def overlay(
        self, sources: Sequence[str | Path], upper: str | Path, work: str | Path, inside: str
    ) -> Sandbox:
        """Show the host folders ``sources`` merged at ``inside``, writable: what is
        written goes to the host folder ``upper`` (``work``: an empty folder on its
        filesystem), the sources stay as they are."""
        for source in sources:
            self._mounts += ["--overlay-src", str(source)]
        self._mounts += ["--overlay", str(upper), str(work), inside]
        return self

    def tmpfs(self, inside: str) -> Sandbox:
        """An empty private writable directory at ``inside``."""
        self._mounts += ["--tmpfs", inside]
        return self

    def file(self, host: str | Path, inside: str) -> Sandbox:
        """Show a single host file read-only at ``inside`` (e.g. /etc/passwd)."""
        self._files[inside] = str(host)
        return self

    def setenv(self, values: Mapping[str, str]) -> Sandbox:
        """Set environment variables (the sandbox starts with none)."""
        self.env.update(values)
        return self

    def mount_options(self) -> list[str]:
        """The mounts asked for so far, as bubblewrap options (``--bind HOST INSIDE``...)."""
        return list(self._mounts)

    def argv(self, command: Sequence[str]) -> list[str]:
        """The full ``bwrap ... -- command`` argument list."""
        return [bwrap_path(), *self.args(command)]

    def options_file(self) -> bytes:
        """:meth:`options` NUL-separated, for ``bwrap --args FD -- command``: what the
        sandbox is told (its environment: tokens) never shows on a command line."""
        options = self.options()
        if any("\0" in arg for arg in options):  # a NUL would end one option, start another
            raise ValueError("a sandbox option holds a NUL character")
        return b"".join(arg.encode() + b"\0" for arg in options)

    def args(self, command: Sequence[str]) -> list[str]:
        """bubblewrap's arguments for ``command`` (without the executable)."""
        return [*self.options(), "--", *command]

    def options(self) -> list[str]:
        """bubblewrap's options: namespaces, mounts, environment (no command)."""
        args = [
            "--unshare-user",
            "--uid",
            str(UID),
            "--gid",
            str(GID),
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--hostname",
            self.hostname,
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/var/tmp",
        ]
        args += _system_mounts()
        for inside, host in sorted(self._files.items()):
            args += ["--ro-bind", host, inside]
        args += self._mounts
        args += ["--chdir", self.cwd, "--clearenv"]
        for name, value in sorted(self.env.items()):
            args += ["--setenv", name, value]
        return args


def _system_mounts() -> list[str]:
    args: list[str] = []
    for link, target in USR_LINKS.items():
        if Path(link).is_symlink():
            args += ["--symlink", target, link]
        elif Path(link).is_dir():
            args += ["--ro-bind", link, link]
    for path in SYSTEM_DIRS + SYSTEM_FILES:
        if Path(path).exists():
            args += ["--ro-bind", path, path]
    return args


#: the passwd/group pair every sandbox sees (uid 1000 ``jovyan``)
PASSWD_TEXT = f"root:x:0:0:root:/root:/bin/sh\n{USER}:x:{UID}:{GID}:{USER}:/home/{USER}:/bin/bash\n"
GROUP_TEXT = f"root:x:0:\n{USER}:x:{GID}:\n"
#: directories whose pair this process wrote or checked (see :func:`passwd_file`)
_checked: set[Path] = set()
_writing = threading.Lock()


def passwd_file(directory: Path) -> Path:
    """Write (once) an /etc/passwd + /etc/group pair naming uid 1000 ``jovyan``.

    Returns the directory holding ``passwd`` and ``group``; bind each with
    :meth:`Sandbox.file`.  Programs that look up their user (git, pip, Jupyter)
    need an entry for the uid they run as.  The files are written (or read
    and checked) once per process and directory; later calls only see that
    they still exist, and write them again when a tmp cleaner removed them.
    """
    passwd, group = directory / "passwd", directory / "group"
    if directory in _checked and passwd.is_file() and group.is_file():
        return directory
    with _writing:
        directory.mkdir(parents=True, exist_ok=True)
        for path, text in ((passwd, PASSWD_TEXT), (group, GROUP_TEXT)):
            if not path.is_file() or path.read_text() != text:
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(text)
                tmp.rename(path)
        _checked.add(directory)
    return directory
