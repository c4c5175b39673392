"""Sessions nothing tracks any more: found and stopped.

JupyterHub records a server's state (its supervisor's pid) only once the spawner's
``start`` returned.  A hub that dies while a session starts (a crash, an OOM kill)
comes back with no record of that session, whose supervisor goes on running: the
service still holds ``<data>/service.lock``, so the session's own watchdog does not
fire either, and its leases, use-locks, home and memory stay taken.

:class:`UntrackedSessions` looks for them every ``interval`` seconds: supervisors
started for this data directory (their command line names its ``service.lock``)
whose pid no server of the hub has in its state, for longer than ``grace``
seconds (a session starting has no state yet), are stopped like the spawner stops
a session (SIGTERM to the supervisor's process group, SIGKILL after a while); the
hub cleans their homes when it sees the servers again, or their next start does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from traitlets import Float
from traitlets.config import LoggingConfigurable

from .hubclient import HubAPIError, HubClient

SUPERVISOR = b"binderbox.runtime.supervise"


def supervisors_of(data_dir: Path) -> set[int]:
    """Pids of running supervisors whose service lock is ``data_dir``'s."""
    lock = os.fsencode(data_dir / "service.lock")
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if SUPERVISOR in argv and lock in argv:
            found.add(int(entry.name))
    return found


def tracked_pids(users: list[dict[str, Any]]) -> set[int]:
    """The supervisor pids the hub's servers know (their spawner state)."""
    pids = set()
    for user in users:
        for server in (user.get("servers") or {}).values():
            pid = (server.get("state") or {}).get("pid")
            if isinstance(pid, int):
                pids.add(pid)
    return pids


class UntrackedSessions(LoggingConfigurable):
    """Stops sessions the hub lost.  See the module docstring."""

    interval = Float(60.0, help="Seconds between two looks for sessions the hub lost.").tag(
        config=True
    )
    grace = Float(
        300.0,
        help="Seconds a supervisor may run unknown to the hub (a starting session has no "
        "state yet) before it is stopped as lost.",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._first_seen: dict[int, float] = {}

    async def run(self, hub: HubClient, data_dir: Path) -> None:
        """Forever: every ``interval`` seconds, :meth:`check`."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check(hub, data_dir)
            except HubAPIError as err:  # the hub is away: nothing is known to be lost
                self.log.debug("looking for lost sessions: %s", err)

    async def check(self, hub: HubClient, data_dir: Path) -> list[int]:
        """Stop the supervisors unknown to the hub for ``grace`` seconds; their pids."""
        running = await asyncio.to_thread(supervisors_of, data_dir)
        known = tracked_pids(await hub.active_users())
        now = time.monotonic()
        self._first_seen = {
            pid: self._first_seen.get(pid, now) for pid in running if pid not in known
        }
        lost = [pid for pid, seen in self._first_seen.items() if now - seen >= self.grace]
        for pid in lost:
            self.log.warning("stopping session supervisor %d: the hub has no record of it", pid)
            await _stop_group(pid)
            self._first_seen.pop(pid, None)
        return lost


async def _stop_group(pid: int, grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        for _ in range(int(grace / 0.1)):
            if not Path(f"/proc/{pid}").exists():
                return
            await asyncio.sleep(0.1)
