"""Finding CPython interpreters on this machine (uv cannot download any here).

Where we look, in order of preference (the first place wins between two
interpreters of the same full version; otherwise the highest patch release
of the requested ``X.Y`` wins):

1. the operator's extra search directories (``PythonBuilder.search_dirs``):
   each may be a ``bin`` directory holding ``python3.X``, a prefix holding
   ``bin/python3.X``, or a directory of prefixes (like pyenv's ``versions``);
2. interpreters uv manages (``uv python dir``, or ``$UV_PYTHON_INSTALL_DIR``);
3. pyenv's (``$PYENV_ROOT/versions/*``, default ``~/.pyenv``);
4. the system's ``/usr/local/bin/python3.X`` and ``/usr/bin/python3.X``.

Shims (pyenv's ``shims/``) are never used: they are scripts that pick an
interpreter at run time.  Each candidate is run once to learn its
implementation, full version, platform and prefix; answers are cached per
path and modification time.  A lookup for one ``X.Y`` probes only the
executables named ``pythonX.Y`` (the probe still checks the version); the
whole machine is probed only to list what is available when none fits.

The *identity* of an interpreter (``Interpreter.identity``, part of the
environment key) is ``<implementation>-<full version>-<platform>``, e.g.
``cpython-3.10.13-linux-x86_64``.  It changes when the interpreter is
upgraded (a new patch release gives a new key, hence a rebuild), but not
between two machines with the same version, nor when the same version is
installed at another path.  The path is recorded with each built environment
instead (see ``binderbox.builders.python.env_interpreter_prefix``): a
session binds that prefix read-only, and a store may treat an environment
whose interpreter prefix has disappeared as unusable.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^python(\d+)\.(\d+)$")
_PROBE = (
    "import json, platform, sys, sysconfig; print(json.dumps({"
    "'implementation': sys.implementation.name, "
    "'version': platform.python_version(), "
    "'platform': sysconfig.get_platform(), "
    "'prefix': sys.base_prefix, 'exec_prefix': sys.base_exec_prefix}))"
)


@dataclass(frozen=True)
class Interpreter:
    """One interpreter found on the machine."""

    #: the resolved executable (``.../bin/python3.10``)
    path: Path
    #: ``cpython``
    implementation: str
    #: the full version, e.g. ``3.10.13``
    version: str
    #: ``sysconfig.get_platform()``, e.g. ``linux-x86_64``
    platform: str
    #: ``sys.base_prefix`` (bound read-only into sandboxes)
    prefix: Path
    #: ``sys.base_exec_prefix`` (usually equal to ``prefix``)
    exec_prefix: Path

    @property
    def minor(self) -> str:
        """``X.Y``."""
        return ".".join(self.version.split(".")[:2])

    @property
    def identity(self) -> str:
        """The key part, e.g. ``cpython-3.10.13-linux-x86_64`` (see module docstring)."""
        return f"{self.implementation}-{self.version}-{self.platform}"

    def version_tuple(self) -> tuple[int, ...]:
        """The version as integers, for sorting (pre-releases sort as their base)."""
        return tuple(int(re.sub(r"\D.*", "", part) or 0) for part in self.version.split(".")[:3])


def version_tuple(text: str) -> tuple[int, ...] | None:
    """``"3.10"`` -> ``(3, 10)``; ``None`` when ``text`` is not ``X.Y``."""
    match = re.fullmatch(r"(\d+)\.(\d+)", text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def uv_python_dir(uv: str) -> Path | None:
    """Where uv keeps the interpreters it manages (``uv python dir``)."""
    configured = os.environ.get("UV_PYTHON_INSTALL_DIR")
    return Path(configured) if configured else _uv_python_dir(uv)


@functools.cache
def _uv_python_dir(uv: str) -> Path | None:
    try:
        out = subprocess.run(
            [uv, "python", "dir"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip()) if out.stdout.strip() else None


def search_roots(
    *, extra: Iterable[str | Path], uv_dir: Path | None, pyenv_root: Path | None
) -> list[Path]:
    """The directories searched, in order of preference (see module docstring)."""
    roots: list[Path] = [Path(d).expanduser() for d in extra]
    if uv_dir is not None:
        roots.append(uv_dir)
    if pyenv_root is not None:
        roots.append(pyenv_root / "versions")
    roots += [Path("/usr/local/bin"), Path("/usr/bin")]
    return roots


def candidates(roots: Iterable[Path], minor: str | None = None) -> Iterator[Path]:
    """Executables named ``pythonX.Y`` in, under, or one prefix below each root.

    ``minor``: only those named ``python<minor>`` (before resolving links).
    """
    seen: set[Path] = set()
    name = "python*.*" if minor is None else f"python{minor}"
    for root in roots:
        for pattern in (name, f"bin/{name}", f"*/bin/{name}"):
            for path in sorted(root.glob(pattern)):
                if not _NAME.match(path.name) or not os.access(path, os.X_OK):
                    continue
                real = path.resolve()
                if real not in seen and real.is_file():
                    seen.add(real)
                    yield real


_cache: dict[tuple[Path, int, int], Interpreter | None] = {}


def _cache_key(path: Path) -> tuple[Path, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return path, stat.st_ino, stat.st_mtime_ns


def probe(path: Path) -> Interpreter | None:
    """Run ``path`` once to describe it; ``None`` when it does not work."""
    key = _cache_key(path)
    if key is None:
        return None
    if key not in _cache:
        _cache[key] = _probe(path)
    return _cache[key]


def _probe(path: Path) -> Interpreter | None:
    try:
        out = subprocess.run(
            [str(path), "-I", "-S", "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        )
        info = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return Interpreter(
        path=path,
        implementation=str(info["implementation"]),
        version=str(info["version"]),
        platform=str(info["platform"]),
        prefix=Path(info["prefix"]),
        exec_prefix=Path(info["exec_prefix"]),
    )


def find_all(roots: Iterable[Path], minor: str | None = None) -> list[Interpreter]:
    """Every working CPython under ``roots`` (of version ``minor`` when given),
    best first within each ``X.Y``."""
    paths = list(candidates(roots, minor))
    new = [path for path in paths if _cache_key(path) not in _cache]
    if len(new) > 1:  # each probe is a process: the first lookup runs them in parallel
        with concurrent.futures.ThreadPoolExecutor(min(8, len(new))) as pool:
            list(pool.map(probe, new))
    probed = [probe(path) for path in paths]
    found = [
        (order, interp)
        for order, interp in enumerate(probed)
        if interp is not None
        and interp.implementation == "cpython"
        and (minor is None or interp.minor == minor)
    ]
    found.sort(key=lambda item: (tuple(-v for v in item[1].version_tuple()), item[0]))
    return [interp for _, interp in found]


def best(interpreters: Iterable[Interpreter], minor: str) -> Interpreter | None:
    """The first (best) interpreter of version ``minor`` (``X.Y``)."""
    return next((i for i in interpreters if i.minor == minor), None)


def available_minors(interpreters: Iterable[Interpreter], minimum: str) -> list[str]:
    """The ``X.Y`` versions present, at least ``minimum``, in ascending order."""
    floor = version_tuple(minimum) or (0, 0)
    minors = {i.minor for i in interpreters if i.version_tuple()[:2] >= floor}
    return sorted(minors, key=lambda m: version_tuple(m) or (0, 0))
