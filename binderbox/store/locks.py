"""Cross-process file locks (``fcntl.flock``) that survive their file being deleted.

A :class:`FileLock` is an ``flock`` on a small file.  ``flock`` locks belong
to an *open file description*: two ``open()`` calls conflict even inside one
process, a lock dies with the last descriptor that refers to it (also in a
child that inherited it, e.g. through ``subprocess``'s ``pass_fds``), and the
kernel drops it when the process dies, SIGKILL included.  That last property
is what the store relies on: "the lock of a key is free" means "nobody is
building it", even after a crash.

Lock files may be removed by their holder (:meth:`FileLock.unlink`) to keep
the directory tidy.  Acquiring therefore re-checks after locking that the
path still names the locked inode, and retries on a fresh file if not, so two
processes never both believe they hold "the" lock.

The environment store and the dataset cache use the same scheme per key:
``locks/<key>.lock`` is held exclusively by whoever builds (fetches) or
deletes the key, ``locks/<key>.use`` shared by its users and exclusively by
whoever deletes it (see :func:`binderbox.store.files.delete_unused`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType


class FileLock:
    """A held ``flock``; release it with :meth:`release` or as a context manager."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def try_acquire(cls, path: Path, *, shared: bool = False) -> FileLock | None:
        """The lock on ``path`` if it is free now, else ``None`` (never blocks)."""
        return cls._acquire(path, shared=shared, blocking=False)

    @classmethod
    def acquire(cls, path: Path, *, shared: bool = False) -> FileLock:
        """The lock on ``path``, waiting for it (blocks the calling thread)."""
        lock = cls._acquire(path, shared=shared, blocking=True)
        assert lock is not None
        return lock

    @classmethod
    async def wait(
        cls, path: Path, interval: float, between: Callable[[], None] | None = None
    ) -> FileLock:
        """The exclusive lock on ``path``, awaited without parking a thread.

        Tries every ``interval`` seconds (another process's build or download
        can take minutes, and each waiting thread would take one of the event
        loop's few worker threads); ``between`` runs after each failed try
        (to follow the holder's log, say).  Cancelling the caller stops waiting.
        """
        while True:
            lock = cls.try_acquire(path)
            if lock is not None:
                return lock
            if between is not None:
                between()
            await asyncio.sleep(interval)

    @classmethod
    def _acquire(cls, path: Path, *, shared: bool, blocking: bool) -> FileLock | None:
        operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if not blocking:
            operation |= fcntl.LOCK_NB
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, operation)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            if _same_file(path, fd):
                return cls(path, fd)
            # the holder we waited for deleted the file: lock the new one
            os.close(fd)

    def fileno(self) -> int:
        """The descriptor holding the lock (e.g. to hand to a child process)."""
        if self._fd is None:
            raise ValueError(f"lock on {self.path} already released")
        return self._fd

    def unlink(self) -> None:
        """Delete the lock file while holding it (later lockers get a fresh file)."""
        if self._fd is not None and _same_file(self.path, self._fd):
            self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> FileLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


@contextlib.contextmanager
def try_lock(path: Path) -> Iterator[FileLock | None]:
    """The exclusive lock on ``path`` if it is free now (released on exit), else ``None``."""
    lock = FileLock.try_acquire(path)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def _same_file(path: Path, fd: int) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)
