"""Session homes on the host: made from the repository, owned by the session's uid.

Today every home is *ephemeral*: made fresh at each start from the repository's
content and postBuild's home changes, removed when the session ends.  (Homes
kept across sessions are the other policy, for logged-in users.)

Everything here runs as root on a tree no sandbox runs in yet, and never
follows a link the repository (or postBuild) put there: the content is copied
with its links as links, the tree is handed to the session's uid with
``lchown`` (:mod:`binderbox.runtime.ownership`), and the ``start`` script is made
executable only when it resolves to a file inside the home, opened without
following links.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from ..builders.overlay import apply_home_overlay
from ..runtime.ownership import give_tree
from ..store.files import remove_tree


def prepare_home(
    home: Path, env_path: Path, content: Path | None, start: str | None, uid: int | None
) -> str | None:
    """Make ``home`` fresh; returns ``start`` if it is a file inside the home (made
    executable), else None.  ``uid``: the session's host uid (None: the service's)."""
    remove_tree(home)
    home.parent.mkdir(parents=True, exist_ok=True)
    home.parent.chmod(0o711)  # sessions enter their own home; nobody lists the others
    if content is not None:
        subprocess.run(
            ["cp", "-a", "--reflink=auto", "--no-target-directory", str(content), str(home)],
            check=True,
            capture_output=True,
        )
    else:
        home.mkdir()
    apply_home_overlay(env_path, home)
    if uid is not None:
        give_tree(home, uid)
    home.chmod(0o700)
    return start if start and make_executable(home, start) else None


def make_executable(home: Path, rel: str) -> bool:
    """``chmod +x`` the regular file ``home/rel`` when it resolves inside ``home``;
    False (nothing changed) otherwise.  The file is opened without following a link,
    so a name swapped for one cannot redirect the change."""
    target = Path(os.path.realpath(home / rel))
    if not target.is_relative_to(home.resolve()):
        return False
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False
        os.fchmod(fd, (info.st_mode & 0o7777) | 0o111)
    finally:
        os.close(fd)
    return True


def remove_home(home: Path) -> None:
    """Delete ``home`` (links inside are removed, never followed)."""
    remove_tree(home)
