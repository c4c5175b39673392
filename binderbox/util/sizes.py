"""Sizes of folder trees.

Two measures, for two questions:

* :func:`tree_size` -- the apparent bytes of the tree: what a dataset holds, as its
  limit is stated;
* :func:`disk_bytes` -- the disk a tree takes: the blocks of every inode under it
  (files, folders, links), each inode once however many names it has, sparse files
  at what they really use, at any depth.  The limits of homes and built environments
  are in these bytes: they protect the disk.

(The store's ``disk_usage`` answers a third one: the bytes deleting a tree frees.)
None follows links; what vanishes meanwhile is skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

#: seconds :func:`disk_bytes` may take (a tree too big to measure in it counts as over)
MEASURE_TIMEOUT = 120.0


def tree_size(path: Path, timeout: float = MEASURE_TIMEOUT) -> int:
    """The apparent bytes of what is under ``path`` (``du --apparent-size``), each inode
    once; errors as :func:`disk_bytes`."""
    return _du(path, timeout, "--apparent-size")


def disk_bytes(path: Path, timeout: float = MEASURE_TIMEOUT) -> int:
    """Bytes of disk the inodes under ``path`` (itself included) take, each counted once.

    Raises :class:`TimeoutError` when the tree (millions of files) takes longer than
    ``timeout`` seconds to measure, :class:`OSError` when ``du`` could not run.
    """
    return _du(path, timeout)


def file_count(path: Path, timeout: float = MEASURE_TIMEOUT) -> int:
    """Inodes under ``path`` (itself included), each counted once; errors as
    :func:`disk_bytes`."""
    return _du(path, timeout, "--inodes")


def _du(path: Path, timeout: float, *options: str) -> int:
    """GNU ``du -s -x -B1``: it walks trees of any depth by descriptor, never following
    a link, even one swapped in while it walks -- where a walk by path names loses
    what lies deeper than PATH_MAX, or follows a folder replaced by a link meanwhile,
    hiding places (or a root-owned walk of host folders) untrusted code could make.
    Files vanishing meanwhile are skipped; a missing ``path`` is 0 bytes."""
    du = shutil.which("du") or "/usr/bin/du"
    try:
        done = subprocess.run(
            [du, "-s", "-x", "-B1", *options, "--", os.fspath(path)],
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


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``'2G'``, ``'2GiB'``, ``'500M'``, ``'1024'`` -> bytes (powers of 1024); '' -> 0
    (no limit).  ValueError for anything else (a negative size among them)."""
    if not text.strip():
        return 0
    found = _SIZE.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not a size (like '2G', '500M' or '1024')")
    return int(float(found.group(1)) * _UNITS[found.group(2).upper()])


def valid_size(proposal: dict[str, Any]) -> str:
    """A traitlets ``@validate`` body for size settings: the value, checked (a
    :class:`~traitlets.TraitError` names the setting and says what is wrong)."""
    from traitlets import TraitError

    value = str(proposal["value"])
    try:
        parse_size(value)
    except ValueError as err:
        trait = proposal["trait"]
        raise TraitError(f"{type(proposal['owner']).__name__}.{trait.name}: {err}") from None
    return value
