"""The parent of one sandbox: its limits, its network, its host uid, its watchdogs.

Usage::

    python -m binderbox.runtime.supervise [options] -- bwrap --args FD

Sessions (the spawner) and build steps and dataset code sources
(:class:`~binderbox.runtime.host.SandboxHost`) start their sandbox through this
small program.  In order, it

1. moves into a network namespace of its own wired to the sandbox bridge
   (``--net ADDRESS/PREFIX,GATEWAY,BRIDGE``; :mod:`binderbox.runtime.netns`);
2. starts the command, which before it runs joins the sandbox's cgroups
   (``--cgroup DIR``, repeatable), so memory, CPU and pids limits cover
   everything started below, and becomes the unprivileged host uid ``--uid``
   (with the same gid, no supplementary groups) -- bubblewrap then maps it to
   uid 1000 inside; descriptors named by ``--pass-fd`` (bubblewrap's ``--args``
   file: secrets never sit on a command line) are inherited, no other;
3. forwards SIGTERM/SIGINT/SIGHUP to it, and exits with its status once nothing
   is left in the sandbox's cgroups (what is still there then is killed).

The supervisor itself stays outside the cgroups: a sandbox at its pids or
memory limit cannot starve its watchdogs (the size checks start ``du``).

Why a separate parent: bubblewrap's ``--die-with-parent`` kills the sandbox
when its parent dies.  If the hub were that parent, restarting the hub would
kill every session.  The spawner starts this supervisor in a new session
(``setsid``); stopping a session means signalling its process group.
Descriptors the caller passes (``pass_fds``: use-locks of the environment and
datasets, the leases of the uid and the address) stay open here for the
supervisor's whole life and are not inherited by the command: they end when
the sandbox ends, whatever ends it.

Watchdogs, while the command runs:

``--die-with-parent``
    (build steps) the step ends when the service that started it ends.
``--output-limit BYTES``
    (sessions) the sandbox writes into a pipe, and only so many bytes of it reach
    this supervisor's own output (the session's log); the sandbox never holds the
    log file itself, so it can neither fill the disk with it nor rewrite it.
``--reap-orphans``
    (build steps) a process whose parent died inside the sandbox is re-parented
    to the sandbox's init; such leftovers (a ``setup.py`` that started a
    background child holding uv's output pipe) are killed, so no child can hold
    a build open.
``--service-lock PATH --orphan-timeout SECONDS``
    (sessions) ``binderbox serve`` holds ``PATH`` locked while it runs; when
    nobody has held it for ``SECONDS``, the service is gone and the session is
    stopped: no session outlives its service unbounded.
``--tree PATH=BYTES`` (repeatable), ``--tree-interval SECONDS``
    (a session's home; a build's environment, home copy and private cache) each
    tree must stay under its limit; it is measured as
    :mod:`binderbox.runtime.treewatch` says (a cheap look at the free space five
    times a second, a walk when that could mean the tree is over, and every
    ``--tree-interval`` seconds).  A tree over its limit stops the sandbox (the
    files stay for the caller: the spawner removes the home, the builder fails
    the build and the store deletes what it wrote).
``--file-size-limit BYTES``
    no file the sandbox writes may grow past ``BYTES`` (``RLIMIT_FSIZE``, set for
    the command and inherited by all it starts: enforced by the kernel).

Standard library only (and small binderbox modules that are): one of these runs
for every session and every build step.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ..util.procs import children, start_ticks
from .leases import lock_held
from .limits import join
from .netns import NetSetupError, SandboxNet, enter
from .treewatch import CHECK_INTERVAL, TreeWatch, WatchedTree

#: seconds between two looks for orphans in a build sandbox
REAP_INTERVAL = 0.5
#: seconds between two looks at the service lock
SERVICE_INTERVAL = 5.0
#: seconds a stopped command has between SIGTERM and SIGKILL
GRACE = 5.0
#: exit status when a watchdog stopped the command
STOPPED_BY_WATCHDOG = 75
PR_SET_PDEATHSIG = 1


def parse(argv: list[str]) -> argparse.Namespace:
    """Read the options (``--`` then the command)."""
    parser = argparse.ArgumentParser(prog="supervise", add_help=False)
    parser.add_argument("--cgroup", action="append", default=[], type=Path)
    parser.add_argument("--uid", type=int)
    parser.add_argument("--net", type=SandboxNet.parse)
    parser.add_argument("--pass-fd", action="append", default=[], type=int)
    parser.add_argument("--reap-orphans", action="store_true")
    parser.add_argument("--die-with-parent", action="store_true")
    parser.add_argument("--output-limit", type=int, default=0)
    parser.add_argument("--service-lock", type=Path)
    parser.add_argument("--orphan-timeout", type=float, default=0.0)
    parser.add_argument("--tree", action="append", default=[], type=WatchedTree.parse)
    parser.add_argument("--tree-interval", type=float, default=15.0)
    parser.add_argument("--file-size-limit", type=int, default=0)
    if "--" not in argv:
        raise SystemExit("usage: supervise [options] -- command...")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    args.command = argv[split + 1 :]
    if not args.command:
        raise SystemExit("supervise: no command")
    return args


def _say(message: str) -> None:
    print(f"[binderbox supervisor] {message}", file=sys.stderr, flush=True)


def start(args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """Steps 1-2 of the module docstring."""
    if args.die_with_parent:
        _die_with_parent()
    if args.net is not None:
        enter(args.net)
    groups, limit = list(args.cgroup), int(args.file_size_limit)
    uid = None if args.uid is None else int(args.uid)

    def enter_limits() -> None:  # in the child, before exec: everything below inherits it
        join(groups, os.getpid())  # while still root: the groups are root's
        if limit > 0:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    piped = subprocess.PIPE if args.output_limit > 0 else None
    child = subprocess.Popen(
        args.command,
        pass_fds=tuple(args.pass_fd),
        preexec_fn=enter_limits,
        stdout=piped,
        stderr=subprocess.STDOUT if piped else None,
    )
    if child.stdout is not None:  # started after the fork: preexec_fn ran single-threaded
        copier = threading.Thread(target=_copy_output, args=(child.stdout, args.output_limit))
        copier.daemon = True
        copier.start()
    return child


def _copy_output(source: IO[bytes], limit: int) -> None:
    """The sandbox's output into this supervisor's (the session's log), up to ``limit``
    bytes; the rest is read and dropped, so the sandbox never blocks on a full pipe."""
    written = 0
    while chunk := os.read(source.fileno(), 1 << 16):
        if written < limit:
            os.write(1, chunk[: limit - written])
            written += len(chunk)
            if written >= limit:
                _say(f"the sandbox's output passed {limit} bytes: the rest is not kept")


class Watchdogs:
    """The checks of the module docstring, each due at its own interval."""

    def __init__(self, args: argparse.Namespace, child: subprocess.Popen[bytes]) -> None:
        self.args, self.child = args, child
        self.checks: list[tuple[float, Callable[[], str]]] = []
        if args.reap_orphans:
            self.checks.append((REAP_INTERVAL, self.reap))
        if args.service_lock is not None and args.orphan_timeout > 0:
            self.checks.append((SERVICE_INTERVAL, self.service_gone))
        self.trees = TreeWatch(args.tree, args.tree_interval)
        if args.tree:
            self.checks.append((CHECK_INTERVAL, self.trees.check))
        self.due = [time.monotonic() + interval for interval, _ in self.checks]
        self.gone_since: float | None = None

    def next_wait(self) -> float | None:
        """Seconds until the next check (None: no checks)."""
        return max(0.0, min(self.due) - time.monotonic()) if self.due else None

    def run_due(self) -> str:
        """Run the checks that are due; a reason to stop the command, or ''."""
        now = time.monotonic()
        for i, (interval, check) in enumerate(self.checks):
            if now >= self.due[i]:
                self.due[i] = now + interval
                reason = check()
                if reason:
                    return reason
        return ""

    def reap(self) -> str:
        init = children(self.child.pid)
        for pid in init:
            kids = sorted(children(pid), key=lambda kid: start_ticks(kid) or 0)
            for orphan in kids[1:]:  # the first is the command; the rest were re-parented
                with contextlib.suppress(ProcessLookupError):
                    os.kill(orphan, signal.SIGKILL)
                _say(f"stopped process {orphan}: it was left running by a finished one")
        return ""

    def service_gone(self) -> str:
        if lock_held(self.args.service_lock):
            self.gone_since = None
            return ""
        now = time.monotonic()
        self.gone_since = self.gone_since or now
        if now - self.gone_since >= self.args.orphan_timeout:
            return f"the service has been gone for {self.args.orphan_timeout:g} s"
        return ""


def _die_with_parent() -> None:
    """SIGKILL this supervisor (and so its sandbox) when its parent dies."""
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request
        os._exit(1)


def _stop(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.terminate()
    try:
        child.wait(GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            child.kill()


def supervise(args: argparse.Namespace) -> int:
    """Run the command to its end; its exit status (see the module docstring)."""
    try:
        child = start(args)
    except (NetSetupError, OSError, subprocess.SubprocessError) as err:
        _say(f"the sandbox could not be started: {err}")
        return 1

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        return _watch(args, child)
    finally:
        _drain(args.cgroup)


def _watch(args: argparse.Namespace, child: subprocess.Popen[bytes]) -> int:
    """Wait for the command, running the watchdogs; its exit status."""
    dogs = Watchdogs(args, child)
    while True:
        try:
            status = child.wait(dogs.next_wait())
            return status if status >= 0 else 128 - status
        except subprocess.TimeoutExpired:
            reason = dogs.run_due()
        if reason:
            _say(f"stopping the sandbox: {reason}")
            _stop(child)
            child.wait()
            return STOPPED_BY_WATCHDOG


def _drain(groups: list[Path]) -> None:
    """Once the command ended: kill what is left in the sandbox's cgroups (a namespace's
    processes still dying) and wait, bounded, until they are empty -- whoever removes
    them after this supervisor exits then can."""
    deadline = time.monotonic() + GRACE
    while groups and time.monotonic() < deadline:
        left: set[int] = set()
        for group in groups:
            with contextlib.suppress(OSError, ValueError):
                left.update(int(pid) for pid in (group / "cgroup.procs").read_text().split())
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    """The program's entry point."""
    return supervise(parse(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
