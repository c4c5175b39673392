"""Least-recently-used eviction under a disk budget, and caches of keyed folders.

:func:`evict_lru` is the one eviction loop: the environment store, the dataset
cache and the caches below hand it their entries (key, size, last use) and a
``delete`` that refuses what is in use (:func:`~binderbox.store.files.delete_unused`:
the key's ``locks/<key>.lock`` or ``locks/<key>.use`` is held).

:class:`KeyedFolders` is the store's scheme for a cache that is a folder of
published entries (apt layers, conda packages)::

    <root>/<key>/       a published entry (``<published>`` may be another folder)
    <root>/tmp/         entries being made or deleted
    <root>/locks/<key>.lock    held by whoever makes or deletes <key>
    <root>/locks/<key>.use     held shared by every build or session using <key>

Using an entry is :meth:`KeyedFolders.use` (a shared lock, and the entry's last
use set to now); :meth:`KeyedFolders.evict` deletes least-recently-used entries
while the total is over the budget, never one whose lock or use lock is held,
nor one used less than ``min_idle`` seconds ago.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .files import delete_unused, disk_usage
from .locks import FileLock

_KEY = re.compile(r"[A-Za-z0-9_.+-]{1,160}")


@dataclass(frozen=True)
class Entry:
    """One evictable entry: its key, the bytes deleting it frees, its last use."""

    key: str
    size: int
    last_used: float


def evict_lru(
    entries: Iterable[Entry], budget: int, delete: Callable[[Entry], bool]
) -> list[Entry]:
    """Delete (``delete``, which may refuse) the least recently used ``entries`` while
    their total size is over ``budget``; the deleted ones.  ``budget`` 0: none."""
    ordered = sorted(entries, key=lambda entry: (entry.last_used, entry.key))
    total = sum(entry.size for entry in ordered)
    removed: list[Entry] = []
    for entry in ordered:
        if budget <= 0 or total <= budget:
            break
        if delete(entry):
            total -= entry.size
            removed.append(entry)
    return removed


@dataclass
class KeyedFolders:
    """Published folders under ``published``, locks and temporary trees under ``root``
    (see the module docstring).  ``stamp(key)`` is the file whose modification time is
    the entry's last use (the folder itself by default); ``extra(key)`` lists other
    paths that belong to the entry, deleted with it and counted in its size."""

    root: Path
    published: Path
    stamp: Callable[[str], Path] | None = None
    extra: Callable[[str], list[Path]] = field(default=lambda key: [])

    def __post_init__(self) -> None:
        for sub in ("tmp", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.published / _checked(key)

    def lock_path(self, key: str) -> Path:
        return self.root / "locks" / f"{_checked(key)}.lock"

    def use_path(self, key: str) -> Path:
        return self.root / "locks" / f"{_checked(key)}.use"

    def _stamp(self, key: str) -> Path:
        return self.stamp(key) if self.stamp is not None else self.path(key)

    def touch(self, key: str) -> None:
        """Mark ``key`` used now (if it is there)."""
        with contextlib.suppress(OSError):
            os.utime(self._stamp(key))

    def use(self, key: str) -> FileLock:
        """A shared use lock on ``key`` (waiting while it is being deleted), and its last
        use set to now.  Held, the entry is never evicted; the key may not be published
        yet (whoever holds it is about to make it)."""
        lock = FileLock.acquire(self.use_path(key), shared=True)
        self.touch(key)
        return lock

    def entries(self) -> Iterator[Entry]:
        """Every published entry (blocking: sizes are measured)."""
        for folder in sorted(self.published.iterdir()):
            key = folder.name
            if not _KEY.fullmatch(key) or key in ("tmp", "locks") or not folder.is_dir():
                continue
            try:
                last = self._stamp(key).stat().st_mtime
            except OSError:
                continue
            size = disk_usage(folder) + sum(disk_usage(p) for p in self.extra(key))
            yield Entry(key, size, last)

    def evict(self, budget: int, min_idle: float) -> list[Entry]:
        """Evict least-recently-used entries while over ``budget`` (blocking)."""
        return evict_lru(list(self.entries()), budget, lambda e: self.delete(e.key, min_idle))

    def delete(self, key: str, min_idle: float | None) -> bool:
        """Delete ``key`` unless it is made, used, or was used under ``min_idle`` s ago."""

        def claim() -> bool:  # both locks held
            with contextlib.suppress(OSError):
                idle = time.time() - self._stamp(key).stat().st_mtime
                if min_idle is not None and idle < min_idle:
                    return False
            return True

        def cleanup() -> None:
            from .files import remove_tree

            for path in self.extra(key):
                remove_tree(path)

        return delete_unused(
            self.path(key),
            self.root / "tmp",
            self.lock_path(key),
            self.use_path(key),
            claim=claim,
            cleanup=cleanup,
        )


def _checked(key: str) -> str:
    if not _KEY.fullmatch(key) or key in (".", ".."):
        raise ValueError(f"invalid cache key {key!r}")
    return key
