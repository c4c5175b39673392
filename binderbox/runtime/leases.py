"""Host-wide leases of numbered resources (host uids, sandbox addresses), held by a descriptor.

A lease is an exclusive ``flock`` on ``<run_dir>/<kind>-<value>``.  Whoever holds
the descriptor holds the lease; the kernel ends it when the last copy of the
descriptor closes, so a lease handed to a session's supervisor (``pass_fds``)
lasts exactly as long as that process, whatever ends it, and a crash never
leaves a stale claim.  Every binderbox process on the machine (several services,
the CLI, tests) draws from the same directory, so two sandboxes never share a
uid or an address.

Usage::

    lease = claim(run_dir, "uid", range(first, first + count))
    lease.value, lease.fd  # hand lease.fd to the process that keeps it
    lease.release()        # this process's copy
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: host-wide runtime state of binderbox: leases, locks, the sandboxes' passwd files
RUN_ROOT = Path("/run/binderbox")
#: where leases live when the caller names no folder
RUN_DIR = RUN_ROOT / "leases"


class NoLeaseLeft(RuntimeError):
    """Every value of the range is leased."""


@dataclass
class Lease:
    """One held lease: ``value`` is what was claimed, ``fd`` the descriptor holding it."""

    kind: str
    value: int
    fd: int

    def release(self) -> None:
        """Close this process's descriptor (other copies keep the lease)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def lease_dir(run_dir: Path | None = None) -> Path:
    """The lease folder, made (mode 0700) on first use."""
    folder = run_dir or RUN_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def claim(run_dir: Path | None, kind: str, values: Iterable[int]) -> Lease:
    """Lease the first free value of ``values``; :class:`NoLeaseLeft` when none is."""
    for value in values:
        lease = try_claim(run_dir, kind, value)
        if lease is not None:
            return lease
    raise NoLeaseLeft(f"every {kind} of the range is in use")


def try_claim(run_dir: Path | None, kind: str, value: int) -> Lease | None:
    """Lease ``value`` if it is free now; None when someone holds it."""
    path = lease_dir(run_dir) / f"{kind}-{value}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return Lease(kind, value, fd)


def lock_held(path: Path) -> bool:
    """Whether some process holds a ``flock`` on ``path`` now (a missing file: no)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
