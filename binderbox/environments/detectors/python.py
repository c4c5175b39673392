"""Python environments built with uv: Pipfile(.lock), requirements.txt, a root package.

The Python version: pipenv files, else ``runtime.txt``, else the root
package's ``requires-python`` (the default when it satisfies it, else the
newest of :data:`CANDIDATE_PYTHONS` that does), else the default.
``runtime.txt`` outside the range of a package's ``requires-python`` is an
error.  With no file at all, :class:`PythonDetector` gives the default
environment (``configured=False``).
"""

from __future__ import annotations

import re
import tomllib

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from ...errors import EnvironmentConfigError, UnsupportedEnvironment
from ..pipfile import read_pipenv
from ..requirements import read_requirements, resolve_inside
from .base import Checkout, Detector, Found

#: Python versions ``requires-python`` may select, oldest first
CANDIDATE_PYTHONS = ("3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13")

#: Python 2: uv, which builds every environment here, cannot make one (it needs 3.6+)
PY2_HINT = "Environments are built with uv, which needs Python 3.6 or newer: name Python 3.x."
_RUNTIME_PYTHON = re.compile(r"^python-(\d+)(?:\.(\d+))?(?:\.\d+)?$")


def runtime_python(checkout: Checkout, default_python: str) -> str | None:
    """The ``X.Y`` named by a ``runtime.txt`` holding ``python-...`` (None: no file)."""
    path = checkout.file("runtime.txt")
    if path is None:
        return None
    where = checkout.where(path)
    text = checkout.read(path).strip()
    match = _RUNTIME_PYTHON.match(text)
    if match is None:
        raise EnvironmentConfigError(
            f"{where}: {text[:60]!r} is not a Python version",
            hint="Write e.g. python-3.12 (or python-3 for the default 3.x).",
        )
    major, minor = match[1], match[2]
    if major != "3":
        raise UnsupportedEnvironment(f"{where}: Python {major} is not supported", hint=PY2_HINT)
    return default_python if minor is None else f"3.{int(minor)}"


def _satisfies(spec: SpecifierSet, python: str) -> bool:
    """True when some release of ``python`` (``X.Y``) is allowed by ``spec``."""
    return any(spec.contains(Version(f"{python}.{patch}"), prereleases=True) for patch in range(40))


def choose_python(
    requires: SpecifierSet | None, runtime: str | None, default_python: str, where: str
) -> str:
    """The Python of a package with ``requires``, given ``runtime.txt``'s (module docstring)."""
    if requires is None:
        return runtime or default_python
    if runtime is not None:
        if not _satisfies(requires, runtime):
            raise EnvironmentConfigError(
                f"runtime.txt asks for Python {runtime} but {where} requires-python is {requires}",
                hint="Make runtime.txt and requires-python agree.",
            )
        return runtime
    if _satisfies(requires, default_python):
        return default_python
    for candidate in reversed(CANDIDATE_PYTHONS):
        if _satisfies(requires, candidate):
            return candidate
    raise EnvironmentConfigError(
        f"{where}: requires-python {requires} allows none of Python "
        f"{CANDIDATE_PYTHONS[0]} to {CANDIDATE_PYTHONS[-1]}"
    )


def root_package(checkout: Checkout) -> tuple[bool, SpecifierSet | None, list[str]]:
    """Is the root a package?  Its requires-python, and the files that said so."""
    requires: SpecifierSet | None = None
    is_package, sources = False, []
    pyproject = checkout.root_file("pyproject.toml")
    if pyproject is not None:
        try:
            data = tomllib.loads(checkout.read(pyproject))
        except tomllib.TOMLDecodeError as e:
            raise EnvironmentConfigError(f"pyproject.toml: not valid TOML ({e})") from None
        project = data.get("project")
        if isinstance(project, dict) and isinstance(data.get("build-system"), dict):
            is_package = True
            sources.append("pyproject.toml")
            text = project.get("requires-python")
            if text is not None:
                try:
                    requires = SpecifierSet(str(text))
                except InvalidSpecifier:
                    raise EnvironmentConfigError(
                        f"pyproject.toml: requires-python {text!r} is not a version specifier"
                    ) from None
    setup = checkout.root_file("setup.py")
    if setup is not None:
        resolve_inside(checkout.repo, setup, "setup.py")
        is_package = True
        sources.append("setup.py")
    return is_package, requires, sources


def _runtime_sources(checkout: Checkout) -> list[str]:
    runtime = checkout.file("runtime.txt")
    return [checkout.where(runtime)] if runtime is not None else []


class PipenvDetector(Detector):
    """``Pipfile.lock`` (wins) or ``Pipfile``: the locked or declared packages."""

    kind = "python"

    def detect(self, checkout: Checkout) -> Found | None:
        if checkout.file("Pipfile.lock") is None and checkout.file("Pipfile") is None:
            return None
        runtime = runtime_python(checkout, checkout.default_python)
        pipenv = read_pipenv(checkout.repo, checkout.base)
        if pipenv.python is not None and not pipenv.python.startswith("3."):
            message = f"{pipenv.sources[0]}: Python {pipenv.python} is not supported"
            raise UnsupportedEnvironment(message, hint=PY2_HINT)
        return Found(
            kind="python",
            python=pipenv.python or runtime or checkout.default_python,
            requirements=list(pipenv.lines),
            sources=[*pipenv.sources, *_runtime_sources(checkout)],
            local=pipenv.local,
        )


class PythonDetector(Detector):
    """``runtime.txt``, ``requirements.txt``, a root package; else the default environment."""

    kind = "python"

    def detect(self, checkout: Checkout) -> Found:
        runtime = runtime_python(checkout, checkout.default_python)
        found = Found(kind="python", python=checkout.default_python, configured=False)
        found.sources = _runtime_sources(checkout)
        found.configured = runtime is not None
        requirements = checkout.file("requirements.txt")
        if requirements is not None:
            parsed = read_requirements(checkout.repo, requirements)
            found.requirements, found.local = list(parsed.lines), parsed.local
            found.sources.extend(parsed.sources)
            found.configured = True
        found.install_repo, requires, package_sources = root_package(checkout)
        found.sources.extend(package_sources)
        found.configured = found.configured or found.install_repo
        found.python = choose_python(requires, runtime, checkout.default_python, "pyproject.toml")
        return found
