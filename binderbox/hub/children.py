"""The children a managed hub runs (proxy, hub, culler) and the port checks it makes
before it starts them."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import socket
from dataclasses import dataclass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(ip: str, port: int) -> bool:
    """True when a listening socket holds ``ip:port`` ('' = every address)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError:
            return True
    return False


def die_with_parent() -> None:
    """preexec: SIGTERM this child when binderbox dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """One managed child: its name (``proxy``, ``hub`` or ``culler``; its log is
    ``<data>/logs/<name>.log``) and its latest process (None: not started, or
    stopped)."""

    name: str
    proc: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self.proc is not None and self.proc.returncode is None

    @property
    def exit_status(self) -> int | None:
        """The exit status once it exited (None: running, or not started)."""
        return None if self.proc is None else self.proc.returncode
