"""Folder trees that must stay under a size while untrusted code writes into them.

There is no filesystem quota on the machines binderbox runs on (and none it could
set up per home and per build), so sizes are measured: :class:`TreeWatch` holds
trees and their limits, and :meth:`TreeWatch.check` (the supervisor runs it every
:data:`CHECK_INTERVAL` seconds) says when one is over.  Sizes are
:func:`~binderbox.util.sizes.disk_bytes`: the disk the tree takes.

Walking a tree costs time in proportion to its files -- too much for five times a
second -- and a tree walked only every ``interval`` seconds can grow by gigabytes
in between.  So each check first asks the tree's filesystem how much is free (one
``statvfs`` call): a tree cannot have grown by more than its filesystem's free
space shrank since its last walk.  Only when that bound could put the tree over its
limit, or ``interval`` seconds after its last walk in any case (space freed
elsewhere would hide growth), is the tree walked again.  Code writing fast is
stopped within about one check of crossing its limit; a tree far under its limit
is walked once every ``interval`` seconds.

One file alone is held to a size by the kernel: the supervisor sets
``RLIMIT_FSIZE`` (``--file-size-limit``), and a write past it fails (``EFBIG``;
programs that do not ignore ``SIGXFSZ`` are killed by it).

Standard library only (and small binderbox modules that are): the supervisor
imports it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..util.sizes import disk_bytes

#: seconds between two checks (statvfs calls) of the watched trees: what code writing
#: at the disk's speed can add past a limit before it is stopped
CHECK_INTERVAL = 0.2


@dataclass
class WatchedTree:
    """A tree and its limit in bytes, with what its last walk found."""

    path: Path
    limit: int
    #: bytes at the last walk (-1: not walked yet)
    size: int = -1
    #: free bytes of its filesystem just before that walk
    free: int = 0
    #: when it was walked (time.monotonic())
    walked: float = 0.0

    @classmethod
    def parse(cls, text: str) -> WatchedTree:
        """``PATH=BYTES`` (the supervisor's ``--tree`` option)."""
        path, sep, limit = text.rpartition("=")
        if not sep or not path or not limit.isdigit():
            raise ValueError(f"expected PATH=BYTES, got {text!r}")
        return cls(Path(path), int(limit))

    def to_arg(self) -> str:
        """The ``--tree`` value of this tree."""
        return f"{self.path}={self.limit}"


def _free_bytes(path: Path, default: int) -> int:
    try:
        info = os.statvfs(path)
    except OSError:
        return default
    return info.f_bfree * info.f_frsize


class TreeWatch:
    """Checks trees against their limits.  See the module docstring."""

    def __init__(self, trees: Sequence[WatchedTree], interval: float) -> None:
        self.trees = list(trees)
        self.interval = interval

    def check(self, now: float | None = None) -> str:
        """Walk the trees that may be over their limit; a reason to stop, or ''."""
        now = time.monotonic() if now is None else now
        for tree in self.trees:
            free = _free_bytes(tree.path, tree.free)
            bound = tree.size + max(0, tree.free - free)
            if tree.size < 0 or bound > tree.limit or now - tree.walked >= self.interval:
                try:
                    size = disk_bytes(tree.path)
                except TimeoutError:
                    return "a folder it writes holds too many files to be measured"
                except OSError:
                    continue  # du could not run (the host is short of something): next time
                # what was written during the walk counts next time
                tree.size, tree.free, tree.walked = size, free, now
                if tree.size > tree.limit:
                    return (
                        f"a folder it writes holds {tree.size} bytes, "
                        f"over its limit of {tree.limit}"
                    )
        return ""


def over_limit(trees: Sequence[WatchedTree]) -> bool:
    """Whether a tree is over its limit now (a full walk of each; one too big to be
    measured is)."""
    try:
        return any(disk_bytes(tree.path) > tree.limit for tree in trees)
    except TimeoutError:
        return True
