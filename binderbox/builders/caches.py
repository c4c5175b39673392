"""Which package cache a uv step may use, and how: the trust rule of builds.

uv keeps one package cache for all builds.  Two things make it fast: every
build reuses what others downloaded, and a build can *hard-link* files from
it instead of copying them (hundreds of MB per environment).  Both are only
safe while no code from a repository can write to the cache:

* a hard-linked file is one inode shared by the cache and every environment
  linked to it, so whoever can write the cache, or a hard-linked environment,
  can change other people's environments;
* a poisoned cache entry goes into every later build.

So, per build (:func:`plan_install`):

1. **Wheels only, first.**  ``uv pip install --no-build`` runs no code from
   the repository or from packages: it unpacks wheels.  It uses the shared
   cache, hard-linking when the environment gets no ``postBuild`` (nothing
   else will write into it while it is built; sessions mount it read-only)
   and copying when it does (``postBuild`` may write into the environment).
2. **Source builds, in private.**  When something must be built from source
   (a package without a wheel, the repository itself, ``-e .``), that code
   runs with a private, empty cache that is thrown away afterwards, and the
   files are copied.  The shared cache is never visible to it.

Hard links need the cache and the environment on one filesystem *and* one
mount inside the sandbox (Linux refuses links across mount points, even of
one filesystem): the step binds their nearest common folder once and shows
the environment at ``/srv/env`` through a symlink (uv keeps that path in the
scripts it writes).  Where they share no folder but ``/`` or no filesystem,
files are copied.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..runtime.layout import META

#: uv's words when --no-build meets something that must be built
SOURCE_BUILD_NEEDED = re.compile(
    r"building (from source|source distributions?)( for \S+)? is disabled", re.IGNORECASE
)


@dataclass(frozen=True)
class CacheUse:
    """How one uv step sees a package cache.

    ``path``: the cache on the host; ``link_mode``: ``hardlink`` or ``copy``;
    ``shared_root``: when set, one folder holding both the cache and the
    environment, bound as a single mount (hard links work across it);
    ``no_build``: refuse to build anything from source.
    """

    path: Path
    link_mode: str
    shared_root: Path | None = None
    no_build: bool = False


def shared_root(cache: Path, prefix: Path) -> Path | None:
    """The nearest common folder of ``cache`` and ``prefix``, if hard links can work."""
    cache, prefix = cache.resolve(), prefix.resolve()
    root = Path(os.path.commonpath([cache, prefix]))
    if root == Path(root.anchor) or cache.stat().st_dev != prefix.stat().st_dev:
        return None
    return root


def wheels_only(cache: Path, prefix: Path, *, postbuild: bool) -> CacheUse:
    """Step 1 of the module docstring: the shared cache, no code run."""
    root = None if postbuild else shared_root(cache, prefix)
    mode = "hardlink" if root is not None else "copy"
    return CacheUse(cache, mode, shared_root=root, no_build=True)


def copying(cache: Path) -> CacheUse:
    """Copy from ``cache`` (step 2 uses it with a private cache)."""
    return CacheUse(cache, "copy")


def installs_own_code(install_repo: bool, requirements: tuple[str, ...]) -> bool:
    """True when the repository itself is built (a root package, ``-e .``, ``./pkg``,
    ``file:`` paths): a ``--no-build`` attempt could only fail, so skip it."""
    if install_repo:
        return True
    for line in requirements:
        text = line.removeprefix("-e ").removeprefix("--editable ").strip()
        if text.startswith((".", "/", "file:")) or " @ file:" in text:
            return True
    return False


def needs_source_build(lines: list[str]) -> bool:
    """True when a ``--no-build`` install failed only because something needs building."""
    return any(SOURCE_BUILD_NEEDED.search(line) for line in lines)


def unshared_bytes(root: Path) -> int:
    """Bytes under ``root`` in files no environment hard-links (what a clean frees)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            info = (Path(dirpath) / name).lstat()
            if info.st_nlink == 1:
                total += info.st_size
    return total


def reset_env(prefix: Path) -> None:
    """Empty ``prefix`` but for binderbox's own folder (before a private-cache retry)."""
    for child in prefix.iterdir():
        if child.name == META:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
