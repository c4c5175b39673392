"""Sizes of folder trees.

Two measures, for two questions:

* :func:`tree_size` -- the bytes of the regular files (their apparent size): what a
  dataset holds, as its limit is stated;
* :func:`disk_bytes` -- the disk a tree takes: the blocks of every inode under it
  (files, folders, links), each inode once however many names it has, sparse files
  at what they really use, at any depth.  The limits of homes and built environments
  are in these bytes: they protect the disk.

(The store's ``disk_usage`` answers a third one: the bytes deleting a tree frees.)
None follows links; what vanishes meanwhile is skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
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


#: seconds :func:`disk_bytes` may take (a tree too big to measure in it counts as over)
MEASURE_TIMEOUT = 120.0


def disk_bytes(path: Path, timeout: float = MEASURE_TIMEOUT) -> int:
    """Bytes of disk the inodes under ``path`` (itself included) take, each counted once.

    Measured by GNU ``du`` (``-s -x -B1``): it walks trees of any depth, where a walk by
    path names loses what lies deeper than PATH_MAX -- a hiding place untrusted code
    could make.  Files vanishing meanwhile are skipped; a missing ``path`` is 0 bytes.
    Raises :class:`TimeoutError` when the tree (millions of files) takes longer than
    ``timeout`` seconds to measure, :class:`OSError` when ``du`` could not run.
    """
    try:
        done = subprocess.run(
            [shutil.which("du") or "/usr/bin/du", "-s", "-x", "-B1", "--", os.fspath(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{path} could not be measured in {timeout:g} s") from None
    fields = done.stdout.split()  # a total even when some entries vanished (status 1)
    if fields and fields[0].isdigit():
        return int(fields[0])
    if not os.path.lexists(path):
        return 0
    raise OSError(f"du measured nothing in {path}: {done.stderr.strip()[:200]}")


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
