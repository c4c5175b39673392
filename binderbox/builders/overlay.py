"""postBuild's changes to the home: captured after the build, replayed at each launch.

A ``postBuild`` runs in a copy of the repository at the home.  What it created or
changed there is copied into the environment's ``.binderbox/home-overlay/`` and
the paths it deleted are listed in ``.binderbox/home-deleted.json``
(:func:`capture_overlay`); :func:`apply_home_overlay` replays both onto each
session's fresh copy of the content.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

from ..errors import BuildError
from ..runtime.layout import META
from ..util.sizes import human

_Entry = tuple[str, int, int, str]


def snapshot(root: Path) -> dict[str, _Entry]:
    """Relative path -> (type, size, mtime_ns, link target) of everything under ``root``."""
    entries: dict[str, _Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            kind = _kind(info.st_mode)
            target = str(path.readlink()) if kind == "l" else ""
            entries[str(path.relative_to(root))] = (kind, info.st_size, info.st_mtime_ns, target)
    return entries


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "l"
    if stat.S_ISDIR(mode):
        return "d"
    return "f" if stat.S_ISREG(mode) else "o"


def capture_overlay(
    root: Path, before: dict[str, _Entry], overlay: Path, limit: int = 0
) -> tuple[int, list[str]]:
    """Copy what changed under ``root`` since ``before`` into ``overlay``.

    Returns the number of files/links copied and the deleted relative paths.
    ``limit`` (bytes, 0: none) bounds what is copied, by apparent size: a copy writes
    a sparse file out in full, so ``truncate -s 10T`` in a postBuild would otherwise
    make the service write ten terabytes.  Over it: :class:`BuildError`, nothing copied.
    """
    after = snapshot(root)
    copied = sum(e[1] for rel, e in after.items() if e[0] == "f" and before.get(rel) != e)
    if limit and copied > limit:
        raise BuildError(
            f"The build was stopped: postBuild's changes to the home ({human(copied)}) are "
            f"past this service's limit of {human(limit)}.",
            hint="Write less into the home in postBuild, or ask the operator for a larger limit.",
            reason="env_size",
        )
    changed = 0
    for rel, entry in sorted(after.items()):
        if (before.get(rel) == entry and entry[0] != "d") or entry[0] == "o":
            continue
        if entry[0] == "d":
            if rel not in before:
                (overlay / rel).mkdir(parents=True, exist_ok=True)
            continue
        target = overlay / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target, follow_symlinks=False)
        changed += 1
    deleted = sorted(rel for rel in before if rel not in after)
    return changed, deleted


def apply_home_overlay(env_path: Path, home: Path) -> None:
    """Replay postBuild's home changes (if any) onto a session's copy of the content.

    Runs on the host: nothing is written or deleted outside ``home``, whatever
    links the session's copy of the repository holds.
    """
    meta = env_path / META
    if meta.is_symlink():
        return
    deleted = meta / "home-deleted.json"
    if deleted.is_file() and not deleted.is_symlink():
        for rel in json.loads(deleted.read_text()):
            path = _inside(home, str(rel))
            if path is None:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    overlay = meta / "home-overlay"
    if overlay.is_dir() and not overlay.is_symlink():
        _copy_overlay(overlay, home)


def _inside(home: Path, rel: str) -> Path | None:
    """``home/rel`` when it is a plain relative path whose folder stays in ``home``."""
    parts = Path(rel).parts
    if not parts or Path(rel).is_absolute() or ".." in parts:
        return None
    path = home / rel
    if not path.parent.resolve().is_relative_to(home.resolve()):
        return None
    return path


def _copy_overlay(overlay: Path, home: Path) -> None:
    """Copy files and links of ``overlay`` into ``home`` without following links in either."""
    for dirpath, dirnames, filenames in os.walk(overlay):
        folder = Path(dirpath).relative_to(overlay)
        for name in sorted(dirnames + filenames):
            source = Path(dirpath) / name
            target = _inside(home, str(folder / name))
            if target is None:
                continue
            if source.is_dir() and not source.is_symlink():
                if not target.is_dir() or target.is_symlink():
                    target.unlink(missing_ok=True)
                    target.mkdir()
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            target.unlink(missing_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
