"""Where git connects, for the hosts the policy checked: the addresses checked.

:func:`~binderbox.providers.policy.host_refusal` resolves a visitor's URL (and
each submodule URL) once and checks every address it gets.  :class:`Pins`
records what it found, and :meth:`Pins.config` makes ``git -c`` settings that
every later git command of the provider gets, so git connects to the addresses
that were checked, not to what the name resolves to by then (DNS rebinding):

* ``http`` and ``https``: ``http.curloptResolve=<host>:<port>:<addresses>``
  (libcurl's ``CURLOPT_RESOLVE``): curl takes the host's addresses from there
  instead of DNS; TLS (server name, certificate) and the ``Host`` header still
  use the name.
* ``git://`` (git's own TCP connection, not curl):
  ``url.git://<address>:<port>/.insteadOf=git://<host>:<port>/`` rewrites the
  URL to the first address checked.  There is no TLS to keep the name for; a
  git daemon then receives the address as its ``host=``, which only daemons
  doing virtual hosting (``--interpolated-path``) look at.
* A host that did not resolve when it was checked is :meth:`Pins.unresolved`:
  the provider does not let git look it up again later (a DNS server that
  first fails, then answers a private address), unless an HTTP proxy from the
  environment will take the request (the proxy resolves names, see below).
* ssh (only with ``allow_ssh``) is not pinned: ssh resolves the name itself.
* A host that is an IP address needs no pin.

Through an operator's HTTP proxy (``http_proxy``, ``https_proxy``, git's
``http.proxy``), curl hands the name to the proxy, which resolves it: the
check stands, the pin does not apply, and the proxy's own egress rules are
what stops DNS rebinding through it.
"""

from __future__ import annotations

import ipaddress
import urllib.request
from collections.abc import Sequence
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``git -c`` settings; a tuple is one setting given several times (a multi-valued key)
GitConfig = dict[str, str | tuple[str, ...]]
_DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418}


def is_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address (no brackets)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _origin(url: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of a URL git connects to itself or through curl; None
    for other schemes, no host, an IP address or a port that is not a number."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if scheme not in _DEFAULT_PORTS or not host or is_address(host):
        return None
    try:
        return scheme, host, parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        return None


def _bracketed(address: IPAddress) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


class Pins:
    """The addresses git may connect to, per host the policy checked; see the module docstring."""

    def __init__(self) -> None:
        #: ``(host, port)`` -> curl's address list
        self._resolve: dict[tuple[str, int], str] = {}
        #: pinned ``git://`` prefix -> the prefixes it replaces
        self._rewrite: dict[str, list[str]] = {}
        self._unresolved: set[tuple[str, str, int]] = set()

    def record(self, url: str, addresses: Sequence[IPAddress]) -> None:
        """``url``'s host was checked and resolved to ``addresses`` (none: it did not resolve).

        The first record of a host stays: later checks of it (a submodule on
        the same host) passed too, and git keeps connecting where it did.
        """
        origin = _origin(url)
        if origin is None:
            return
        scheme, host, port = origin
        if not addresses:
            self._unresolved.add(origin)
        elif scheme == "git":
            authority = urlsplit(url).netloc
            userinfo = authority.rpartition("@")[0] + "@" if "@" in authority else ""
            pinned = f"git://{userinfo}{_bracketed(addresses[0])}:{port}/"
            self._rewrite.setdefault(pinned, [])
            original = f"git://{authority}/"
            if original not in self._rewrite[pinned]:
                self._rewrite[pinned].append(original)
        else:
            self._resolve.setdefault((host, port), ",".join(_bracketed(a) for a in addresses))

    def unresolved(self, url: str) -> bool:
        """Whether ``url``'s host did not resolve when checked, and git would look it
        up itself (no proxy from the environment takes the request)."""
        origin = _origin(url)
        if origin is None or origin not in self._unresolved:
            return False
        scheme, host, _ = origin
        if scheme == "git":  # git's own connection: no HTTP proxy
            return True
        proxies = urllib.request.getproxies()
        proxied = bool({scheme, "all"} & proxies.keys()) and not urllib.request.proxy_bypass(host)
        return not proxied

    def config(self) -> GitConfig:
        """The ``git -c`` settings that make git connect where the checks looked."""
        config: GitConfig = {}
        if self._resolve:
            config["http.curloptResolve"] = tuple(
                f"{host}:{port}:{addresses}" for (host, port), addresses in self._resolve.items()
            )
        for pinned, originals in self._rewrite.items():
            config[f"url.{pinned}.insteadOf"] = tuple(originals)
        return config
