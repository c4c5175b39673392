"""Filesystem helpers of the store: sizes, deletion, log files."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path
from typing import IO


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
    total = 0
    shared: dict[tuple[int, int], list[int]] = {}  # inode -> [links seen, nlink, bytes]
    for dirpath, dirnames, filenames in os.walk(path):
        total += os.lstat(dirpath).st_blocks * 512
        for name in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            st = os.lstat(os.path.join(dirpath, name))  # noqa: PTH118 -- hot loop
            if st.st_nlink <= 1 or stat.S_ISDIR(st.st_mode):
                total += st.st_blocks * 512
            else:
                seen = shared.setdefault(
                    (st.st_dev, st.st_ino), [0, st.st_nlink, st.st_blocks * 512]
                )
                seen[0] += 1
    total += sum(size for links, nlink, size in shared.values() if links >= nlink)
    return total
