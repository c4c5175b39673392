"""Small shared types for streaming log lines between stages."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

#: A callback that receives one line of human-readable progress.
LogFn = Callable[[str], None]

#: An async stream of log lines (a builder's output, a tailed log file).
LogStream = AsyncIterator[str]
