"""The data fetcher contract, and the context a fetch runs in.

A :class:`DataFetcher` knows one kind of source.  To add one, subclass it and
override two methods:

``matches(entry) -> bool``
    Whether this fetcher handles ``entry.src`` (cheap, no I/O).  The cache
    asks its fetchers in order and uses the first that matches.
``async fetch(entry, dest, ctx) -> None``
    Put the dataset's files into ``dest`` (an existing folder, possibly
    already holding the files of other entries with the same
    ``projectName``).  Write **only** inside ``dest``.  Report progress with
    :meth:`FetchContext.report`, account for every byte written with
    :meth:`FetchContext.count` (it raises when the dataset outgrows its
    limit, which aborts the download early), and check
    :meth:`FetchContext.check` in loops (it raises once the fetch was
    cancelled or timed out).  Raise :class:`~binderbox.errors.DataError`
    naming the entry, the source and the cause on any failure; the cache then
    deletes ``dest``, so a failed fetch never has to clean up after itself.

Blocking work (HTTP, extraction) runs in a thread; all :class:`FetchContext`
methods are thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from traitlets.config import LoggingConfigurable

from ...errors import DataError
from ...events import Fetching
from ..requirement import DataEntry
from .guard import Guard

#: seconds between two progress events of one download
REPORT_INTERVAL = 0.5


def human_bytes(n: float) -> str:
    """``12.3 MB`` style sizes for messages."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@dataclass
class FetchContext:
    """What a fetch may use: limits, deadline, progress, cancellation.

    ``emit`` receives events (from any thread), ``limit`` is the byte budget
    of the whole dataset folder, ``deadline`` a :func:`time.monotonic` value,
    ``env_path`` the host path of the repository's environment (code
    sources), ``project_name`` the folder being filled, ``read_timeout`` the
    longest silence of a server before a download is abandoned, ``timeout``
    the total time allowed (for messages), ``guard`` where downloads may
    connect (:class:`~.guard.Guard`; by default no private hosts).
    """

    emit: Callable[[Fetching], None]
    limit: int
    deadline: float
    project_name: str = ""
    env_path: Path | None = None
    read_timeout: float = 60.0
    timeout: float = 0.0
    guard: Guard = field(default_factory=Guard)
    used: int = 0
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_report: float = 0.0

    def cancel(self) -> None:
        """Ask the running fetch to stop (timeout, shutdown)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled.is_set()

    def check(self) -> None:
        """Raise once the fetch is cancelled or past its deadline."""
        if self._cancelled.is_set() or time.monotonic() > self.deadline:
            self._cancelled.set()
            limit = f" ({self.timeout:.0f} s)" if self.timeout else ""
            raise DataError(
                f"Dataset '{self.project_name}' took longer than allowed{limit} to fetch.",
                hint="Try again later, or make the dataset smaller.",
                status_code=504,
                reason="data_timeout",
            )

    def remaining_time(self) -> float:
        """Seconds left before the deadline (at least a little, for socket timeouts)."""
        return max(0.1, self.deadline - time.monotonic())

    def count(self, nbytes: int, entry: DataEntry | None = None) -> None:
        """Account ``nbytes`` written into the dataset; raise when over the limit."""
        with self._lock:
            self.used += nbytes
            over = self.used > self.limit
        if over:
            self.cancel()
            raise self.too_large(entry)

    def uncount(self, nbytes: int) -> None:
        """Give back bytes that were deleted again (a downloaded archive)."""
        with self._lock:
            self.used -= nbytes

    def would_exceed(self, nbytes: int) -> bool:
        """Whether writing ``nbytes`` more would pass the limit."""
        return self.used + nbytes > self.limit

    def too_large(self, entry: DataEntry | None = None) -> DataError:
        """The error for a dataset that outgrew its limit."""
        name = entry.describe() if entry else f"'{self.project_name}'"
        return DataError(
            f"Dataset {name} is larger than the limit of {human_bytes(self.limit)}.",
            hint="Make the dataset smaller or ask the operator for a larger limit.",
            status_code=413,
            reason="data_too_large",
        )

    def report(
        self,
        message: str,
        done: int | None = None,
        total: int | None = None,
        *,
        force: bool = False,
    ) -> None:
        """Send a progress event (rate-limited unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._last_report < REPORT_INTERVAL:
            return
        self._last_report = now
        self.emit(Fetching(message=message, done=done, total=total))


class DataFetcher(LoggingConfigurable):
    """One kind of dataset source.  See the module docstring for the contract."""

    #: short name used in logs and messages
    kind: str = "base"

    def matches(self, entry: DataEntry) -> bool:
        """Whether this fetcher handles ``entry``."""
        raise NotImplementedError

    async def fetch(self, entry: DataEntry, dest: Path, ctx: FetchContext) -> None:
        """Put the entry's files into ``dest`` or raise :class:`DataError`."""
        raise NotImplementedError


def fail(entry: DataEntry, source: str, cause: str, *, hint: str = "", **kw: object) -> DataError:
    """A :class:`DataError` naming the entry, its source and the cause."""
    return DataError(
        f"Dataset {entry.describe()} could not be fetched from {source}: {cause}",
        hint=hint,
        **kw,  # type: ignore[arg-type]
    )


async def run_blocking(ctx: FetchContext, fn: Callable[[], None]) -> None:
    """Run ``fn`` in a thread; if the caller is cancelled, stop it and wait for it.

    Waiting matters: the cache deletes ``dest`` after a failure, which must not
    race a thread still writing there.
    """
    future = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        ctx.cancel()
        with contextlib.suppress(BaseException):  # its error does not matter any more
            await future
        raise
