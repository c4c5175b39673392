"""Handing folder trees to sandbox uids and taking them back, without following links.

A sandbox writes only where it owns the files: its home, the environment being
built, a copy of the repository.  These functions change owners with
``lchown`` and modes only of what is not a link, walking with ``lstat``: a
link planted by repository code is never followed, so no host file outside the
tree is ever changed: owners change with ``lchown``, modes through a descriptor
opened with ``O_NOFOLLOW``, so even a file swapped for a link between the look
and the change is never followed.  They are meant for trees no sandbox runs in
at the time (a build between its steps, a home before its session starts).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: bits never left on a file given to or taken back from a sandbox
_DANGEROUS = stat.S_ISUID | stat.S_ISGID | stat.S_IWGRP | stat.S_IWOTH
#: bits every published file gets (and folders and executables, searching)
_READ = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
_SEARCH = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


def give_tree(root: Path, uid: int) -> None:
    """Make every entry under ``root`` (and ``root``) owned by ``uid`` (gid ``uid``);
    set-uid/set-gid bits and group/other write bits are dropped."""
    _walk(root, uid, readable=False)


def take_back(root: Path) -> None:
    """Give ``root``'s tree to this process's uid (the service), with the same rules,
    and readable by everyone: what a build or a code source published is then
    readable by every sandbox uid and writable by none."""
    _walk(root, os.geteuid(), readable=True)


def take_back_folder(path: Path) -> None:
    """Only the folder ``path`` itself back to the service (what is in it keeps its
    owners): no sandbox uid may then add, rename or remove its entries."""
    _fix(path, os.geteuid(), True)


def _walk(root: Path, uid: int, *, readable: bool) -> None:
    _fix(root, uid, readable)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            _fix(Path(dirpath, name), uid, readable)


def _fix(path: Path, uid: int, readable: bool) -> None:
    info = os.lstat(path)
    if info.st_uid != uid or info.st_gid != uid:
        os.lchown(path, uid, uid)
    if stat.S_ISLNK(info.st_mode):
        return
    mode = stat.S_IMODE(info.st_mode) & ~_DANGEROUS
    if readable:
        mode |= _READ | (_SEARCH if stat.S_ISDIR(info.st_mode) or mode & stat.S_IXUSR else 0)
    if mode != stat.S_IMODE(info.st_mode):
        _chmod_unfollowed(path, mode)


def _chmod_unfollowed(path: Path, mode: int) -> None:
    """``chmod`` of what ``path`` names itself: a link swapped in since the look is not
    followed (opened with O_NOFOLLOW; sockets and the like cannot be opened: skipped)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
