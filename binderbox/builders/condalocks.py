"""Locked conda environments: ``pixi.lock`` (read by rattler) and ``conda-lock.yml``.

A lock names every package of an environment for each platform, with its URL
and hash: nothing is solved.  Both readers return a :class:`Locked`: the conda
archives to install for ``linux-64`` (noarch packages included, as the lock
lists them under the platform) and the PyPI packages, as requirement lines
pinned exactly (``name==version`` for packages from an index, ``name @ URL``
for other direct URLs), which uv installs on top.

* ``pixi.lock``: rattler's :class:`rattler.LockFile` reads pixi's format; the
  environment asked for (``default``) must exist and list ``linux-64``.
* ``conda-lock.yml`` (conda-lock's unified format, version 1): a small reader of
  its documented fields, ``package[]`` entries with ``manager`` (``conda`` or
  ``pip``), ``platform``, ``url``, ``hash`` (``sha256``/``md5``),
  ``category`` and ``optional``: the ``main`` category, not optional, as
  ``conda-lock install`` does by default.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import EnvironmentConfigError
from .condafetch import Archive

PLATFORM = "linux-64"
#: index hosts whose files are pinned by name and version (uv finds them in its index)
INDEX_HOSTS = ("files.pythonhosted.org",)


@dataclass
class Locked:
    """What a lock file installs."""

    archives: list[Archive] = field(default_factory=list)
    pypi: list[str] = field(default_factory=list)


def channel_of(url: str) -> str:
    """The channel URL of a package URL (``.../conda-forge/linux-64/x.conda``)."""
    return url.rsplit("/", 2)[0]


def read_pixi_lock(text: str, environment: str = "default") -> Locked:
    """The ``linux-64`` packages of ``environment`` in a ``pixi.lock``."""
    import rattler
    from rattler.exceptions import ParseCondaLockError

    with tempfile.NamedTemporaryFile("w", suffix=".lock") as handle:
        handle.write(text)
        handle.flush()
        try:
            lock = rattler.LockFile.from_path(Path(handle.name))
        except (ParseCondaLockError, ValueError, OSError) as err:
            raise EnvironmentConfigError(f"pixi.lock cannot be read: {_first_line(err)}") from None
    env = lock.environment(environment)
    if env is None:
        raise EnvironmentConfigError(f"pixi.lock has no environment named {environment!r}.")
    platform = next((p for p in lock.platforms() if p.name == PLATFORM), None)
    records = env.conda_repodata_records_for_platform(platform) if platform else None
    if platform is None or records is None:
        raise EnvironmentConfigError(
            f"pixi.lock has no {PLATFORM} packages in its {environment!r} environment.",
            hint="Add linux-64 to the platforms of pixi.toml and run `pixi lock`.",
        )
    locked = Locked()
    for record in records:
        locked.archives.append(
            Archive(
                url=record.url,
                file_name=record.file_name,
                channel=record.channel or channel_of(record.url),
                sha256=(record.sha256.hex() if record.sha256 else ""),
                md5=(record.md5.hex() if record.md5 else ""),
            )
        )
    for package in env.pypi_packages_for_platform(platform) or []:
        locked.pypi.append(_pypi_line(package.name, str(package.version), package.location))
    return locked


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


#: a PyPI project name and a version as a lock may write them (nothing else reaches uv)
_PYPI_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_PYPI_VERSION = re.compile(r"^[A-Za-z0-9.+!_-]+$")


def _pypi_line(name: str, version: str, location: str) -> str:
    if not _PYPI_NAME.match(name) or not _PYPI_VERSION.match(version):
        raise EnvironmentConfigError(
            f"The lock names a PyPI package {name[:60]!r} {version[:40]!r}: not a name "
            "and a version."
        )
    if any(c.isspace() for c in location):
        raise EnvironmentConfigError(f"The locked PyPI package {name} has a malformed URL.")
    parts = urlsplit(location)
    if parts.scheme in ("http", "https") and parts.hostname in INDEX_HOSTS:
        return f"{name}=={version}"
    if parts.scheme in ("http", "https", "git+https"):
        return f"{name} @ {location}"
    raise EnvironmentConfigError(
        f"The locked PyPI package {name} comes from {unquote(location)[:80]}: "
        "only packages from an index or a URL are installed from a lock.",
    )


def read_conda_lock(text: str) -> Locked:
    """The ``linux-64`` packages of the ``main`` category of a ``conda-lock.yml``."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise EnvironmentConfigError(
            f"conda-lock.yml is not valid YAML: {_first_line(err)}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("package"), list):
        raise EnvironmentConfigError("conda-lock.yml has no package list (version 1 format).")
    if data.get("version", 1) != 1:
        raise EnvironmentConfigError(
            f"conda-lock.yml version {data.get('version')} is not read here."
        )
    locked = Locked()
    for entry in data["package"]:
        if not _wanted(entry):
            continue
        locked_entry(locked, entry)
    if not locked.archives:
        raise EnvironmentConfigError(
            f"conda-lock.yml has no {PLATFORM} conda packages.",
            hint="Lock it with `conda-lock -p linux-64`.",
        )
    return locked


def _wanted(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("platform") == PLATFORM
        and entry.get("category", "main") == "main"
        and not entry.get("optional", False)
    )


def locked_entry(locked: Locked, entry: dict[str, Any]) -> None:
    """Add one ``package[]`` entry of a conda-lock file to ``locked``."""
    url, name = str(entry.get("url") or ""), str(entry.get("name") or "")
    given = entry.get("hash")
    hashes: dict[str, Any] = given if isinstance(given, dict) else {}
    if entry.get("manager") == "pip":
        locked.pypi.append(_pypi_line(name, str(entry.get("version")), url))
        return
    if not url or not (hashes.get("sha256") or hashes.get("md5")):
        raise EnvironmentConfigError(f"conda-lock.yml: the package {name} has no URL or hash.")
    locked.archives.append(
        Archive(
            url=url,
            file_name=url.rsplit("/", 1)[-1],
            channel=channel_of(url),
            sha256=str(hashes.get("sha256") or ""),
            md5=str(hashes.get("md5") or ""),
        )
    )
