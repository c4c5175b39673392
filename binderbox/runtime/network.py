"""The sandboxes' network: a bridge of their own and one nftables table, on the host.

Every session, build step and dataset code source runs in a network namespace
of its own (:mod:`binderbox.runtime.netns`), joined by a veth pair to the bridge
``bbx0`` (an isolated port: sandboxes never see each other).  The bridge holds
the gateway address (the first of :attr:`SandboxNetwork.subnet`); sessions get
addresses from the first half of the subnet, builds from the second.  What they
may reach is decided by one nftables table, ``inet binderbox``
(:func:`render_ruleset`), modelled on zero-to-jupyterhub's
``singleuser.networkPolicy`` defaults:

* allowed: DNS to the resolvers the host uses (even on private addresses), and
  the public internet (package indexes, ``pip install`` in a notebook), through
  the host's address (masquerade);
* denied: the host itself (every address it has, every port), other sandboxes,
  and every destination :mod:`binderbox.runtime.destinations` blocks (private
  ranges, link-local with the metadata address, loopback, multicast, reserved,
  the host's own networks) unless ``c.Destinations.allowed`` lists it; outbound
  SMTP ports (:attr:`SandboxNetwork.blocked_ports`); IPv6 (sandboxes have none);
* the one exception: a session reaches its own hub's API port on the gateway
  (an element ``<session address> . <port>`` of the set ``session_hub``, added
  by the spawner while the session runs); builds reach nothing on the host;
* ingress: only processes of the service's own uid on the host may open
  connections to a session (the hub and the proxy); nothing may open one to a
  build; nothing from outside.
* :attr:`SandboxNetwork.egress` ``none`` keeps DNS and the hub but nothing else.

Why this mechanism: network namespaces, veth pairs, bridges and nftables are in
every Debian kernel and need no daemon; a namespace created by a root process
is not administrable from the unprivileged user namespace inside the sandbox;
and the rules look at the address actually connected to, so no name can be
made to point somewhere else after a check (no DNS rebinding).

Routing needs IPv4 forwarding.  When it was off, :meth:`SandboxNetwork.ensure`
turns it on and the table drops every forwarded packet that does not come from
or go to the bridge, so the host forwards nothing else than before.

The bridge and the table are shared by every binderbox service on the machine
(tests run several); they stay when a service stops, like a container
runtime's bridge.  :meth:`SandboxNetwork.ensure` makes them, or changes them
when the settings differ, keeping the running sessions' hub elements.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets import Enum, Instance, Int, List, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from ..errors import BinderboxError
from .destinations import Destinations
from .leases import RUN_ROOT, Lease, claim
from .netns import SandboxNet

TABLE = "binderbox"
FORWARD_FLAG = RUN_ROOT / "forwarding-was-off"
REJECT = "reject with icmpx type admin-prohibited"
_ESTABLISHED = "ct state established,related accept"
_DNS = "ip daddr @dns4 meta l4proto { tcp, udp } th dport 53 accept"


class NetworkError(BinderboxError):
    """The sandbox network cannot be set up here."""

    reason = "network"


def _run(argv: list[str], script: str | None = None) -> str:
    try:
        result = subprocess.run(
            argv, input=script, capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as err:
        raise NetworkError(
            f"The sandbox network cannot be set up: {argv[0]} is missing.",
            hint="Run scripts/setup (it installs nftables and iproute2).",
            log_message=str(err),
        ) from err
    if result.returncode != 0:
        raise NetworkError(
            "The sandbox network cannot be set up.",
            log_message=f"{' '.join(argv)}: {result.stderr.strip()}",
        )
    return result.stdout


def host_resolvers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The IPv4 nameservers of a resolv.conf file."""
    found = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    if ipaddress.ip_address(parts[1]).version == 4:
                        found.append(parts[1])
    return found


