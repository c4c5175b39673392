"""uv's settings file for a build: metadata for old releases uv refuses to read.

Some releases still used by old repositories carry metadata that pip reads and
uv rejects (pandas 0.19.2 to 0.24.2 require ``pytz (>=2011k)``, not a PEP 440
version): uv then refuses the whole install.  uv's own remedy is a
``[[dependency-metadata]]`` table: static metadata standing in for the
release's.  binderbox ships such entries as data
(``dependency_metadata.toml`` beside this file, each read from the wheel on
PyPI and changed only where uv cannot parse it) and the operator adds more
(``PythonBuilder.dependency_metadata``; an entry for the same name and version
replaces the shipped one).

Every uv step of a build reads :func:`config_text` (written as
``/srv/env/.binderbox/uv.toml``, passed with ``--config-file``; no other uv
configuration is read).  The shipped table is not part of environment keys
(an entry only lets a release install that could not install at all); the
operator's entries are (they may replace a shipped one).
"""

from __future__ import annotations

import functools
import json
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

#: the shipped entries
SHIPPED = Path(__file__).with_name("dependency_metadata.toml")
#: the file's name in ``.binderbox/``
CONFIG_NAME = "uv.toml"
_LISTS = ("requires-dist", "provides-extras")
_STRINGS = ("name", "version", "requires-python")


@functools.cache
def shipped() -> tuple[dict[str, Any], ...]:
    """The entries of :data:`SHIPPED`."""
    data = tomllib.loads(SHIPPED.read_text())
    return tuple(check(entry) for entry in data.get("dependency-metadata", []))


def check(entry: Mapping[str, Any]) -> dict[str, Any]:
    """``entry`` if it is a ``[[dependency-metadata]]`` entry uv accepts; else ValueError
    saying what is wrong."""
    unknown = set(entry) - set(_LISTS) - set(_STRINGS)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in {dict(entry)}")
    if not isinstance(entry.get("name"), str) or not entry["name"]:
        raise ValueError(f"an entry needs a name: {dict(entry)}")
    for key in _STRINGS:
        if key in entry and not isinstance(entry[key], str):
            raise ValueError(f"{key} must be a string in {dict(entry)}")
    for key in _LISTS:
        value = entry.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{key} must be a list of strings in {dict(entry)}")
    return dict(entry)


def merged(extra: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The shipped entries with the operator's ``extra`` (same name and version: theirs)."""

    def key(entry: Mapping[str, Any]) -> tuple[str, str]:
        return canonicalize_name(str(entry["name"])), str(entry.get("version", ""))

    table = {key(entry): dict(entry) for entry in shipped()}
    table.update({key(entry): check(entry) for entry in extra})
    return list(table.values())


def config_text(extra: Iterable[Mapping[str, Any]] = ()) -> str:
    """The ``uv.toml`` of a build (see the module docstring)."""
    lines = ["# written by binderbox: metadata for old releases (builders/uvconfig.py)"]
    for entry in merged(extra):
        lines.append("\n[[dependency-metadata]]")
        for name in (*_STRINGS, *_LISTS):
            if name in entry:  # JSON strings and lists of strings are TOML too
                lines.append(f"{name} = {json.dumps(entry[name])}")
    return "\n".join(lines) + "\n"


def write(meta: Path, extra: Iterable[Mapping[str, Any]] = ()) -> Path:
    """Write ``meta/uv.toml``; its host path."""
    path = meta / CONFIG_NAME
    path.write_text(config_text(extra))
    return path
