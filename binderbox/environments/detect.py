"""Repository conventions -> a normalised :class:`EnvSpec`.

:func:`detect` reads a checked-out repository the way repo2docker does (see
``environment-files.md``) and returns the spec of the environment to build:

* where: a ``binder/`` or ``.binder/`` folder holds all configuration and
  the root is then ignored for configuration (both folders: an error);
  ``setup.py``, ``pyproject.toml`` and ``DESCRIPTION`` count only at the
  root and only without such a folder;
* the base layer: the first of :data:`~.detectors.DETECTORS` that
  recognises its files (repo2docker's precedence: ``Dockerfile``, Julia and
  Nix are refused naming the file; then R, conda, ``uv.lock``, ``pylock.toml``,
  pipenv, Python; nothing:
  the default environment).  Each detector is a small class in
  :mod:`binderbox.environments.detectors`;
* the layers of every kind: ``apt.txt`` (system packages), ``postBuild``
  (its text is part of the spec) and ``start`` (its path only); both scripts
  must be regular files inside the repository;
* ``content_digest`` (:mod:`.digest`) is set only when the build needs the
  repository content: local requirement references, a root package, or a
  postBuild script.

Only environment files count as configuration: a repository with nothing
but a postBuild or start script gets the default environment, which a site
may refuse (``allow_default=False``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EnvironmentConfigError
from .detectors import DETECTORS, Checkout, Found, read_apt
from .detectors.python import CANDIDATE_PYTHONS
from .digest import content_digest
from .requirements import resolve_inside
from .spec import EnvSpec

CONFIG_DIRS = ("binder", ".binder")

__all__ = ["CANDIDATE_PYTHONS", "CONFIG_DIRS", "config_dir", "detect"]


def config_dir(repo: Path) -> str:
    """``"binder"``, ``".binder"`` or ``""``: where configuration is read."""
    found = [name for name in CONFIG_DIRS if (repo / name).is_dir()]
    if len(found) > 1:
        raise EnvironmentConfigError(
            "Both binder/ and .binder/ exist: configuration is ambiguous",
            hint="Keep only one of the two folders.",
        )
    return found[0] if found else ""


def base_layer(checkout: Checkout) -> Found:
    """What the first detector that recognises the checkout found."""
    for detector in DETECTORS:
        found = detector.detect(checkout)
        if found is not None:
            return found
    raise AssertionError("the last detector always detects")


def _script(checkout: Checkout, name: str) -> Path | None:
    path = checkout.base / name
    if not (path.exists() or path.is_symlink()):
        return None
    where = checkout.where(path)
    resolved = resolve_inside(checkout.repo, path, where)
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
    checkout = Checkout(repo, config_dir(repo), default_python)
    found = base_layer(checkout)
    apt_packages, apt_source = read_apt(checkout)
    if not found.configured and not allow_default:
        raise EnvironmentConfigError(
            "No environment configuration found in the repository",
            hint="Add a requirements.txt (or binder/requirements.txt) listing its packages.",
        )
    postbuild = _script(checkout, "postBuild")
    start = _script(checkout, "start")
    sources = [*found.sources, *([apt_source] if apt_source else [])]
    for script in (postbuild, start):
        if script is not None:
            sources.append(checkout.where(script))
    digest = None
    if found.local or found.install_repo or postbuild is not None:
        try:
            digest = content_digest(repo)
        except OSError as e:
            raise EnvironmentConfigError(f"The repository cannot be read ({e})") from None
    return EnvSpec(
        kind=found.kind,
        base=found.base,
        apt_packages=apt_packages,
        python=found.python,
        requirements=tuple(found.requirements),
        install_repo=found.install_repo,
        postbuild=checkout.where(postbuild) if postbuild is not None else None,
        postbuild_text=checkout.read(postbuild) if postbuild is not None else None,
        start=checkout.where(start) if start is not None else None,
        config_dir=checkout.folder,
        content_digest=digest,
        sources=tuple(dict.fromkeys(sources)),
    )


def default_environment_notice(python: str) -> str:
    """What a launch says when the repository names no environment at all."""
    return (
        "No environment file found (requirements.txt, environment.yml, Pipfile, "
        f"pyproject.toml, ...): using the default environment, Python {python} with Jupyter"
    )
