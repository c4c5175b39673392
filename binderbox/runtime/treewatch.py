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

from ..util.sizes import disk_bytes, file_count

#: seconds between two checks (statvfs calls) of the watched trees: what code writing
#: at the disk's speed can add past a limit before it is stopped
CHECK_INTERVAL = 0.2


#: files and folders a watched tree may hold unless told otherwise: millions of empty
#: files take inodes (16 million on a 256 GB ext4 disk) but hardly any bytes
DEFAULT_FILES = 250_000


@dataclass
class WatchedTree:
    """A tree, its limits in bytes and in files (inodes), with what its last walk found."""

    path: Path
    limit: int
    files: int = DEFAULT_FILES
    #: bytes and inodes at the last walk (-1: not walked yet)
    size: int = -1
    count: int = -1
    #: free bytes and inodes of its filesystem just before that walk
    free: int = 0
    free_inodes: int = 0
    #: when it was walked (time.monotonic())
    walked: float = 0.0

    @classmethod
    def parse(cls, text: str) -> WatchedTree:
        """``PATH=BYTES,FILES`` (the supervisor's ``--tree`` option)."""
        path, sep, limits = text.rpartition("=")
        size, _, files = limits.partition(",")
        if not sep or not path or not size.isdigit() or not files.isdigit():
            raise ValueError(f"expected PATH=BYTES,FILES, got {text!r}")
        return cls(Path(path), int(size), int(files))

    def to_arg(self) -> str:
        """The ``--tree`` value of this tree."""
        return f"{self.path}={self.limit},{self.files}"

    def may_be_over(self, free: int, free_inodes: int, now: float, interval: float) -> bool:
        """Whether a walk is due: never walked, ``interval`` passed, or the filesystem
        lost enough free space or inodes since the last walk for a limit to be passed."""
        if self.size < 0 or now - self.walked >= interval:
            return True
        grown = self.size + max(0, self.free - free)
        more = self.count + max(0, self.free_inodes - free_inodes)
        return grown > self.limit or more > self.files

    def over(self) -> str:
        """What is over a limit after the last walk ('' when nothing is)."""
        if self.size > self.limit:
            return f"a folder it writes holds {self.size} bytes, over its limit of {self.limit}"
        if self.count > self.files:
            return f"a folder it writes holds {self.count} files, over its limit of {self.files}"
        return ""


def _free(path: Path, default: tuple[int, int]) -> tuple[int, int]:
    """Free bytes and free inodes of ``path``'s filesystem."""
    try:
        info = os.statvfs(path)
    except OSError:
        return default
    return info.f_bfree * info.f_frsize, info.f_ffree


class TreeWatch:
    """Checks trees against their limits.  See the module docstring."""

    def __init__(self, trees: Sequence[WatchedTree], interval: float) -> None:
        self.trees = list(trees)
        self.interval = interval

    def check(self, now: float | None = None) -> str:
        """Walk the trees that may be over their limit; a reason to stop, or ''."""
        now = time.monotonic() if now is None else now
        for tree in self.trees:
            free, free_inodes = _free(tree.path, (tree.free, tree.free_inodes))
            if not tree.may_be_over(free, free_inodes, now, self.interval):
                continue
            try:
                size, count = disk_bytes(tree.path), file_count(tree.path)
            except TimeoutError:
                return "a folder it writes holds too many files to be measured"
            except OSError:
                continue  # du could not run (the host is short of something): next time
            # what was written during the walk counts next time
            tree.size, tree.count, tree.walked = size, count, now
            tree.free, tree.free_inodes = free, free_inodes
            if tree.over():
                return tree.over()
        return ""


def over_limit(trees: Sequence[WatchedTree]) -> str:
    """What of ``trees`` is over a limit now, after a full walk of each: ``'bytes'``,
    ``'files'`` (a tree too big to be measured counts as over) or ``''``."""
    for tree in trees:
        try:
            if disk_bytes(tree.path) > tree.limit:
                return "bytes"
            if file_count(tree.path) > tree.files:
                return "files"
        except TimeoutError:
            return "files"
    return ""
