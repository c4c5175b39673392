"""What a Python environment is made of, apart from how it is built.

:class:`PythonChoices` holds :class:`~binderbox.builders.python.PythonBuilder`'s
choices (its settings are configured as ``PythonBuilder.<name>``):

* which CPython: found on the machine through real paths, never shims
  (:mod:`.interpreters`), from ``min_python`` (3.6) up;
* whether the Jupyter server runs in it, or, for Pythons older than
  ``kernel_only_below`` (3.8), beside it in ``server_python`` with only a kernel
  in the repository's Python (:mod:`.server_env`); the key covers both
  interpreters (:meth:`PythonChoices.interpreter`);
* the lines installed (:meth:`PythonChoices.requirement_lines`): the
  repository's, what a session needs (``session_packages`` and ``jupyterhub``,
  a user's pin winning), the seed packages, the repository itself;
* metadata for old releases uv refuses (``dependency_metadata``, added to the
  shipped table, :mod:`.uvconfig`).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from traitlets import Bool, Dict, List, TraitError, Unicode, default, validate

from ..environments import EnvSpec
from ..errors import PythonVersionUnavailable
from . import interpreters, server_env, uvconfig
from .base import Builder
from .interpreters import Interpreter


def _installed_jupyterhub() -> str:
    try:
        return metadata.version("jupyterhub")
    except metadata.PackageNotFoundError:
        return ""


class PythonChoices(Builder):
    """The interpreter and the packages of Python environments.  See the module docstring."""

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
        "3.6", help="The oldest X.Y version offered; older interpreters on the machine are ignored."
    ).tag(config=True)

    kernel_only_below = Unicode(
        "3.8",
        help="""Interpreters older than this X.Y get only a kernel (ipykernel) in their
        environment; the Jupyter server runs beside it in server_python
        (see builders/server_env.py).  Empty: never.""",
    ).tag(config=True)

    server_python = Unicode(
        help="""The X.Y of the Jupyter server beside old Pythons' kernels.
        Default: the Python binderbox runs on."""
    ).tag(config=True)

    dependency_metadata = List(
        Dict(),
        help="""Extra uv [[dependency-metadata]] entries (name, version, requires-dist,
        requires-python, provides-extras) standing in for releases whose metadata uv
        refuses; they add to (or, same name and version, replace) the shipped ones in
        builders/dependency_metadata.toml.""",
    ).tag(config=True)

    uv_path = Unicode(help="The uv executable.  Default: the one installed with binderbox.").tag(
        config=True
    )

    session_packages = List(
        Unicode(),
        ["jupyterlab", "notebook", "ipykernel<7", "jupyter-server"],
        help="""Requirements every environment gets besides jupyterhub, resolved together
        with the repository's requirements (a user's requirement naming one of them wins).
        ipykernel stays below 7 by default: ipykernel 7 can leave a request on a fresh
        connection unread until the next connection (ipython/ipykernel#1554, open), which a
        visitor sees as a first cell that never runs; CI saw it with 7.4.""",
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

    @default("server_python")
    def _default_server_python(self) -> str:
        return f"{sys.version_info.major}.{sys.version_info.minor}"

    @validate("dependency_metadata")
    def _check_dependency_metadata(self, proposal: dict[str, object]) -> object:
        try:
            uvconfig.merged(proposal["value"])  # type: ignore[arg-type]
        except ValueError as e:
            raise TraitError(f"PythonBuilder.dependency_metadata: {e}") from None
        return proposal["value"]

    @default("jupyterhub_version")
    def _default_jupyterhub_version(self) -> str:
        return _installed_jupyterhub()

    @default("jupyterhub_requires_python")
    def _default_jupyterhub_requires_python(self) -> str:
        if self.jupyterhub_version and self.jupyterhub_version == _installed_jupyterhub():
            found = metadata.metadata("jupyterhub").get_all("Requires-Python") or [""]
            return str(found[0])
        return ""

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
        return self._find(spec.python, f"Python {spec.python} is not available on this server.")

    def _find(self, python: str, missing: str) -> Interpreter:
        wanted = interpreters.version_tuple(python)
        floor = interpreters.version_tuple(self.min_python) or (0, 0)
        interp = None
        if wanted and wanted >= floor:  # probe only what can fit
            minor = f"{wanted[0]}.{wanted[1]}"
            interp = interpreters.best(self.interpreters(minor), minor)
        if interp is None:
            offered = interpreters.available_minors(self.interpreters(), self.min_python)
            raise PythonVersionUnavailable(
                missing, hint=f"Available: {', '.join(offered) or 'none'}."
            )
        return interp

    def server_interpreter(self, interp: Interpreter) -> Interpreter | None:
        """The Jupyter server's interpreter when ``interp`` gets only a kernel
        (builders/server_env.py), else None."""
        if not server_env.kernel_only(interp, self.kernel_only_below):
            return None
        missing = f"Python {interp.minor} needs a Jupyter server in Python {self.server_python}"
        return self._find(self.server_python, f"{missing}, which is not on this server.")

    def requirement_lines(self, spec: EnvSpec, interp: Interpreter) -> list[str]:
        """The one requirements file installed (see the module docstring)."""
        named = {name for name in map(requirement_name, spec.requirements) if name}
        lines = ["# the repository's requirements", *spec.requirements, "# what a session needs"]
        if server_env.kernel_only(interp, self.kernel_only_below):  # the server is beside
            lines += [] if "ipykernel" in named else ["ipykernel"]
        else:
            lines += [p for p in self.session_packages if requirement_name(p) not in named]
            if self.jupyterhub_version and "jupyterhub" not in named:
                lines.append(self._jupyterhub_line(interp))
        if self.seed:  # what ``uv venv --seed`` adds, resolved and fetched with the rest
            seeds = ["pip", "setuptools", "wheel"] if interp.version_tuple() < (3, 12) else ["pip"]
            lines += [name for name in seeds if name not in named]
        if spec.install_repo:
            lines += ["# the repository itself", "."]
        return lines

    def server_lines(self, server: Interpreter) -> list[str]:
        """What the server's environment beside an old Python's kernel gets."""
        lines = list(self.session_packages)
        return lines + ([self._jupyterhub_line(server)] if self.jupyterhub_version else [])

    def _jupyterhub_line(self, interp: Interpreter) -> str:
        try:
            fits = SpecifierSet(self.jupyterhub_requires_python).contains(
                interp.version, prereleases=True
            )
        except InvalidSpecifier:
            fits = True
        return f"jupyterhub=={self.jupyterhub_version}" if fits else "jupyterhub"


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
