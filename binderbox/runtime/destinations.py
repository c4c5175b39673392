"""Which network destinations visitors' code and visitors' URLs may reach: one list.

Two enforcers read it:

* the sandbox network (:mod:`binderbox.runtime.network`): nftables rules for
  every session, build and dataset code source;
* the service's own fetches for a visitor (repositories, submodules, dataset
  sources, every redirect hop), which check the address they connect to.

A destination is **blocked** when it is in :data:`SPECIAL_NETWORKS` (private
ranges, shared address space, loopback, link-local with the cloud metadata
address 169.254.169.254, multicast, reserved and unspecified addresses, and
their IPv6 counterparts; modelled on zero-to-jupyterhub's
``singleuser.networkPolicy`` defaults) or in one of this machine's own
networks (:func:`host_networks`: the subnets of its interfaces, so the
machine's LAN is not one hop away), unless an operator listed it in
:attr:`Destinations.allowed` (an internal package mirror, a campus network).
IPv6 addresses that carry an IPv4 address (mapped, 6to4, Teredo, NAT64) are
judged by that IPv4 address.

The documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) and
the benchmarking range (198.18.0.0/15) are not in the list: they are not
private networks, and some sites (this project's CI among them) route real
services there.  A machine whose own network is one of them still blocks it,
as one of its :func:`host_networks`.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import subprocess
from collections.abc import Iterable

from traitlets import List, Unicode, validate
from traitlets.config import Configurable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: never reachable unless an operator allows it (see the module docstring)
SPECIAL_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared address space (carrier NAT)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local: the cloud metadata address 169.254.169.254
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.168.0.0/16",  # private
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
        "::/128",  # unspecified
        "::1/128",  # loopback
        "fc00::/7",  # unique local (private)
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
    )
)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's (obfuscated-back) address
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@functools.cache
def host_networks() -> tuple[IPNetwork, ...]:
    """The networks of this machine's interfaces (``ip -j addr``), loopback included.

    Interfaces binderbox made itself (``bbx*``) are left out: their network is in
    :data:`SPECIAL_NETWORKS` already, or an operator's choice.  Read once per process.
    """
    try:
        out = subprocess.run(
            ["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
        interfaces = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return ()
    found: list[IPNetwork] = []
    for interface in interfaces:
        if str(interface.get("ifname", "")).startswith("bbx"):
            continue
        for info in interface.get("addr_info", []):
            try:
                net = ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False)
            except (KeyError, ValueError):
                continue
            if not net.is_link_local:  # fe80::/64 on every interface: in the list already
                found.append(net)
    return tuple(dict.fromkeys(found))


def _normalised(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        return embedded_ipv4(address) or address
    return address


class Destinations(Configurable):
    """The operator's part of the destination policy (``c.Destinations``)."""

    allowed = List(
        Unicode(),
        help="""Networks (CIDR, e.g. '10.20.0.0/16' or '10.20.0.5/32') that sessions,
        builds and the service's fetches for visitors may reach although they are private
        or this machine's own: an internal package mirror, a campus network.  The hub API
        port is allowed to sessions without being listed here.""",
    ).tag(config=True)

    @validate("allowed")
    def _valid_allowed(self, proposal: dict[str, list[str]]) -> list[str]:
        for text in proposal["value"]:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError as err:
                raise ValueError(f"Destinations.allowed: {text!r} is not a network") from err
        return list(proposal["value"])

    @property
    def allowed_networks(self) -> tuple[IPNetwork, ...]:
        """:attr:`allowed` parsed."""
        return tuple(ipaddress.ip_network(text, strict=False) for text in self.allowed)

    def blocked_networks(self) -> tuple[IPNetwork, ...]:
        """What is blocked unless allowed: the special networks and the host's own."""
        return tuple(dict.fromkeys((*SPECIAL_NETWORKS, *host_networks())))

    def is_blocked(self, address: IPAddress | str) -> bool:
        """Whether ``address`` may not be reached (see the module docstring)."""
        ip = _normalised(ipaddress.ip_address(address) if isinstance(address, str) else address)
        if _within(ip, self.allowed_networks):
            return False
        return _within(ip, self.blocked_networks())


def _within(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in networks)
