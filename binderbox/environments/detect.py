"""Repository conventions -> a normalised :class:`EnvSpec`.

:func:`detect` reads a checked-out repository the way repo2docker does (see
``environment-files.md``) and returns the spec of the environment to build:

* where: a ``binder/`` or ``.binder/`` folder holds all configuration and
  the root is then ignored for configuration (both folders: an error);
  ``setup.py``, ``pyproject.toml`` and ``DESCRIPTION`` count only at the
  root and only without such a folder;
* which kind, first match: ``Dockerfile``; ``Project.toml`` /
  ``JuliaProject.toml``; ``default.nix``; R (``runtime.txt`` naming
  ``r-...``, a root ``DESCRIPTION``, ``install.R``); ``environment.yml`` /
  ``.yaml``; pipenv (``Pipfile.lock`` / ``Pipfile``); Python
  (``runtime.txt``, ``requirements.txt``, a root package); nothing: the
  default environment.  Kinds not built yet raise
  :class:`~binderbox.errors.UnsupportedEnvironment` naming the file, as does
  an ``apt.txt`` that lists packages (one with only comments is ignored);
* the Python version: pipenv files, else ``runtime.txt``, else the root
  package's ``requires-python`` (``default_python`` when it satisfies it,
  else the newest of :data:`CANDIDATE_PYTHONS` that does), else
  ``default_python``.  ``runtime.txt`` outside the range of a package's
  ``requires-python`` is an error;
* ``postBuild`` (its text is part of the spec) and ``start`` (its path
  only) must be regular files inside the repository;
* ``content_digest`` (:mod:`.digest`) is set only when the build needs the
  repository content: local requirement references, a root package, or a
  postBuild script.

Only environment files count as configuration: a repository with nothing
but a postBuild or start script gets the default environment, which a site
may refuse (``allow_default=False``).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from ..errors import EnvironmentConfigError, UnsupportedEnvironment
from .digest import content_digest
from .pipfile import read_pipenv
from .requirements import read_requirements, read_text, relpath, resolve_inside
from .spec import EnvSpec

#: Python versions ``requires-python`` may select, oldest first
CANDIDATE_PYTHONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
CONFIG_DIRS = ("binder", ".binder")

_RUNTIME_PYTHON = re.compile(r"^python-(\d+)(?:\.(\d+))?(?:\.\d+)?$")

_UNSUPPORTED: tuple[tuple[tuple[str, ...], str], ...] = (
    (("Dockerfile",), "Dockerfile builds are not supported yet"),
    (("Project.toml", "JuliaProject.toml"), "Julia environments are not supported yet"),
    (("default.nix",), "Nix environments are not supported yet"),
)
_HINT = "binderbox builds Python environments: use requirements.txt, Pipfile or runtime.txt."


def _present(path: Path) -> bool:
    return path.is_file() or path.is_symlink()


def config_dir(repo: Path) -> str:
    """``"binder"``, ``".binder"`` or ``""``: where configuration is read."""
    found = [name for name in CONFIG_DIRS if (repo / name).is_dir()]
    if len(found) > 1:
        raise EnvironmentConfigError(
            "Both binder/ and .binder/ exist: configuration is ambiguous",
            hint="Keep only one of the two folders.",
        )
    return found[0] if found else ""


def _unsupported(repo: Path, path: Path, what: str) -> UnsupportedEnvironment:
    return UnsupportedEnvironment(f"{relpath(repo, path)}: {what}", hint=_HINT)


def _refuse_other_kinds(repo: Path, base: Path, at_root: bool) -> None:
    """Raise for the first environment kind (in precedence order) not built yet."""
    for names, what in _UNSUPPORTED:
        for name in names:
            if _present(base / name):
                raise _unsupported(repo, base / name, what)
    runtime = base / "runtime.txt"
    if _present(runtime) and read_text(repo, runtime).strip().startswith("r-"):
        raise _unsupported(repo, runtime, "R environments are not supported yet")
    r_files = [repo / "DESCRIPTION"] if at_root else []
    for path in [*r_files, base / "install.R"]:
        if _present(path):
            raise _unsupported(repo, path, "R environments are not supported yet")
    for name in ("environment.yml", "environment.yaml"):
        if _present(base / name):
            raise _unsupported(repo, base / name, "conda environments are not supported yet")


def _refuse_apt(repo: Path, base: Path) -> None:
    apt = base / "apt.txt"
    if not _present(apt):
        return
    lines = [line.split("#", 1)[0].strip() for line in read_text(repo, apt).splitlines()]
    if any(lines):
        raise _unsupported(repo, apt, "system packages (apt.txt) are not supported yet")


def runtime_python(repo: Path, path: Path, default_python: str) -> str:
    """The ``X.Y`` named by a ``runtime.txt`` holding ``python-...``."""
    where = relpath(repo, path)
    text = read_text(repo, path).strip()
    match = _RUNTIME_PYTHON.match(text)
    if match is None:
        raise EnvironmentConfigError(
            f"{where}: {text[:60]!r} is not a Python version",
            hint="Write e.g. python-3.12 (or python-3 for the default 3.x).",
        )
    major, minor = match[1], match[2]
    if major != "3":
        raise UnsupportedEnvironment(f"{where}: Python {major} is not supported", hint=_HINT)
    return default_python if minor is None else f"3.{int(minor)}"


def _satisfies(spec: SpecifierSet, python: str) -> bool:
    """True when some release of ``python`` (``X.Y``) is allowed by ``spec``."""
    return any(spec.contains(Version(f"{python}.{patch}"), prereleases=True) for patch in range(40))


def _choose_python(
    requires: SpecifierSet | None, runtime: str | None, default_python: str, where: str
) -> str:
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


@dataclass
class _Found:
    """What the Python/pipenv stage collected."""

    python: str
    requirements: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    local: bool = False
    install_repo: bool = False
    configured: bool = False


def _root_package(repo: Path) -> tuple[bool, SpecifierSet | None, list[str]]:
    """Is the root a package?  Its requires-python, and the files that said so."""
    pyproject = repo / "pyproject.toml"
    requires: SpecifierSet | None = None
    is_package, sources = False, []
    if _present(pyproject):
        try:
            data = tomllib.loads(read_text(repo, pyproject))
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
    if _present(repo / "setup.py"):
        resolve_inside(repo, repo / "setup.py", "setup.py")
        is_package = True
        sources.append("setup.py")
    return is_package, requires, sources


def _python_kind(repo: Path, base: Path, at_root: bool, default_python: str) -> _Found:
    runtime_file = base / "runtime.txt"
    runtime = None
    found = _Found(python=default_python)
    if _present(runtime_file):
        runtime = runtime_python(repo, runtime_file, default_python)
        found.sources.append(relpath(repo, runtime_file))
        found.configured = True
    if _present(base / "Pipfile.lock") or _present(base / "Pipfile"):
        pipenv = read_pipenv(repo, base)
        found.python = pipenv.python or runtime or default_python
        found.requirements, found.local = pipenv.lines, pipenv.local
        found.sources[:0] = pipenv.sources
        found.configured = True
        return found
    requirements_file = base / "requirements.txt"
    if _present(requirements_file):
        parsed = read_requirements(repo, requirements_file)
        found.requirements, found.local = parsed.lines, parsed.local
        found.sources.extend(parsed.sources)
        found.configured = True
    requires = None
    if at_root:
        found.install_repo, requires, package_sources = _root_package(repo)
        found.sources.extend(package_sources)
        found.configured = found.configured or found.install_repo
    found.python = _choose_python(requires, runtime, default_python, "pyproject.toml")
    return found


def _script(repo: Path, base: Path, name: str) -> Path | None:
    path = base / name
    if not (path.exists() or path.is_symlink()):
        return None
    where = relpath(repo, path)
    resolved = resolve_inside(repo, path, where)
    if not resolved.is_file():
        raise EnvironmentConfigError(f"{where}: not a regular file")
    return path


def detect(repo: Path, *, default_python: str = "3.10", allow_default: bool = True) -> EnvSpec:
    """The environment spec of the repository checked out at ``repo``.

    See the module docstring.  Raises
    :class:`~binderbox.errors.EnvironmentConfigError` (or its subclass
    :class:`~binderbox.errors.UnsupportedEnvironment`) with a one-line
    message naming the file at fault.
    """
    repo = Path(repo)
    folder = config_dir(repo)
    base = repo / folder if folder else repo
    at_root = not folder
    _refuse_other_kinds(repo, base, at_root)
    found = _python_kind(repo, base, at_root, default_python)
    _refuse_apt(repo, base)
    if not found.configured and not allow_default:
        raise EnvironmentConfigError(
            "No environment configuration found in the repository",
            hint="Add a requirements.txt (or binder/requirements.txt) listing its packages.",
        )
    postbuild = _script(repo, base, "postBuild")
    start = _script(repo, base, "start")
    postbuild_text = read_text(repo, postbuild) if postbuild is not None else None
    sources = list(found.sources)
    for script in (postbuild, start):
        if script is not None:
            sources.append(relpath(repo, script))
    digest = None
    if found.local or found.install_repo or postbuild is not None:
        try:
            digest = content_digest(repo)
        except OSError as e:
            raise EnvironmentConfigError(f"The repository cannot be read ({e})") from None
    return EnvSpec(
        kind="python",
        python=found.python,
        requirements=tuple(found.requirements),
        install_repo=found.install_repo,
        postbuild=relpath(repo, postbuild) if postbuild is not None else None,
        postbuild_text=postbuild_text,
        start=relpath(repo, start) if start is not None else None,
        config_dir=folder,
        content_digest=digest,
        sources=tuple(dict.fromkeys(sources)),
    )
