"""Conda environment files -> the canonical ``base`` JSON of an :class:`EnvSpec`.

* ``environment.yml`` / ``.yaml`` (kind ``conda``): ``{"channels": [...as written,
  in order], "dependencies": [match specs, in order, the pip entry removed]}``;
  the ``pip:`` list becomes the pip layer (normalised like requirements.txt
  lines, relative to the file's folder); ``python`` is the ``X.Y`` of a
  ``python=X.Y`` / ``python X.Y`` / ``python==X.Y.Z`` spec, else the default.
  ``name:`` and ``prefix:`` are ignored, as repo2docker does.
* ``pixi.toml`` (kind ``pixi``): ``{"manifest": its text, "lock": pixi.lock's
  text or null, "environment": "default"}``; :func:`pixi_request` turns a
  manifest without a lock into channels and specs.
* ``conda-lock.yml`` (kind ``conda-lock``): ``{"lock": its text}``.

Each is a :class:`~.base.Detector`: tried in the order pixi, conda-lock, conda
(a lock file before the loose file beside it), each returning a
:class:`~.base.Found` or raising :class:`~binderbox.errors.EnvironmentConfigError`
naming the file.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar

from ...errors import EnvironmentConfigError
from ..requirements import read_lines, read_text, relpath
from .base import Checkout, Detector, Found

_PYTHON = re.compile(r"^python\s*(?:==?|\s)\s*(\d+)\.(\d+)")


def canonical(data: dict[str, Any]) -> str:
    """The canonical JSON text of a ``base`` (sorted keys, no spaces)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _load_yaml(repo: Path, path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(read_text(repo, path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise EnvironmentConfigError(f"{relpath(repo, path)}: not valid YAML{where}") from None


def read_environment_yml(repo: Path, path: Path, default_python: str) -> Found:
    """Read an ``environment.yml`` (see the module docstring)."""
    where = relpath(repo, path)
    data = _load_yaml(repo, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EnvironmentConfigError(f"{where}: not a conda environment (a mapping at the top)")
    channels = _strings(data.get("channels") or [], where, "channels")
    dependencies: list[str] = []
    pip: list[str] = []
    for item in data.get("dependencies") or []:
        if isinstance(item, dict) and set(item) == {"pip"}:
            pip += _strings(item["pip"] or [], where, "pip")
        elif isinstance(item, str | int | float) and str(item).strip():
            dependencies.append(str(item).strip())
        else:
            raise EnvironmentConfigError(f"{where}: a dependency is not a package spec: {item!r}")
    python = default_python
    for spec in dependencies:
        match = _PYTHON.match(spec)
        if match:
            python = f"{match[1]}.{match[2]}"
    parsed = read_lines(repo, path, pip)
    base = canonical({"channels": channels, "dependencies": dependencies})
    sources = [where, *parsed.sources[1:]]
    return Found("conda", python, base, parsed.lines, sources, local=parsed.local)


def _strings(value: Any, where: str, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise EnvironmentConfigError(f"{where}: {what} must be a list of strings")
    return [str(v).strip() for v in value]


def read_pixi(repo: Path, manifest: Path, default_python: str) -> Found:
    """Read ``pixi.toml`` and, beside it, ``pixi.lock`` (which wins when present: the
    manifest is then only checked to be TOML)."""
    where = relpath(repo, manifest)
    text = read_text(repo, manifest)
    lock_path = manifest.with_name("pixi.lock")
    lock = read_text(repo, lock_path) if lock_path.is_file() else None
    python = default_python
    if lock is None:
        for spec in pixi_request(text, where)[1]:
            match = _PYTHON.match(spec)
            if match:
                python = f"{match[1]}.{match[2]}"
    else:
        _toml(text, where)
    sources = [where] + ([relpath(repo, lock_path)] if lock is not None else [])
    base = canonical({"manifest": text, "lock": lock, "environment": "default"})
    return Found("pixi", python, base, [], sources)


def _toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise EnvironmentConfigError(f"{where}: not valid TOML ({err})") from None


def pixi_request(text: str, where: str = "pixi.toml") -> tuple[list[str], list[str]]:
    """The channels and conda specs of a pixi manifest (its default feature)."""
    data = _toml(text, where)
    table = data.get("workspace") or data.get("project") or {}
    channels = table.get("channels") if isinstance(table, dict) else None
    if not isinstance(channels, list):
        raise EnvironmentConfigError(f"{where}: no channels in [workspace] (or [project])")
    names = [c if isinstance(c, str) else str(c.get("channel", "")) for c in channels]
    deps = data.get("dependencies") or {}
    if not isinstance(deps, dict):
        raise EnvironmentConfigError(f"{where}: [dependencies] must be a table")
    specs = [_pixi_spec(name, value, where) for name, value in deps.items()]
    if data.get("pypi-dependencies"):
        raise EnvironmentConfigError(
            f"{where}: [pypi-dependencies] need a pixi.lock here",
            hint="Run `pixi lock` and commit pixi.lock.",
        )
    return names, specs


def _pixi_spec(name: str, value: Any, where: str) -> str:
    if isinstance(value, str):
        return name if value.strip() in ("", "*") else f"{name} {value.strip()}"
    if isinstance(value, dict) and isinstance(value.get("version", "*"), str):
        version = str(value.get("version", "*")).strip()
        build = value.get("build")
        spec = name if version in ("", "*") else f"{name} {version}"
        return f"{spec} {build}" if isinstance(build, str) else spec
    raise EnvironmentConfigError(f"{where}: dependency {name} is not a version spec")


def read_conda_lock_file(repo: Path, path: Path, default_python: str) -> Found:
    """Read a ``conda-lock.yml`` (its text is the base; the builder reads it)."""
    where = relpath(repo, path)
    text = read_text(repo, path)
    data = _load_yaml(repo, path)
    if not isinstance(data, dict) or not isinstance(data.get("package"), list):
        raise EnvironmentConfigError(f"{where}: not a conda-lock file (no package list)")
    python = default_python
    for entry in data["package"]:
        if (
            isinstance(entry, dict)
            and entry.get("name") == "python"
            and entry.get("manager") == "conda"
        ):
            version = str(entry.get("version", ""))
            python = ".".join(version.split(".")[:2]) or python
    return Found("conda-lock", python, canonical({"lock": text}), [], [where])


class _FileDetector(Detector):
    """Detects when the first of ``names`` is in the configuration folder."""

    names: ClassVar[tuple[str, ...]] = ()

    def detect(self, checkout: Checkout) -> Found | None:
        for name in self.names:
            path = checkout.file(name)
            if path is not None:
                return self.read(checkout.repo, path, checkout.default_python)
        return None

    def read(self, repo: Path, path: Path, default_python: str) -> Found:
        raise NotImplementedError


class PixiDetector(_FileDetector):
    """``pixi.toml`` (with its ``pixi.lock``)."""

    kind, names = "pixi", ("pixi.toml",)

    def read(self, repo: Path, path: Path, default_python: str) -> Found:
        return read_pixi(repo, path, default_python)


class CondaLockDetector(_FileDetector):
    """``conda-lock.yml`` (it wins over an ``environment.yml`` beside it)."""

    kind, names = "conda-lock", ("conda-lock.yml",)

    def read(self, repo: Path, path: Path, default_python: str) -> Found:
        return read_conda_lock_file(repo, path, default_python)


class CondaDetector(_FileDetector):
    """``environment.yml`` / ``environment.yaml``."""

    kind, names = "conda", ("environment.yml", "environment.yaml")

    def read(self, repo: Path, path: Path, default_python: str) -> Found:
        return read_environment_yml(repo, path, default_python)
