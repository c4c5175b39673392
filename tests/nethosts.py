"""Real test hosts on non-public addresses, in network namespaces the test makes.

:func:`namespace_host` creates a network namespace joined to this machine by a veth
pair (host side ``<net>.1``, test host ``<net>.2`` in a /30), starts a real HTTP
server inside it (Python's ``http.server`` serving a folder), and removes all of
it afterwards.  The host can reach the test host (so a test shows it is up); code
that must not reach private addresses (a session, a build, a dataset fetch) is
pointed at it to show that it cannot.

The caller names a range, e.g. ``10.254.0.0/16`` (private) or ``169.254.77.0/24``
(link-local, the metadata address's range: tests never send to 169.254.169.254
itself); the first /30 of it that no interface or route of this machine uses is
taken, under a lock, so parallel runs and namespaces a killed run left behind do
not collide with it.  Names carry the pid.  Needs root (``ip netns``); tests skip
with a reason otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

import pytest

_counter = itertools.count()
#: the test host's server: ``python -m http.server`` without the reverse DNS lookup of
#: its own address (``HTTPServer.server_bind`` calls ``getfqdn``), which waits for a
#: resolver the namespace cannot reach (seconds: longer than the wait for the server)
_SERVER = """\
import functools, http.server, socketserver, sys
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])
Server((sys.argv[1], int(sys.argv[2])), handler).serve_forever()
"""


@dataclass(frozen=True)
class NamespaceHost:
    """A running test host: ``address:port`` serves ``root`` over HTTP."""

    __test__ = False  # not a test class

    namespace: str
    address: str
    gateway: str
    port: int
    root: Path

    @property
    def url(self) -> str:
        """``http://<address>:<port>/``."""
        return f"http://{self.address}:{self.port}/"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def can_make_hosts() -> bool:
    """Whether this process may create network namespaces (root with iproute2)."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _wait_listening(namespace: str, address: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    """Until the server accepts connections (at most 600 tries, about 30 s)."""
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"the test host's server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the test host {address}:{port} in {namespace} did not answer")


def _ip_json(kind: str) -> bytes:
    run = subprocess.run(["ip", "-j", "-4", kind], check=True, capture_output=True, timeout=10)
    return run.stdout


def _networks_in_use() -> list[IPv4Network]:
    """Every IPv4 network this machine has an address or a route in."""
    used: list[IPv4Network] = []
    for link in json.loads(_ip_json("addr")):
        for info in link.get("addr_info", []):
            used.append(IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False))
    for route in json.loads(_ip_json("route")):
        if route.get("dst", "default") != "default":
            used.append(IPv4Network(route["dst"], strict=False))
    return used


def _free_net(within: str) -> IPv4Network:
    """The first /30 of ``within`` that overlaps nothing of this machine's."""
    used = _networks_in_use()
    for net in IPv4Network(within).subnets(new_prefix=30):
        if not any(net.overlaps(other) for other in used):
            return net
    raise RuntimeError(f"no free /30 left in {within} for a test host")


@contextlib.contextmanager
def _choosing() -> Iterator[None]:
    """Held while a /30 is chosen and taken (parallel runs would pick the same)."""
    with Path("/run/binderbox-test-hosts.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def namespace_host(within: str, root: Path, port: int = 8080) -> Iterator[NamespaceHost]:
    """A test host in a free /30 of ``within`` serving ``root`` on ``port``; see the
    module docstring.  ``within`` is a range such as ``"10.254.0.0/16"``."""
    if not can_make_hosts():
        pytest.skip("test hosts need root and iproute2 (network namespaces)")
    tag = f"{os.getpid() % 100000}{next(_counter)}"
    namespace, outside = f"bbxt{tag}", f"bbxt{tag}h"
    _ip("netns", "add", namespace)
    proc: subprocess.Popen[bytes] | None = None
    try:
        _ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        with _choosing():
            net = _free_net(within)
            gateway, address = str(net.network_address + 1), str(net.network_address + 2)
            _ip("addr", "add", f"{gateway}/30", "dev", outside)
        _ip("link", "set", outside, "up")
        _ip("-n", namespace, "addr", "add", f"{address}/30", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", namespace, "route", "add", "default", "via", gateway)
        server = [sys.executable, "-c", _SERVER, address, str(port), str(root)]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *server],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_listening(namespace, address, port, proc)
        yield NamespaceHost(namespace, address, gateway, port, root)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", outside)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", namespace)
