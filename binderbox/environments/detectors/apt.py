"""``apt.txt``: the system layer, combined with every kind.

One Debian package name per line, ``#`` comments and blank lines ignored
(repo2docker's format).  Names are checked against Debian policy's package
name rule, so nothing else (an option, a path, a version pin) reaches apt.
"""

from __future__ import annotations

import re

from ...errors import EnvironmentConfigError
from .base import Checkout

#: Debian policy 5.6.7: lower case letters, digits, + - . ; two characters at least
PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


def read_apt(checkout: Checkout) -> tuple[tuple[str, ...], str | None]:
    """The sorted package names of ``apt.txt``, and the file's name (None: no file)."""
    path = checkout.file("apt.txt")
    if path is None:
        return (), None
    where = checkout.where(path)
    names: set[str] = set()
    for number, line in enumerate(checkout.read(path).splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if not PACKAGE_NAME.match(name) or name[-1] in "+-":  # apt: install / remove
            raise EnvironmentConfigError(
                f"{where}, line {number}: {name[:60]!r} is not a package name",
                hint="List one Debian package name per line (e.g. graphviz).",
            )
        names.add(name)
    return tuple(sorted(names)), where if names else None
