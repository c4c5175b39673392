"""Readable copies of what sandboxes run from: interpreters and tools.

Sandboxes run as unprivileged host uids (:mod:`binderbox.runtime.host`).  An
interpreter under a folder they cannot enter -- pyenv's under ``/root``
(mode 0700) is the common case -- cannot be shown to them, and loosening
root's home would show them everything else in it.  So :func:`provision`
makes a copy of such a folder under a directory every sandbox uid can
read, hard-linking the files when they are on the same filesystem (no disk
used, the same inodes; root alone may write them) and copying them
otherwise.  Sandboxes see the copy at the original path (the environments
built on it name that path in their scripts and ``pyvenv.cfg``), so nothing
is rewritten.

A copy is made once, published by rename (a crash leaves none half-made) and
reused; a folder that is readable already is used as it is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

from ..store.locks import FileLock

#: the file that marks a finished copy
COMPLETE = ".binderbox-complete"


def readable_by_all(path: Path) -> bool:
    """Whether every uid can reach ``path`` (each folder above it searchable by others)
    and read it (a folder also listable)."""
    path = path.resolve()
    for folder in reversed(path.parents):
        if not folder.stat().st_mode & stat.S_IXOTH:
            return False
    mode = path.stat().st_mode
    wanted = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
    return mode & wanted == wanted


def make_reachable(path: Path) -> None:
    """Create ``path`` (a folder) searchable and readable by every uid, or raise
    PermissionError naming the folder above it that is not searchable."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    for folder in reversed(path.resolve().parents):
        if not folder.stat().st_mode & stat.S_IXOTH:
            raise PermissionError(
                f"{folder} (mode {stat.filemode(folder.stat().st_mode)}) cannot be entered "
                "by the sandboxes' users"
            )


def provision(source: Path, root: Path) -> Path:
    """``source`` itself when every uid can read it, else a readable copy under ``root``
    (see the module docstring).  ``root`` must be reachable by every uid."""
    source = source.resolve()
    if readable_by_all(source):
        return source
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    target = root / f"{source.name}-{digest}"
    if (target / COMPLETE).exists() or (target.is_file() and target.stat().st_size):
        return target
    make_reachable(root)
    with FileLock.acquire(root / f".{target.name}.lock"):
        if (target / COMPLETE).exists() or target.is_file():
            return target
        tmp = root / f".{target.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        _copy(source, tmp)
        if tmp.is_dir():  # a file keeps its mode: it may be the source's own inode
            (tmp / COMPLETE).write_text(f"{source}\n")
            tmp.chmod(0o755)
        tmp.rename(target)
    return target


def _copy(source: Path, target: Path) -> None:
    """Hard links where possible (``cp -al``), a real copy otherwise."""
    same_fs = source.stat().st_dev == target.parent.stat().st_dev
    if same_fs:
        linked = subprocess.run(
            ["cp", "-al", "--no-target-directory", str(source), str(target)],
            capture_output=True,
            check=False,
        )
        if linked.returncode == 0:
            return
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    subprocess.run(
        ["cp", "-a", "--no-target-directory", str(source), str(target)],
        capture_output=True,
        check=True,
    )