@dataclass(frozen=True)
class NetState:
    """What :func:`render_ruleset` needs: the settings plus what the host has."""

    bridge: str
    subnet: ipaddress.IPv4Network
    gateway: str
    builds: ipaddress.IPv4Network
    resolvers: tuple[str, ...]
    blocked: tuple[str, ...]
    allowed: tuple[str, ...]
    blocked_ports: tuple[int, ...]
    egress: str
    service_uid: int
    drop_other_forwarding: bool
    max_connections: int = 512
    new_per_second: int = 100

    @property
    def digest(self) -> str:
        """Names the settings (kept in the table's comment)."""
        text = json.dumps([str(v) for v in self.__dict__.values()], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _set(name: str, kind: str, elements: list[str], interval: bool = False) -> str:
    flags = " flags interval; auto-merge;" if interval else ""
    body = f" elements = {{ {', '.join(elements)} }};" if elements else ""
    return f"  set {name} {{ type {kind};{flags}{body} }}\n"


def _chain(name: str, hook: str | None, rules: list[str]) -> str:
    """A chain: a base chain on ``hook`` (its policy accept), or a regular one (None)."""
    head = f"  chain {name} {{\n"
    if hook is not None:
        kind = "nat" if hook == "postrouting" else "filter"
        priority = "srcnat" if hook == "postrouting" else "filter - 10"
        head += f"    type {kind} hook {hook} priority {priority}; policy accept;\n"
    return head + "".join(f"    {rule}\n" for rule in rules) + "  }\n"


def _sets(state: NetState, hub_elements: list[str]) -> list[str]:
    return [
        _set("dns4", "ipv4_addr", list(state.resolvers)),
        _set("blocked4", "ipv4_addr", [n for n in state.blocked if ":" not in n], True),
        _set("allowed4", "ipv4_addr", [n for n in state.allowed if ":" not in n], True),
        _set("blocked_ports", "inet_service", [str(p) for p in state.blocked_ports]),
        _set("session_hub", "ipv4_addr . inet_service", hub_elements),
        "  set connections { type ipv4_addr; size 65535; flags dynamic; }\n",
        "  set new_rate { type ipv4_addr; size 65535; flags dynamic,timeout; timeout 60s; }\n",
    ]


def _limits(state: NetState) -> list[str]:
    """New connections of one sandbox: at most so many open, so many a second."""
    rate, burst = state.new_per_second, 2 * state.new_per_second
    return [
        f"add @connections {{ ip saddr ct count over {state.max_connections} }} {REJECT}",
        f"update @new_rate {{ ip saddr limit rate over {rate}/second burst {burst} packets }}"
        f" {REJECT}",
    ]


def _forward(state: NetState, inb: str, outb: str) -> list[str]:
    egress = "accept" if state.egress == "internet" else REJECT
    forward = [
        f"{inb} {_ESTABLISHED}",
        f"{outb} {_ESTABLISHED}",
        f"{inb} ct state new jump sandbox_limits",
        f"{inb} {_DNS}",
        f"{inb} meta nfproto ipv6 {REJECT}",
        f"{inb} tcp dport @blocked_ports {REJECT}",
        f"{inb} ip daddr @allowed4 accept",  # the operator's choice, whatever the egress
        f"{inb} ip daddr @blocked4 {REJECT}",
        f"{inb} {egress}",
        f"{outb} {REJECT}",
    ]
    if state.drop_other_forwarding:  # the host forwarded nothing before binderbox
        forward.append("meta nfproto ipv4 drop")
    return forward


def render_ruleset(state: NetState, hub_elements: list[str]) -> str:
    """The ``nft -f`` text that (re)creates the table (see the module docstring)."""
    inb, outb, gw = f'iifname "{state.bridge}"', f'oifname "{state.bridge}"', state.gateway
    incoming = [
        f"{inb} {_ESTABLISHED}",
        f"{inb} ct state new jump sandbox_limits",
        f"{inb} ip daddr {gw} ip saddr . tcp dport @session_hub accept",
        f"{inb} {_DNS}",
        f"{inb} {REJECT}",
    ]
    outgoing = [
        f"{outb} {_ESTABLISHED}",
        f"{outb} ip daddr {state.builds} {REJECT}",
        f"{outb} meta skuid != {state.service_uid} {REJECT}",
    ]
    masquerade = [f"ip saddr {state.subnet} {outb.replace('oifname', 'oifname !=')} masquerade"]
    chains = [
        _chain("sandbox_limits", None, _limits(state)),
        _chain("input", "input", incoming),
        _chain("forward", "forward", _forward(state, inb, outb)),
        _chain("output", "output", outgoing),
        _chain("postrouting", "postrouting", masquerade),
    ]
    return (
        f"table inet {TABLE}\ndelete table inet {TABLE}\n"
        f'table inet {TABLE} {{\n  comment "binderbox sandboxes {state.digest}"\n'
        + "".join(_sets(state, hub_elements))
        + "".join(chains)
        + "}\n"
    )


class SandboxNetwork(LoggingConfigurable):
    """The sandboxes' bridge and firewall.  See the module docstring."""

    isolation = Enum(
        ["auto", "required", "off"],
        "auto",
        help="""'auto': every sandbox gets its own network where this host allows it (root,
        iproute2 and nftables), else sandboxes share the host's network and /health says so;
        'required': refuse to start without it; 'off': share the host's network.""",
    ).tag(config=True)
    subnet = Unicode(
        "172.30.0.0/16",
        help="""IPv4 subnet of the sandboxes' bridge: the first address is the gateway (where
        sessions reach the hub), the first half goes to sessions, the second to builds.  It
        must not overlap a network of this host.""",
    ).tag(config=True)
    bridge = Unicode("bbx0", help="Name of the sandboxes' bridge.").tag(config=True)
    egress = Enum(
        ["internet", "none"],
        "internet",
        help="""What sandboxes may reach besides DNS and their hub: 'internet' (public
        addresses; builds download packages, users pip install) or 'none'.""",
    ).tag(config=True)
    blocked_ports = List(
        Int(), [25, 465, 587], help="TCP ports sandboxes may not connect to anywhere (SMTP)."
    ).tag(config=True)
    max_connections = Int(
        512,
        help="""Connections one sandbox may have open at once (tracked by the kernel);
        past it new ones are refused: a port scan or a flood cannot fill the host's
        connection table.""",
    ).tag(config=True)
    new_connections_per_second = Int(
        100, help="New connections one sandbox may open per second (bursts of twice that)."
    ).tag(config=True)
    destinations = Instance(
        Destinations, help="The operator's allowed destinations (c.Destinations.allowed)."
    )

    @default("destinations")
    def _default_destinations(self) -> Destinations:
        return Destinations(parent=self)

    @validate("subnet")
    def _valid_subnet(self, proposal: dict[str, str]) -> str:
        net = ipaddress.ip_network(proposal["value"])
        if net.version != 4 or net.prefixlen > 24:
            raise ValueError("SandboxNetwork.subnet must be an IPv4 network of /24 or larger")
        return str(net)

    # -- what this host allows ---------------------------------------------------

    def unavailable(self) -> str:
        """Why sandboxes cannot get networks of their own here ('' when they can)."""
        if self.isolation == "off":
            return "turned off (SandboxNetwork.isolation = 'off')"
        if os.geteuid() != 0:
            return "binderbox is not running as root"
        missing = [t for t in ("ip", "nft", "nsenter") if not _which(t)]
        if missing:
            return f"{', '.join(missing)} not installed (scripts/setup installs them)"
        return ""

    @property
    def enabled(self) -> bool:
        """Whether sandboxes get networks of their own."""
        return not self.unavailable()

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        """The bridge's address: where sessions reach the hub."""
        return str(self.network.network_address + 1)

    def ranges(self) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Network]:
        """(sessions, builds): the two halves of the subnet."""
        first, second = self.network.subnets(prefixlen_diff=1)
        return first, second

    def status(self) -> dict[str, Any]:
        """For /health: isolated or shared, and why."""
        why = self.unavailable()
        result: dict[str, Any] = {
            "service": "Sandbox network",
            "ok": not why or self.isolation != "required",
        }
        if why:
            result.update(mode="shared", reason=f"sandboxes share the host's network: {why}")
            return result
        result.update(
            mode="isolated",
            bridge=self.bridge,
            subnet=self.subnet,
            egress=self.egress,
            dns=self.resolvers(),
            allowed=list(self.destinations.allowed),
            blocked_ports=list(self.blocked_ports),
        )
        if not self.resolvers():
            result["warning"] = "no resolver sandboxes can reach (loopback-only resolv.conf)"
        return result

    def resolv_conf(self) -> Path:
        """The resolv.conf sandboxes see: the host's, or systemd-resolved's upstream list
        when the host's names only a loopback resolver."""
        host = Path("/etc/resolv.conf")
        if host_resolvers(host) and not _loopback_only(host):
            return host
        upstream = Path("/run/systemd/resolve/resolv.conf")
        return upstream if host_resolvers(upstream) else host

    def resolvers(self) -> list[str]:
        """The resolvers sandboxes use (never loopback: sandboxes have their own)."""
        found = host_resolvers(self.resolv_conf())
        return [a for a in found if not ipaddress.ip_address(a).is_loopback]

    # -- set-up ------------------------------------------------------------------

    def ensure(self) -> None:
        """Make (or update) the bridge and the table; NetworkError when impossible."""
        why = self.unavailable()
        if why:
            if self.isolation == "required":
                raise NetworkError(
                    f"Sandboxes cannot get networks of their own: {why}.",
                    hint="Run binderbox as root, or set SandboxNetwork.isolation = 'auto'.",
                )
            return
        lock_path = RUN_ROOT / "network.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._check_overlap()
            self._ensure_bridge()
            state = self._state()
            if _table_digest() != state.digest:
                elements = _hub_elements()
                _run(["nft", "-f", "-"], render_ruleset(state, elements))
                self.log.info(
                    "sandbox network %s on %s: rules written (every binderbox on this machine "
                    "shares them: give them all the same SandboxNetwork and Destinations "
                    "settings)",
                    self.subnet,
                    self.bridge,
                )

    def current(self) -> bool:
        """Whether the table on the host is the one these settings and the host's
        present state make (a look, not a lock: :meth:`ensure` decides under the lock)."""
        return self.enabled and _table_digest() == self._state().digest

    def ensure_current(self) -> None:
        """:meth:`ensure` unless the host's table is already the one these settings make:
        before each sandbox starts, since the table is the machine's and another
        binderbox process, or a change of the host's networks, may have rewritten it."""
        if not self.current():
            self.ensure()

    def _check_overlap(self) -> None:
        for line in json.loads(_run(["ip", "-j", "-4", "route", "show"]) or "[]"):
            dst = line.get("dst", "")
            if dst in ("default", "") or line.get("dev") == self.bridge:
                continue
            with contextlib.suppress(ValueError):
                if ipaddress.ip_network(dst, strict=False).overlaps(self.network):
                    raise NetworkError(
                        f"The sandbox subnet {self.subnet} overlaps this host's network {dst}.",
                        hint="Choose another with c.SandboxNetwork.subnet.",
                    )

    def _ensure_bridge(self) -> None:
        address = f"{self.gateway}/{self.network.prefixlen}"
        if not Path(f"/sys/class/net/{self.bridge}").exists():
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv6/conf/{self.bridge}/disable_ipv6").write_text("1")
        shown = json.loads(_run(["ip", "-j", "-4", "addr", "show", "dev", self.bridge]) or "[]")
        have = {f"{a['local']}/{a['prefixlen']}" for i in shown for a in i.get("addr_info", [])}
        if address not in have:
            _run(["ip", "addr", "replace", address, "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        forward = Path("/proc/sys/net/ipv4/ip_forward")
        if forward.read_text().strip() != "1":
            FORWARD_FLAG.parent.mkdir(parents=True, exist_ok=True)
            FORWARD_FLAG.write_text("binderbox turned IPv4 forwarding on\n")
            forward.write_text("1")

    def _state(self) -> NetState:
        destinations = self.destinations
        blocked = [str(n) for n in destinations.blocked_networks()]
        return NetState(
            bridge=self.bridge,
            subnet=self.network,
            gateway=self.gateway,
            builds=self.ranges()[1],
            resolvers=tuple(self.resolvers()),
            blocked=tuple(blocked),
            allowed=tuple(str(n) for n in destinations.allowed_networks),
            blocked_ports=tuple(self.blocked_ports),
            egress=self.egress,
            service_uid=os.geteuid(),
            drop_other_forwarding=FORWARD_FLAG.exists(),
            max_connections=self.max_connections,
            new_per_second=self.new_connections_per_second,
        )

    # -- per sandbox ---------------------------------------------------------------

    def claim(self, kind: str) -> tuple[SandboxNet, Lease]:
        """Lease an address for a ``session`` or a ``build``; the lease's descriptor goes
        to the sandbox's supervisor, which holds it while the sandbox lives."""
        sessions, builds = self.ranges()
        pool = sessions if kind == "session" else builds
        first = int(pool.network_address) + (2 if kind == "session" else 0)
        last = int(pool.broadcast_address) - (0 if kind == "session" else 1)
        lease = claim(None, "ip", range(first, last + 1))
        address = str(ipaddress.IPv4Address(lease.value))
        net = SandboxNet(address, self.network.prefixlen, self.gateway, self.bridge)
        if Path(f"/sys/class/net/{net.veth}").exists():  # left by a supervisor killed mid-way
            with contextlib.suppress(NetworkError):
                _run(["ip", "link", "del", net.veth])
        return net, lease

    def allow_hub(self, address: str, port: int) -> None:
        """Let the session at ``address`` reach the hub API ``port`` on the gateway
        (and nothing it was let reach by an earlier holder of the address)."""
        stale = [e for e in _hub_elements() if e.split(" . ")[0] == address]
        # each stale element added first (adding one that is there is no error): one that
        # a late clean-up removed since it was read must not fail the whole transaction
        script = "".join(
            f"add element inet {TABLE} session_hub {{ {e} }}\n"
            f"delete element inet {TABLE} session_hub {{ {e} }}\n"
            for e in stale
        )
        script += f"add element inet {TABLE} session_hub {{ {address} . {port} }}\n"
        _run(["nft", "-f", "-"], script)

    def forget_hub(self, address: str, port: int) -> None:
        """Undo :meth:`allow_hub` (a missing element is fine)."""
        with contextlib.suppress(NetworkError):
            _run(
                [
                    "nft",
                    "delete",
                    "element",
                    "inet",
                    TABLE,
                    "session_hub",
                    f"{{ {address} . {port} }}",
                ]
            )


def _which(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None or Path(f"/usr/sbin/{tool}").exists()


def _loopback_only(path: Path) -> bool:
    found = host_resolvers(path)
    return bool(found) and all(ipaddress.ip_address(a).is_loopback for a in found)


def _nft_json(*args: str) -> list[dict[str, Any]]:
    """``nft -j list ...`` decoded ([] when the table or set does not exist)."""
    try:
        out = subprocess.run(
            ["nft", "-j", "list", *args], capture_output=True, text=True, timeout=30, check=False
        ).stdout
        items: list[dict[str, Any]] = json.loads(out or "{}").get("nftables", [])
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    return items


def _table_digest() -> str:
    for item in _nft_json("table", "inet", TABLE):
        comment = item.get("table", {}).get("comment", "")
        if comment.startswith("binderbox sandboxes "):
            return str(comment.rsplit(" ", 1)[1])
    return ""


def _hub_elements() -> list[str]:
    """``<address> . <port>`` of the table's session_hub set (none if no table)."""
    found = []
    for item in _nft_json("set", "inet", TABLE, "session_hub"):
        for element in item.get("set", {}).get("elem", []):
            concat = element.get("concat") if isinstance(element, dict) else None
            if concat and len(concat) == 2:
                found.append(f"{concat[0]} . {concat[1]}")
    return found
