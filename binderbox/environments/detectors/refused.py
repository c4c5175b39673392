"""Kinds this server does not build: refused with a message naming the file.

Dockerfile, Julia and Nix repositories need a container engine, Julia's own
downloads or a Nix store; binderbox builds without them, so these stay a
plain refusal (repo2docker tries them first, and so do we: a repository
with a ``Dockerfile`` beside a ``requirements.txt`` meant the Dockerfile).
"""

from __future__ import annotations

from ...errors import UnsupportedEnvironment
from .base import Checkout, Detector, Found

#: the hint of every refusal: what does build here
HINT = (
    "binderbox builds requirements.txt, Pipfile, pyproject.toml, uv.lock, pylock.toml, "
    "environment.yml, pixi and R (runtime.txt r-..., DESCRIPTION) environments, "
    "with apt.txt and postBuild."
)


def unsupported(checkout: Checkout, name: str, what: str) -> UnsupportedEnvironment:
    """The refusal of the file ``name`` of the configuration folder."""
    where = checkout.where(checkout.base / name)
    return UnsupportedEnvironment(f"{where}: {what}", hint=HINT)


class Refused(Detector):
    """Raises for the first of ``files`` present; never detects anything."""

    def __init__(self, files: tuple[str, ...], what: str) -> None:
        self.files, self.what = files, what

    def detect(self, checkout: Checkout) -> Found | None:
        for name in self.files:
            if checkout.file(name) is not None:
                raise unsupported(checkout, name, self.what)
        return None


#: refused first, in repo2docker's order
REFUSED = (
    Refused(("Dockerfile",), "Dockerfile builds are not supported on this server"),
    Refused(
        ("Project.toml", "JuliaProject.toml"),
        "Julia environments are not supported on this server",
    ),
    Refused(("default.nix",), "Nix environments are not supported on this server"),
)
