"""uv projects: ``uv.lock`` with its ``pyproject.toml``, in the configuration folder.

A lock file wins over the loose files beside it (``requirements.txt``,
``Pipfile``, ``setup.py``): the environment is exactly the locked one, the
default groups included as ``uv sync`` installs them.  The base layer
(``EnvSpec.base``)::

    {"lock": <uv.lock text>, "project": <pyproject.toml text>}

The Python version: ``runtime.txt``, else uv's ``.python-version`` beside the
lock, else ``requires-python`` (the default when it allows it, else the
newest candidate that does; :func:`~.python.choose_python`).  The build needs
the repository content (``local``) when the lock installs something from it:
the project itself (``source = { editable = "." }`` or a directory; a
``virtual`` project is not installed) or any path or directory source.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from ...errors import EnvironmentConfigError
from .base import Checkout, Detector, Found
from .python import choose_python, runtime_python

#: lock sources that are files of the repository
LOCAL_SOURCES = ("editable", "directory", "path")


def read_toml(checkout: Checkout, name: str) -> tuple[str, dict[str, Any]]:
    """``name``'s text and its parsed TOML (a plain message when it is not TOML)."""
    path = checkout.base / name
    text = checkout.read(path)
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise EnvironmentConfigError(f"{checkout.where(path)}: not valid TOML ({e})") from None


def requires_python(value: Any, where: str) -> SpecifierSet | None:
    """``requires-python`` as a specifier set (None when absent)."""
    if value is None:
        return None
    try:
        return SpecifierSet(str(value))
    except InvalidSpecifier:
        raise EnvironmentConfigError(
            f"{where}: requires-python {value!r} is not a version specifier"
        ) from None


def python_version_file(checkout: Checkout) -> str | None:
    """``X.Y`` from uv's ``.python-version`` beside the lock (None: absent or unusable)."""
    path = checkout.file(".python-version")
    if path is None:
        return None
    first = (checkout.read(path).strip().splitlines() or [""])[0].strip()
    parts = first.removeprefix("cpython-").split(".")
    return (
        f"{parts[0]}.{parts[1]}"
        if len(parts) >= 2 and all(p.isdigit() for p in parts[:2])
        else None
    )


def installs_local(packages: Any) -> bool:
    """Whether a lock's packages install anything from the repository."""
    for package in packages if isinstance(packages, list) else []:
        source = package.get("source") if isinstance(package, dict) else None
        if isinstance(source, dict) and any(key in source for key in LOCAL_SOURCES):
            return True
    return False


class UvLockDetector(Detector):
    """``uv.lock`` and its ``pyproject.toml``.  See the module docstring."""

    kind = "uv-lock"

    def detect(self, checkout: Checkout) -> Found | None:
        lock_path = checkout.file("uv.lock")
        if lock_path is None:
            return None
        where = checkout.where(lock_path)
        if checkout.file("pyproject.toml") is None:
            raise EnvironmentConfigError(
                f"{where}: no pyproject.toml beside it",
                hint="Commit the pyproject.toml the lock was made from, in the same folder.",
            )
        lock_text, lock = read_toml(checkout, "uv.lock")
        project_text, project = read_toml(checkout, "pyproject.toml")
        if not isinstance(lock.get("package"), list):
            raise EnvironmentConfigError(f"{where}: not a uv lock file (no [[package]])")
        table = project.get("project")
        requires = requires_python(
            table.get("requires-python") if isinstance(table, dict) else None,
            checkout.where(checkout.base / "pyproject.toml"),
        )
        runtime = runtime_python(checkout, checkout.default_python)
        runtime = runtime or python_version_file(checkout)
        python = choose_python(requires, runtime, checkout.default_python, "pyproject.toml")
        names = ("uv.lock", "pyproject.toml", "runtime.txt", ".python-version")
        return Found(
            kind=self.kind,
            python=python,
            base=json.dumps(
                {"lock": lock_text, "project": project_text},
                sort_keys=True,
                separators=(",", ":"),
            ),
            sources=[checkout.where(checkout.base / n) for n in names if checkout.file(n)],
            local=installs_local(lock["package"]),
        )
