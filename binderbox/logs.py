"""Small shared pieces for log lines: the progress callback, a log file's tail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

#: A callback that receives one line of human-readable progress.
LogFn = Callable[[str], None]


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of the file at ``path`` ("" if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
