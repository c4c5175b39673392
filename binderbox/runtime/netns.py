"""A network namespace of its own for one sandbox: made by its supervisor, gone with it.

The supervisor (:mod:`binderbox.runtime.supervise`, root, single-threaded) calls
:func:`enter` before it starts bubblewrap:

1. it moves itself into a new network namespace (``unshare(CLONE_NEWNET)``),
   with IPv6 off there (no link-local address to reach the host with);
2. from the host's namespace (through a descriptor kept from before, with
   ``nsenter``) one ``ip -batch`` makes a veth pair whose sandbox end lands in
   the new namespace as ``eth0`` and whose host end joins the binderbox bridge
   as an *isolated* port (sandboxes cannot reach each other even at layer 2);
3. inside, ``eth0`` gets the leased address, a default route via the bridge's
   address, and ``lo`` comes up.

Everything the supervisor starts afterwards inherits that namespace.  The
namespace has no owner but its processes: when the sandbox and the supervisor
end, the kernel destroys it and the veth pair with it, so nothing is left to
clean up.  The rules that decide where the sandbox may connect are the host's
nftables table (:mod:`binderbox.runtime.network`), not anything inside the
namespace: processes in it have no capabilities over it.

Standard library only: this runs in every supervisor.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000


class NetSetupError(RuntimeError):
    """The sandbox's network could not be made (the ``ip`` tool's words)."""


@dataclass(frozen=True)
class SandboxNet:
    """Where one sandbox sits on the bridge: its address, the gateway, the ports' names."""

    address: str
    prefix: int
    gateway: str
    bridge: str

    @property
    def veth(self) -> str:
        """The host end's name: ``bbx`` + the address in hex (unique while leased)."""
        return "bbx" + "".join(f"{int(part):02x}" for part in self.address.split("."))

    def to_arg(self) -> str:
        """The supervisor's ``--net`` value."""
        return f"{self.address}/{self.prefix},{self.gateway},{self.bridge}"

    @classmethod
    def parse(cls, text: str) -> SandboxNet:
        """Read a ``--net`` value back."""
        try:
            cidr, gateway, bridge = text.split(",")
            address, prefix = cidr.split("/")
            return cls(address, int(prefix), gateway, bridge)
        except ValueError:
            raise SystemExit(f"supervise: bad --net {text!r}") from None


def _unshare_net() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NetSetupError(f"unshare(CLONE_NEWNET) failed: {os.strerror(errno)}")


def _run(argv: list[str], script: str) -> None:
    result = subprocess.run(
        argv, input=script, capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise NetSetupError(f"{' '.join(argv[:3])}: {result.stderr.strip()}")


def enter(net: SandboxNet) -> None:
    """Move this process into a new network namespace wired to ``net`` (see above)."""
    host = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _unshare_net()
        for name in ("all", "default"):
            Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").write_text("1")
        pid = os.getpid()
        outside = (
            f"link add {net.veth} type veth peer name eth0 netns {pid}\n"
            f"link set {net.veth} master {net.bridge}\n"
            f"link set dev {net.veth} type bridge_slave isolated on\n"
            f"link set {net.veth} up\n"
        )
        _run(["nsenter", f"--net=/proc/{pid}/fd/{host}", "ip", "-batch", "-"], outside)
        inside = (
            f"addr add {net.address}/{net.prefix} dev eth0\n"
            "link set eth0 up\n"
            "link set lo up\n"
            f"route add default via {net.gateway} dev eth0\n"
        )
        _run(["ip", "-batch", "-"], inside)
    finally:
        os.close(host)
