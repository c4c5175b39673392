"""R environments: ``runtime.txt`` ``r-...``, a root ``DESCRIPTION``, ``install.R``,
``renv.lock``.

repo2docker's rule, extended: R when ``runtime.txt`` names
``r-<X.Y>-<date>`` or ``r-<date>``, or the root has a ``DESCRIPTION``;
binderbox also takes a ``renv.lock`` on its own as asking for R.  An
``install.R`` alone asks for nothing (repo2docker reads it only in an R
environment: beside a ``requirements.txt`` it is a Python repository, beside
an ``environment.yml`` a conda one).  The date picks a CRAN snapshot; the
version, R itself.  ``renv.lock`` wins over ``install.R`` and ``DESCRIPTION``
beside it (a lock file over the loose files).

The base layer (``EnvSpec.base``)::

    {"r": "4.2" | null, "date": "2024-01-15" | null,
     "install_r": <install.R text> | null, "description": <DESCRIPTION text> | null,
     "renv": <renv.lock, canonical JSON> | null}

A root ``DESCRIPTION`` is a package: installing it needs the repository
content (``local``).  ``install.R`` is read as text and runs without it, as
in repo2docker (its text is part of the key).  A ``requirements.txt``
beside them is the pip layer (the Jupyter server's Python), as in
repo2docker.
"""

from __future__ import annotations

import datetime
import json
import re

from ...errors import EnvironmentConfigError
from ..requirements import read_requirements
from .base import Checkout, Detector, Found

_RUNTIME_R = re.compile(r"^r-(?:(\d+)\.(\d+)(?:\.\d+)?-)?(\d{4}-\d{2}-\d{2})$")


def runtime_r(checkout: Checkout) -> tuple[str | None, str | None] | None:
    """``(X.Y or None, date or None)`` from ``runtime.txt`` ``r-...``; None: not R."""
    path = checkout.file("runtime.txt")
    if path is None:
        return None
    text = checkout.read(path).strip()
    if not text.startswith("r-"):
        return None
    match = _RUNTIME_R.match(text)
    where = checkout.where(path)
    if match is None:
        raise EnvironmentConfigError(
            f"{where}: {text[:60]!r} is not an R version and snapshot date",
            hint="Write e.g. r-4.3-2024-01-15 or r-2024-01-15.",
        )
    try:
        datetime.date.fromisoformat(match[3])
    except ValueError:
        raise EnvironmentConfigError(f"{where}: {match[3]} is not a date") from None
    version = f"{int(match[1])}.{int(match[2])}" if match[1] else None
    return version, match[3]


def _renv(checkout: Checkout) -> str | None:
    path = checkout.file("renv.lock")
    if path is None:
        return None
    where = checkout.where(path)
    try:
        data = json.loads(checkout.read(path))
    except ValueError as e:
        raise EnvironmentConfigError(f"{where}: not valid JSON ({e})") from None
    packages = data.get("Packages") if isinstance(data, dict) else None
    if not isinstance(packages, dict):
        raise EnvironmentConfigError(f"{where}: no Packages section")
    for name, record in packages.items():
        if not isinstance(record, dict) or not isinstance(record.get("Version"), str):
            raise EnvironmentConfigError(f"{where}: package {name} has no Version")
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


class RDetector(Detector):
    """R and its packages.  See the module docstring."""

    kind = "r"

    def detect(self, checkout: Checkout) -> Found | None:
        runtime = runtime_r(checkout)
        description = checkout.root_file("DESCRIPTION")
        install = checkout.file("install.R")
        renv = _renv(checkout)
        if runtime is None and description is None and renv is None:
            return None  # install.R alone asks for nothing: repo2docker's rule
        version, date = runtime or (None, None)
        base = {
            "r": version,
            "date": date,
            "install_r": checkout.read(install) if install is not None and not renv else None,
            "description": checkout.read(description) if description and not renv else None,
            "renv": renv,
        }
        names = ("runtime.txt", "renv.lock", "install.R")
        sources = [checkout.where(checkout.base / n) for n in names if checkout.file(n)]
        if description is not None:
            sources.append("DESCRIPTION")
        if runtime is None:
            sources = [s for s in sources if not s.endswith("runtime.txt")]
        found = Found(
            kind="r",
            python=checkout.default_python,
            base=json.dumps(base, sort_keys=True, separators=(",", ":")),
            sources=sources,
            local=base["description"] is not None,
        )
        requirements = checkout.file("requirements.txt")
        if requirements is not None:  # Python packages beside R, as in repo2docker
            parsed = read_requirements(checkout.repo, requirements)
            found.requirements = list(parsed.lines)
            found.local = found.local or parsed.local
            found.sources.extend(parsed.sources)
        return found
