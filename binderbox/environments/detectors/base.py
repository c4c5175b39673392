"""The detector seam: one small class per environment kind.

:func:`binderbox.environments.detect` builds a :class:`Checkout` of the
repository (where configuration is read, the default Python) and asks each
detector of :data:`binderbox.environments.detectors.DETECTORS` in turn, in
repo2docker's order of precedence: the first to return a :class:`Found`
decides the base layer.  A detector returns ``None`` when its files are
absent and raises :class:`~binderbox.errors.EnvironmentConfigError` (one
line, naming the file) when they are there but wrong.  The layers that
combine with every kind (``apt.txt``, ``postBuild``) are read by ``detect``
itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..requirements import read_text, relpath


@dataclass(frozen=True)
class Checkout:
    """A checked-out repository as detectors see it."""

    #: the repository's root
    repo: Path
    #: ``""``, ``"binder"`` or ``".binder"``: where configuration is read
    folder: str
    #: the ``X.Y`` Python of environments that do not ask for one
    default_python: str

    @property
    def base(self) -> Path:
        """The folder configuration files are read from."""
        return self.repo / self.folder if self.folder else self.repo

    @property
    def at_root(self) -> bool:
        """True when configuration is read at the root (no binder folder)."""
        return not self.folder

    def file(self, name: str) -> Path | None:
        """``name`` in the configuration folder when it is there (a link counts)."""
        path = self.base / name
        return path if path.is_file() or path.is_symlink() else None

    def root_file(self, name: str) -> Path | None:
        """``name`` at the root, counted only without a binder folder (``setup.py``,
        ``pyproject.toml``, ``DESCRIPTION``)."""
        if not self.at_root:
            return None
        path = self.repo / name
        return path if path.is_file() or path.is_symlink() else None

    def read(self, path: Path) -> str:
        """The text of a file inside the repository (a link must stay inside it)."""
        return read_text(self.repo, path)

    def where(self, path: Path) -> str:
        """``path`` as messages name it: relative to the root."""
        return relpath(self.repo, path)


@dataclass
class Found:
    """What a detector read: the base layer and the pip layer above it."""

    kind: str
    python: str
    #: canonical JSON of a non-``python`` base layer (``EnvSpec.base``)
    base: str | None = None
    requirements: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    #: the build needs the repository content (local references, a root package)
    local: bool = False
    install_repo: bool = False
    #: False only for the default environment (no environment file at all)
    configured: bool = True


class Detector:
    """Recognises one kind of environment.  See the module docstring."""

    #: the ``EnvSpec.kind`` this detector produces
    kind: ClassVar[str] = ""

    def detect(self, checkout: Checkout) -> Found | None:
        """The base layer ``checkout`` asks for, or ``None`` when it is not this kind."""
        raise NotImplementedError
