"""Starting the children of ``binderbox serve`` again when they exit.

:class:`ChildWatcher` is what :meth:`ManagedHub.watch
<binderbox.hub.process.ManagedHub.watch>` runs: every ``interval`` seconds it
looks at the proxy, the hub and the idle culler, in that order, and starts
again the ones that exited (a crash, an OOM kill), the way an operator would
by hand.  The order matters: the hub needs the proxy to add its routes, and
the culler is only a client of the hub (it is restarted once the hub
answers).

* The proxy starts again on the same ports with the same token.  It starts
  with an empty routing table, so binderbox adds its own route (``/`` -> the
  web app) and asks the hub to add the rest (``POST /hub/api/proxy``, the
  hub's route check) instead of waiting for the hub's periodic check
  (``JupyterHub.last_activity_interval``, 300 s by default).  Sessions are
  separate processes: their routes come back and they answer again.
* The hub starts again with the same config and database.  Sessions run
  under their own supervisors and the spawner's state is the supervisor's
  pid and start time (:mod:`binderbox.sessions.spawners.local`), so the new hub
  finds them running and re-adds their routes.
* Backoff: a child may be restarted ``max_restarts`` times within
  ``restart_window`` seconds; the restarts after the first in a window wait
  ``restart_delay`` seconds, doubling each time.  One more exit in the window
  and the watcher gives up on that child: it logs one plain error and
  :meth:`ChildWatcher.given_up` keeps the reason (the child stays down, so
  ``/health`` keeps answering 503) until binderbox itself is restarted.

Every restart is logged at warning level with the child's exit status.
"""

from __future__ import annotations

import asyncio
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from traitlets import Float, Int
from traitlets.config import LoggingConfigurable

from ..errors import BinderboxError

#: the children in the order they are checked and started again
ORDER = ("proxy", "hub", "culler")
#: how each child is named in the log
LABELS = {"proxy": "proxy", "hub": "hub", "culler": "idle culler"}
#: the longest wait before a restart, however often a child exited
MAX_DELAY = 60.0


def describe_exit(status: int) -> str:
    """``status 1`` or ``signal 9 (SIGKILL)`` for an asyncio return code."""
    if status >= 0:
        return f"status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        return f"signal {-status}"
    return f"signal {-status} ({name})"


@dataclass
class Restarts:
    """The restart history of one child."""

    #: loop times of the restarts within the window
    times: deque[float] = field(default_factory=deque)
    #: why the watcher stopped starting it again ('' while it still does)
    gave_up: str = ""

    def recent(self, now: float, window: float) -> int:
        """How many restarts happened in the last ``window`` seconds."""
        while self.times and now - self.times[0] > window:
            self.times.popleft()
        return len(self.times)


class ChildWatcher(LoggingConfigurable):
    """Restarts the proxy, the hub and the culler.  See the module docstring."""

    max_restarts = Int(
        5,
        help="How many times a child (proxy, hub, idle culler) is started again "
        "within restart_window seconds before the watcher gives up on it "
        "(0 = never start a child again).",
    ).tag(config=True)
    restart_window = Float(
        600.0, help="The window, in seconds, in which max_restarts counts restarts."
    ).tag(config=True)
    restart_delay = Float(
        1.0,
        help="Seconds to wait before the second restart of a child within the window; "
        "doubled for each further one (at most 60 s).  The first restart is immediate.",
    ).tag(config=True)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.restarts = {name: Restarts() for name in ORDER}

    def given_up(self) -> dict[str, str]:
        """The children the watcher no longer starts again, with the reason."""
        return {name: state.gave_up for name, state in self.restarts.items() if state.gave_up}

    async def check(
        self,
        exited: Mapping[str, int | None],
        start: Callable[[str], Awaitable[None]],
    ) -> None:
        """One round: start again each child of ``exited`` (name -> exit status,
        None while it runs, in :data:`ORDER`) with ``start(name)``."""
        for name in ORDER:
            status = exited.get(name)
            if status is not None:
                await self._restart(name, status, start)

    async def _restart(
        self, name: str, status: int, start: Callable[[str], Awaitable[None]]
    ) -> None:
        state = self.restarts[name]
        if state.gave_up:
            return
        label = LABELS[name]
        now = asyncio.get_running_loop().time()
        recent = state.recent(now, self.restart_window)
        if recent >= self.max_restarts:
            state.gave_up = self._give_up_reason(label, status, recent)
            self.log.error("%s", state.gave_up)
            return
        delay = min(self.restart_delay * 2 ** (recent - 1), MAX_DELAY) if recent else 0.0
        self.log.warning(
            "the %s exited with %s; starting it again%s (restart %d of %d in %g s)",
            label,
            describe_exit(status),
            f" in {delay:g} s" if delay else "",
            recent + 1,
            self.max_restarts,
            self.restart_window,
        )
        state.times.append(now)
        await asyncio.sleep(delay)
        try:
            await start(name)
        except BinderboxError as err:
            self.log.error("starting the %s again failed: %s", label, err.log_message)
            return
        self.log.info("the %s is running again", label)

    def _give_up_reason(self, label: str, status: int, recent: int) -> str:
        exit_text = describe_exit(status)
        if not self.max_restarts:
            return (
                f"The {label} exited with {exit_text}; it is not started again "
                "(ChildWatcher.max_restarts = 0).  Restart binderbox."
            )
        return (
            f"The {label} exited with {exit_text} after {recent} restarts in "
            f"{self.restart_window:g} s; it is not started again.  Restart binderbox."
        )
