"""PEP 751 lock files: ``pylock.toml`` in the configuration folder.

Like ``uv.lock``, it wins over the loose files beside it and the environment
is exactly the locked one (uv installs it: ``uv pip install -r pylock.toml``).
The base layer (``EnvSpec.base``)::

    {"lock": <pylock.toml text>}

The Python version: ``runtime.txt``, else the lock's ``requires-python``
(:func:`~.python.choose_python`).  Packages from a ``directory`` or a local
``archive`` need the repository content (``local``).
"""

from __future__ import annotations

import json

from ...errors import EnvironmentConfigError
from .base import Checkout, Detector, Found
from .python import choose_python, runtime_python
from .uvlock import read_toml, requires_python


def _local(package: object) -> bool:
    """Whether a lock's package is a file of the repository (a directory, an archive)."""
    if not isinstance(package, dict):
        return False
    archive = package.get("archive")
    return "directory" in package or (isinstance(archive, dict) and "path" in archive)


class PylockDetector(Detector):
    """``pylock.toml``.  See the module docstring."""

    kind = "pylock"

    def detect(self, checkout: Checkout) -> Found | None:
        path = checkout.file("pylock.toml")
        if path is None:
            return None
        where = checkout.where(path)
        text, lock = read_toml(checkout, "pylock.toml")
        packages = lock.get("packages")
        if not isinstance(lock.get("lock-version"), str) or not isinstance(packages, list):
            raise EnvironmentConfigError(
                f"{where}: not a PEP 751 lock file (no lock-version or [[packages]])"
            )
        requires = requires_python(lock.get("requires-python"), where)
        runtime = runtime_python(checkout, checkout.default_python)
        local = any(_local(package) for package in packages)
        runtime_file = checkout.file("runtime.txt")
        return Found(
            kind=self.kind,
            python=choose_python(requires, runtime, checkout.default_python, where),
            base=json.dumps({"lock": text}, sort_keys=True, separators=(",", ":")),
            sources=[where, *([checkout.where(runtime_file)] if runtime_file else [])],
            local=local,
        )
