"""The destination policy of dataset downloads, checked where the service connects.

Every request a fetcher makes (:func:`~binderbox.data.fetchers.http.open_url`)
goes through :meth:`Guard.open`, an urllib opener with http and https only:

* **Direct connections** are made by :class:`GuardedHTTPConnection` and
  :class:`GuardedHTTPSConnection`: the host is resolved once, the connection
  is refused (:class:`BlockedDestination`) if any of its addresses is blocked
  (:meth:`~binderbox.runtime.destinations.Destinations.is_blocked`: private,
  loopback, link-local, this machine's own networks... unless listed in
  ``Destinations.allowed``), and the socket is connected to one of exactly
  the addresses checked.  A DNS answer that changes after the check (DNS
  rebinding) cannot move the connection: there is no second lookup.  The TLS
  server name, the certificate check and the ``Host`` header still use the
  name.
* **Redirects** are new requests through the same handlers, so every hop is
  checked where it connects.  A redirect to any scheme but http and https is
  refused (:class:`RedirectRefused`; urllib alone would follow ``ftp://``),
  and there are no ``file:``, ``ftp:`` or ``data:`` handlers at all.
* **An operator's proxy** (``http_proxy``, ``https_proxy``, ``no_proxy`` in
  the service's environment, read by urllib's ``ProxyHandler``) is the
  operator's choice: the connection to the proxy is not checked.  The target's
  name is resolved and checked before the request is sent, as a repository
  URL is (a name that does not resolve here is left to the proxy, which may
  have its own DNS); the proxy resolves it again, so its own egress rules are
  what stops DNS rebinding through it.  Hosts in ``no_proxy`` are connected to
  directly, and checked there.

With ``allow_private`` (``DataCache.allow_private_hosts``) nothing is checked:
the opener connects as urllib does, still with http and https only.
"""

from __future__ import annotations

import functools
import http.client
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from ...runtime.destinations import Destinations

#: one answer of :func:`socket.getaddrinfo` (family, type, proto, canonname, sockaddr)
AddrInfo = tuple[Any, ...]


class BlockedDestination(OSError):
    """A connection refused by the policy: ``host`` (of ``url``) resolved to ``address``."""

    def __init__(self, url: str, host: str, address: str) -> None:
        named = f"{host} is" if host == address else f"{host} resolves to {address},"
        super().__init__(f"{named} a blocked destination")
        self.url, self.host, self.address = url, host, address


class RedirectRefused(OSError):
    """A redirect to a URL that is not http or https."""

    def __init__(self, url: str) -> None:
        super().__init__(f"redirect to {url!r} refused")
        self.url = url


@dataclass(frozen=True)
class Guard:
    """Where the service's dataset requests may connect; see the module docstring."""

    destinations: Destinations = field(default_factory=Destinations)
    #: connect anywhere (``DataCache.allow_private_hosts``)
    allow_private: bool = False

    def open(self, request: urllib.request.Request, timeout: float) -> Any:
        """Open ``request`` (following redirects) under the policy.

        Raises what :func:`urllib.request.urlopen` raises; a refused destination is
        an :class:`urllib.error.URLError` whose ``reason`` is a
        :class:`BlockedDestination` or :class:`RedirectRefused`.
        """
        director = urllib.request.OpenerDirector()
        for handler in (
            urllib.request.ProxyHandler(),  # the environment's, read now
            urllib.request.UnknownHandler(),
            _HTTPHandler(self),
            _HTTPSHandler(self),
            urllib.request.HTTPDefaultErrorHandler(),
            _RedirectHandler(),
            urllib.request.HTTPErrorProcessor(),
        ):
            director.add_handler(handler)
        return director.open(request, timeout=timeout)

    def resolve(self, host: str, port: int) -> Sequence[AddrInfo]:
        """Every address of ``host`` (one lookup); :class:`socket.gaierror` if none."""
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)

    def check(self, url: str, host: str, infos: Sequence[AddrInfo]) -> None:
        """Raise :class:`BlockedDestination` if one of ``host``'s addresses is blocked."""
        if self.allow_private:
            return
        for *_, sockaddr in infos:
            address = str(sockaddr[0]).partition("%")[0]  # without an IPv6 scope id
            if self.destinations.is_blocked(address):
                raise BlockedDestination(url, host, address)

    def connect(
        self, url: str, address: tuple[str, int], timeout: Any, source: Any = None
    ) -> socket.socket:
        """A socket connected to ``address``'s host at an address that passed :meth:`check`.

        The addresses are tried in the resolver's order, as
        :func:`socket.create_connection` does; each is numeric, so nothing is
        looked up again.
        """
        host, port = address
        infos = self.resolve(host, port)
        self.check(url, host, infos)
        error: OSError | None = None
        for *_, sockaddr in infos:
            try:
                return socket.create_connection((sockaddr[0], sockaddr[1]), timeout, source)
            except OSError as exc:
                error = exc
        raise error or OSError(f"no address to connect to for {host}")

    def check_target(self, request: urllib.request.Request) -> None:
        """Before a request goes to the operator's proxy: the target's name, checked.

        A name that does not resolve here passes (the proxy may resolve it).
        """
        url = request.full_url
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        try:
            infos = self.resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
        except (OSError, UnicodeError, ValueError):
            return
        try:
            self.check(url, host, infos)
        except BlockedDestination as exc:
            raise urllib.error.URLError(exc) from None


class GuardedHTTPConnection(http.client.HTTPConnection):
    """An :class:`http.client.HTTPConnection` whose socket :meth:`Guard.connect` makes."""

    def __init__(self, host: str, *, guard: Guard, url: str, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._create_connection = functools.partial(guard.connect, url)


class GuardedHTTPSConnection(http.client.HTTPSConnection):
    """:class:`GuardedHTTPConnection` for https (the name is still the TLS server name)."""

    def __init__(self, host: str, *, guard: Guard, url: str, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._create_connection = functools.partial(guard.connect, url)


def _via_proxy(request: urllib.request.Request) -> bool:
    """Whether ``ProxyHandler`` sent ``request`` to a proxy (http: the full URL as
    selector; https: a CONNECT tunnel to the target)."""
    return request.has_proxy() or bool(getattr(request, "_tunnel_host", None))


def _connection(
    guard: Guard, request: urllib.request.Request, plain: type, guarded: type
) -> Callable[..., http.client.HTTPConnection]:
    """The connection class for ``request``: checked at connect time when direct."""
    if _via_proxy(request):
        guard.check_target(request)
        return plain
    return functools.partial(guarded, guard=guard, url=request.full_url)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self.guard = guard

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = _connection(self.guard, req, http.client.HTTPConnection, GuardedHTTPConnection)
        return self.do_open(connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: Guard) -> None:
        super().__init__()
        self.guard = guard

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = _connection(
            self.guard, req, http.client.HTTPSConnection, GuardedHTTPSConnection
        )
        return self.do_open(connection, req)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, to http and https URLs only (urllib alone refuses ``file:``
    with an HTTPError of the redirect's status, and follows ``ftp:``)."""

    def http_error_302(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Any
    ) -> Any:
        target = headers.get("location") or headers.get("uri")
        if target:
            newurl = urllib.parse.urljoin(req.full_url, target.strip())
            if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
                fp.close()
                raise urllib.error.URLError(RedirectRefused(newurl))
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302
