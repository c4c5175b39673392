"""The detached parent of one session's bubblewrap process.

Usage: ``python -m binderbox.runtime.supervise [--cgroup DIR]... -- bwrap ...``

Why it exists: bubblewrap's ``--die-with-parent`` kills the sandbox when
its parent dies.  If the hub were that parent, restarting the hub would kill
every session.  The spawner starts this small program in a new session
(``setsid``); it joins the session's cgroups (so the limits cover everything
it starts), runs the command as its only child, forwards SIGTERM/SIGINT/
SIGHUP to it and exits with its exit status.  ``--die-with-parent`` then
refers to this supervisor, and stopping a session means signalling the
supervisor's process group.

Descriptors the spawner passes (``pass_fds``: shared ``flock`` use-locks on
the session's environment and datasets) stay open here for the supervisor's
whole life and are not inherited by the command (``close_fds``): the locks
end when the session ends, whatever ends it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from .limits import join


def parse(argv: list[str]) -> tuple[list[Path], list[str]]:
    """Split ``[--cgroup DIR]... -- command...`` into (cgroup dirs, command)."""
    if "--" not in argv:
        raise SystemExit("usage: supervise [--cgroup DIR]... -- command...")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    cgroups: list[Path] = []
    while options:
        flag, value, *options = options
        if flag != "--cgroup":
            raise SystemExit(f"supervise: unknown option {flag}")
        cgroups.append(Path(value))
    if not command:
        raise SystemExit("supervise: no command")
    return cgroups, command


def main(argv: list[str] | None = None) -> int:
    """Run the command under supervision; return its exit status."""
    cgroups, command = parse(sys.argv[1:] if argv is None else argv)
    join(cgroups, os.getpid())
    child = subprocess.Popen(command)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    status = child.wait()
    return status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main())
