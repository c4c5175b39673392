"""Sizes of folder trees.

Two measures, for two questions:

* :func:`tree_size` -- the bytes of the regular files (their apparent size): what a
  dataset holds, as its limit is stated;
* :func:`disk_bytes` -- the disk a tree takes: the blocks of every inode under it
  (files, folders, links), each inode once however many names it has, sparse files
  at what they really use.  The limits of homes and built environments are in these
  bytes: they protect the disk.

(The store's ``disk_usage`` answers a third one: the bytes deleting a tree frees.)
Both walk without following links and skip what vanishes meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    stack = [str(path)]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for item in it:
                if item.is_dir(follow_symlinks=False):
                    stack.append(item.path)
                elif item.is_file(follow_symlinks=False):
                    total += item.stat(follow_symlinks=False).st_size
    return total


def disk_bytes(path: Path) -> int:
    """Bytes of disk the inodes under ``path`` (itself included) take, each counted once."""
    try:
        top = os.lstat(path)
    except OSError:
        return 0
    seen = {(top.st_dev, top.st_ino)}
    total = top.st_blocks * 512
    folders = [os.fspath(path)] if stat.S_ISDIR(top.st_mode) else []
    while folders:
        with contextlib.suppress(OSError), os.scandir(folders.pop()) as it:
            for entry in it:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    folders.append(entry.path)
                elif info.st_nlink > 1:
                    inode = (info.st_dev, info.st_ino)
                    if inode in seen:
                        continue
                    seen.add(inode)
                total += info.st_blocks * 512
    return total


def human(size: int) -> str:
    """``size`` bytes in words: ``'10 GiB'``, ``'200 MiB'``, ``'1.5 KiB'``, ``'12 bytes'``."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "bytes":
        return f"{size} bytes"
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"
