"""``Pipfile`` / ``Pipfile.lock`` -> requirement lines, without pipenv.

repo2docker installs a pipenv project with ``pipenv install --dev``: the
lock file when there is one (it wins over the Pipfile), the default *and*
the develop packages.  :func:`read_pipenv` gives the same set as pip
requirement lines, normalised like ``requirements.txt`` lines (see
:mod:`.requirements`), so that uv installs them:

* ``Pipfile.lock``: ``name[extras]==version ; markers`` with the lock's
  ``--hash`` options (sorted; uv verifies them), default packages first,
  then develop packages not already in default;
* ``Pipfile`` (no lock): ``"*"`` -> the bare name; a version string is kept
  (a bare ``"1.0"`` means ``==1.0``); tables give ``version``, ``extras``,
  ``markers`` and PEP 508 marker keys (``sys_platform = "== 'linux'"``);
* in both, ``{path = "."}`` (``editable = true`` -> ``-e``) is a local
  reference, relative to the Pipfile's folder (so ``path = ".."`` in
  ``binder/Pipfile`` is the repository root), rewritten relative to the root;
  ``{git = url, ref = r, subdirectory = s}`` -> ``name @ git+url@r#subdirectory=s``
  (never editable); ``{file = url}`` -> ``name @ url``;
* ``[[source]]`` / ``_meta.sources``: the first source, when it is not PyPI,
  becomes ``--index-url``, the others ``--extra-index-url``.  (uv cannot pin
  a package to one index from a requirements file; ``index = ...`` keys are
  ignored.)

The Python version comes from ``_meta.requires.python_version`` (or
``python_full_version``) in the lock, else from ``[requires]`` in the
Pipfile; like repo2docker, it wins over ``runtime.txt``.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from ..errors import EnvironmentConfigError
from .requirements import local_ref, normalise_requirement, read_text, relpath

PYPI_URLS = frozenset({"https://pypi.org/simple", "https://pypi.python.org/simple"})
#: PEP 508 marker variables pipenv accepts as keys of a package table
MARKER_KEYS = (
    "os_name",
    "sys_platform",
    "platform_machine",
    "platform_python_implementation",
    "platform_release",
    "platform_system",
    "platform_version",
    "python_version",
    "python_full_version",
    "implementation_name",
    "implementation_version",
)
_VCS = ("git", "hg", "svn", "bzr")
_OPERATORS = ("==", "!=", "<", ">", "~=", "===")


@dataclass
class Pipenv:
    """Requirement lines and Python version read from a pipenv project."""

    lines: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    local: bool = False
    #: ``X.Y`` or ``None`` when the files name no version
    python: str | None = None


def _python(value: Any, where: str) -> str | None:
    if value is None:
        return None
    parts = str(value).strip().split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:3]):
        raise EnvironmentConfigError(f"{where}: python_version {value!r} is not a version")
    return f"{parts[0]}.{parts[1]}"


def _markers(entry: dict[str, Any]) -> str:
    parts: list[str] = []
    if entry.get("markers"):
        parts.append(str(entry["markers"]))
    for key in MARKER_KEYS:
        if isinstance(entry.get(key), str):
            parts.append(f"{key} {entry[key]}")
    if len(parts) > 1:
        parts = [f"({p})" if " or " in p else p for p in parts]
    return " and ".join(parts)


def _version(value: Any) -> str:
    version = str(value or "*").strip()
    if version in ("*", ""):
        return ""
    return version if version.startswith(_OPERATORS) else f"=={version}"


def _extras(entry: dict[str, Any]) -> str:
    extras = entry.get("extras") or []
    return f"[{','.join(str(e) for e in extras)}]" if extras else ""


def _vcs_url(entry: dict[str, Any]) -> str | None:
    for vcs in _VCS:
        if vcs in entry:
            url = str(entry[vcs])
            url = url if url.startswith(f"{vcs}+") else f"{vcs}+{url}"
            if entry.get("ref"):
                url += f"@{entry['ref']}"
            if entry.get("subdirectory"):
                url += f"#subdirectory={entry['subdirectory']}"
            return url
    return None


def entry_line(repo: Path, name: str, entry: Any, base: Path, where: str) -> tuple[str, bool]:
    """One Pipfile/lock package -> ``(requirement line, refers to local content)``."""
    where = f"{where}, package {name}"
    if not isinstance(entry, dict):
        entry = {"version": entry}
    markers = _markers(entry)
    suffix = f" ; {markers}" if markers else ""
    if "path" in entry:
        ref = local_ref(repo, f"{entry['path']}{_extras(entry)}", base, where)
        prefix = "-e " if entry.get("editable") else ""
        return f"{prefix}{ref}{suffix}", True
    url = _vcs_url(entry)
    if url is None and "file" in entry:
        url = str(entry["file"])
    if url is not None:
        text = f"{name}{_extras(entry)} @ {url}{suffix}"
    else:
        text = f"{name}{_extras(entry)}{_version(entry.get('version'))}{suffix}"
    line, local = normalise_requirement(repo, text, where)
    hashes = sorted({str(h) for h in entry.get("hashes") or ()})
    return " ".join([line, *(f"--hash={h}" for h in hashes)]), local


def _index_lines(sources: Any) -> list[str]:
    lines: list[str] = []
    for index, source in enumerate(sources if isinstance(sources, list) else []):
        url = str(source.get("url", "")).rstrip("/") if isinstance(source, dict) else ""
        if not url or (url in PYPI_URLS and index == 0):
            continue  # PyPI first is uv's default
        lines.append(f"{'--index-url' if index == 0 else '--extra-index-url'} {url}")
    return lines


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _add_packages(result: Pipenv, repo: Path, groups: list[Any], base: Path, where: str) -> None:
    seen: set[str] = set()
    for group in groups:
        if group is None:
            continue
        if not isinstance(group, dict):
            raise EnvironmentConfigError(f"{where}: a package section is not a table")
        for name, entry in group.items():
            if canonicalize_name(name) in seen:
                continue
            seen.add(canonicalize_name(name))
            line, local = entry_line(repo, name, entry, base, where)
            result.lines.append(line)
            result.local = result.local or local


def _read_lock(repo: Path, lock: Path) -> Pipenv:
    where = relpath(repo, lock)
    try:
        data = json.loads(read_text(repo, lock))
    except json.JSONDecodeError as e:
        raise EnvironmentConfigError(
            f"{where}: not valid JSON ({e.msg}, line {e.lineno})"
        ) from None
    if not isinstance(data, dict):
        raise EnvironmentConfigError(f"{where}: not a Pipfile.lock")
    meta = _table(data.get("_meta"))
    groups = [data.get("default"), data.get("develop")]
    return _pipenv(repo, lock, where, meta.get("requires"), meta.get("sources"), groups)


def _read_pipfile(repo: Path, pipfile: Path) -> Pipenv:
    where = relpath(repo, pipfile)
    try:
        data = tomllib.loads(read_text(repo, pipfile))
    except tomllib.TOMLDecodeError as e:
        raise EnvironmentConfigError(f"{where}: not valid TOML ({e})") from None
    groups = [data.get("packages"), data.get("dev-packages")]
    return _pipenv(repo, pipfile, where, data.get("requires"), data.get("source"), groups)


def _pipenv(
    repo: Path, path: Path, where: str, requires: Any, sources: Any, groups: list[Any]
) -> Pipenv:
    """The end both readers share: ``path``'s Python version, index lines, then packages."""
    table = _table(requires)
    version = table.get("python_version") or table.get("python_full_version")
    result = Pipenv(sources=[where], python=_python(version, where))
    result.lines.extend(_index_lines(sources))
    _add_packages(result, repo, groups, path.parent, where)
    return result


def read_pipenv(repo: Path, folder: Path) -> Pipenv:
    """Read ``folder/Pipfile.lock`` (preferred) or ``folder/Pipfile``.

    Raises :class:`~binderbox.errors.EnvironmentConfigError` naming the file
    for malformed content or local paths outside the repository.
    """
    lock = folder / "Pipfile.lock"
    if lock.exists() or lock.is_symlink():
        return _read_lock(repo, lock)
    return _read_pipfile(repo, folder / "Pipfile")
