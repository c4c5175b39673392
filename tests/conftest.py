"""Suite-wide set-up.

Sandboxes run as unprivileged host uids when the suite runs as root, and they
must be able to enter the data directories tests make under pytest's temporary
folders, which pytest creates private (mode 0700).  Here those folders are made
enterable (0711: searchable, not listable) by every uid.  The operator's side
of the same rule is binderbox's check that a data directory can be entered
(``make_reachable`` in binderbox/runtime/provision.py).
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

_mktemp = pytest.TempPathFactory.mktemp


def _enterable(path: Path) -> None:
    for folder in (path, *path.parents):
        if folder == Path("/"):
            return
        info = folder.stat()
        if not info.st_mode & stat.S_IXOTH and info.st_uid == 0:
            folder.chmod(stat.S_IMODE(info.st_mode) | 0o011)


def _mktemp_enterable(self: pytest.TempPathFactory, *args: Any, **kwargs: Any) -> Path:
    path = _mktemp(self, *args, **kwargs)
    _enterable(path)
    return path


pytest.TempPathFactory.mktemp = _mktemp_enterable  # type: ignore[method-assign]
