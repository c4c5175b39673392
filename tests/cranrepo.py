"""A local CRAN-like repository: a stand-in for Posit Package Manager's snapshots.

CRAN and Posit are unreachable from this machine, so R tests install from a
folder laid out as Posit's dated snapshots are (``<root>/<date>/src/contrib``
with its ``PACKAGES`` index and ``Archive/``), made here from R source packages
written by hand (a DESCRIPTION, a NAMESPACE, R code).  R reads it through a
``file://`` URL.  Nothing here is R's own tooling: the index is the documented
DCF format that ``tools::write_PACKAGES`` writes.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RPackage:
    """A tiny R source package whose function ``<name>_value()`` returns ``value``."""

    name: str
    version: str
    value: str = "1"
    imports: tuple[str, ...] = ()
    #: R code of the function's body (default: ``value``)
    body: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def description(self) -> str:
        lines = [
            f"Package: {self.name}",
            f"Version: {self.version}",
            "Title: A Test Stand-in",
            "Description: Made by the binderbox tests.",
            "License: MIT",
            "Author: binderbox tests",
            "Maintainer: binderbox tests <tests@example.org>",
            "NeedsCompilation: no",
        ]
        if self.imports:
            lines.append(f"Imports: {', '.join(self.imports)}")
        lines += [f"{k}: {v}" for k, v in self.extra.items()]
        return "\n".join(lines) + "\n"

    def tarball(self) -> bytes:
        files = {
            "DESCRIPTION": self.description(),
            "NAMESPACE": f"export({self.function})\n",
            f"R/{self.name}.R": f"{self.function} <- function() {self.body or self.value}\n",
        }
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name, text in files.items():
                data = text.encode()
                info = tarfile.TarInfo(f"{self.name}/{name}")
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    @property
    def function(self) -> str:
        return f"{self.name}_value"

    def index_entry(self) -> str:
        entry = f"Package: {self.name}\nVersion: {self.version}\n"
        if self.imports:
            entry += f"Imports: {', '.join(self.imports)}\n"
        return entry + "NeedsCompilation: no\n"


def write_snapshot(
    root: Path, date: str, current: Sequence[RPackage], archived: Sequence[RPackage] = ()
) -> Path:
    """``root/<date>``: a repository listing ``current``, with ``archived`` older
    versions under ``src/contrib/Archive``; returns its folder."""
    contrib = root / date / "src" / "contrib"
    contrib.mkdir(parents=True, exist_ok=True)
    for package in current:
        (contrib / f"{package.name}_{package.version}.tar.gz").write_bytes(package.tarball())
    for package in archived:
        folder = contrib / "Archive" / package.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{package.name}_{package.version}.tar.gz").write_bytes(package.tarball())
    (contrib / "PACKAGES").write_text("\n".join(p.index_entry() for p in current))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # read by the build's sandbox uid
    return root / date
