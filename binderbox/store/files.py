"""Filesystem helpers of the store and the dataset cache: sizes, deletion, log files.

Both keep published trees under ``<published>/<key>``, work in progress (and
trees being deleted) under ``tmp/<key>.<random>`` and the locks of
:mod:`binderbox.store.locks` under ``locks/``; the temporary-tree and
deletion helpers here are their common part.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .locks import FileLock, try_lock


class LogTail:
    """Reads the complete lines appended to a log file that may be replaced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None
        self._partial = b""

    def read(self) -> list[str]:
        try:
            current = self.path.stat()
        except FileNotFoundError:
            return []
        if self._file is not None:
            held = os.fstat(self._file.fileno())
            if (held.st_dev, held.st_ino) != (current.st_dev, current.st_ino):
                self.close()  # a new build started a new log
        if self._file is None:
            try:
                self._file = self.path.open("rb")
            except FileNotFoundError:
                return []
            self._partial = b""
        data = self._partial + self._file.read()
        *complete, self._partial = data.split(b"\n")
        return [line.decode(errors="replace") for line in complete]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def new_log(path: Path) -> IO[str]:
    """A fresh log file (a new inode, so followers of the old one notice)."""
    path.unlink(missing_ok=True)
    return path.open("x", encoding="utf-8", errors="replace")


def remove_tree(path: Path) -> None:
    """Delete ``path`` recursively, also where a build left directories read-only."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        _make_writable(path)
        shutil.rmtree(path, ignore_errors=True)


def new_temp(tmp_root: Path, key: str) -> Path:
    """A fresh empty ``tmp_root/<key>.<random>`` readable by sandboxed sessions."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=tmp_root))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the tree from sandboxed sessions
    return tmp


def remove_temps(tmp_root: Path, key: str) -> list[Path]:
    """Delete ``tmp_root/<key>.*``, returned; the caller holds ``key``'s lock (all are stale)."""
    stale = sorted(tmp_root.glob(f"{key}.*"))
    for entry in stale:
        remove_tree(entry)
    return stale


def stale_temps(
    tmp_root: Path, lock_path: Callable[[str], Path], valid_key: re.Pattern[str]
) -> Iterator[tuple[str, Path, FileLock]]:
    """``(key, tree, lock)`` for each tree of ``tmp_root`` whose key's lock is free now.

    Such a tree is left by a build or deletion that died; the key's lock is
    held while the caller handles the tree (released when iteration moves on).
    Names whose key does not match ``valid_key`` are skipped (no lock file made).
    """
    for entry in sorted(tmp_root.iterdir()):
        key = entry.name.split(".", 1)[0]
        if not valid_key.fullmatch(key):
            continue
        with try_lock(lock_path(key)) as lock:
            if lock is not None:
                yield key, entry, lock


def delete_unused(
    tree: Path,
    tmp_root: Path,
    lock_path: Path,
    use_path: Path,
    *,
    claim: Callable[[], bool] = lambda: True,
    cleanup: Callable[[], None] = lambda: None,
) -> bool:
    """Delete the published ``tree`` of a key unless it is being built or used.

    ``lock_path`` (held while the key is built or fetched) and ``use_path``
    (held shared by its users) are tried exclusively without waiting: if
    either is taken, nothing happens.  With both held, ``claim()`` may still
    refuse (a recent use) or forget the key's records; then ``tree`` is
    renamed into ``tmp_root`` and the use lock deleted and released (a user
    waiting on it finds the tree gone), the renamed tree deleted, ``cleanup()``
    run and the lock files deleted (also a use-lock file such a user made
    again, if it is free by then).  Returns whether ``tree`` was deleted.  If
    ``tree`` does not exist both lock files are deleted (nothing left to
    protect) and the answer is ``False``.
    """
    lock = FileLock.try_acquire(lock_path)
    if lock is None:
        return False
    with lock:
        use = FileLock.try_acquire(use_path)
        if use is None:
            return False
        with use:
            if not claim():
                return False
            trash = tmp_root / f"{tree.name}.deleted-{secrets.token_hex(4)}"
            try:
                tree.rename(trash)
            except FileNotFoundError:
                use.unlink()
                lock.unlink()
                return False
            use.unlink()
        remove_tree(trash)
        cleanup()
        with try_lock(use_path) as late:  # made again by a user that waited for the rename
            if late is not None:
                late.unlink()
        lock.unlink()
    return True


def _make_writable(path: Path) -> None:
    """Give the owner rwx on every directory under ``path`` (top-down, so walk can enter)."""
    with contextlib.suppress(OSError):
        path.chmod(path.stat().st_mode | stat.S_IRWXU)
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            child = Path(dirpath, name)
            if not child.is_symlink():
                with contextlib.suppress(OSError):
                    child.chmod(child.stat().st_mode | stat.S_IRWXU)


def disk_usage(path: Path) -> int:
    """Bytes freed by deleting ``path``: blocks of inodes whose links are all inside it."""
    try:
        total = os.lstat(path).st_blocks * 512
    except OSError:
        return 0
    shared: dict[tuple[int, int], list[int]] = {}  # inode -> [links seen, nlink, bytes]
    folders = [os.fspath(path)]
    while folders:  # scandir's entries carry their lstat: one call per file
        try:
            entries = list(os.scandir(folders.pop()))
        except OSError:  # vanished or unreadable meanwhile
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                folders.append(entry.path)
                total += st.st_blocks * 512
            elif st.st_nlink <= 1:
                total += st.st_blocks * 512
            else:
                seen = shared.setdefault(
                    (st.st_dev, st.st_ino), [0, st.st_nlink, st.st_blocks * 512]
                )
                seen[0] += 1
    total += sum(size for links, nlink, size in shared.values() if links >= nlink)
    return total
