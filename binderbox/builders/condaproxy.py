"""Where the service's conda fetches connect: a forward proxy that checks every hop.

rattler fetches repodata itself and follows HTTP redirects itself: a channel on
an allowed host that answers ``302`` to a private address would be fetched
from there, unchecked.  So rattler's client (and :mod:`.condafetch`'s downloads)
are given :class:`PolicyProxy` as their HTTP and HTTPS proxy: a small proxy on
loopback, one per build, that sees every connection they make, redirects
included, and decides each where it connects:

* ``CONNECT host:port`` (https; TLS stays end to end, the certificate is checked
  by rattler against the name) and absolute-form ``GET``/``HEAD`` (http) only;
* a destination on an origin the operator configured (mirrors, the channel
  alias, default channels: :attr:`ChannelRules.trusted`) is connected to as
  named; any other goes through :func:`~binderbox.providers.policy.host_refusal`
  (the check of repository and dataset hosts, with
  ``CondaBuilder.allow_private_channels`` and ``c.Destinations.allowed``) and
  the socket is connected to exactly the addresses that check resolved, so a
  DNS answer that changes afterwards moves nothing;
* a refused destination gets ``403`` and is remembered (:attr:`PolicyProxy.refused`):
  the build fails with a message naming it (:meth:`PolicyProxy.raise_refused`).

The proxy listens on ``127.0.0.1`` on a random port while the build plans.  It
asks for no credentials (rattler drops them when it follows a redirect): it
reaches nothing a process on the host could not reach directly, and build
sandboxes and sessions cannot reach the host's loopback at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..errors import CondaChannelError
from ..providers.pins import Pins
from ..providers.policy import host_refusal

if TYPE_CHECKING:
    from .condasolve import ChannelRules

#: longest request head read from a client
MAX_HEAD = 64 * 1024
#: seconds without a byte either way before a connection is dropped
IDLE = 120.0
#: seconds to connect to a destination
CONNECT_TIMEOUT = 30.0
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Refused:
    """A destination the proxy refused: ``where`` (``host:port``) and why."""

    where: str
    reason: str


class _Checked(Pins):
    """What :func:`host_refusal` resolved and checked, kept to connect to."""

    def __init__(self) -> None:
        super().__init__()
        self.addresses: list[IPAddress] = []

    def record(self, url: str, addresses: Sequence[IPAddress]) -> None:
        self.addresses = list(addresses)


class PolicyProxy:
    """The proxy of one build's conda fetches; see the module docstring.

    ``async with PolicyProxy(rules) as proxy:`` then :attr:`url` is the proxy URL
    to give rattler and urllib.
    """

    def __init__(self, rules: ChannelRules) -> None:
        self.rules = rules
        self.refused: list[Refused] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._open_writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aenter__(self) -> PolicyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._open_writers):  # ends their handlers (not cancelled:
            writer.transport.abort()  # asyncio 3.11 logs cancelled stream handlers)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def raise_refused(self, channel: str = "") -> None:
        """Raise :class:`CondaChannelError` naming the first refused destination, if any."""
        if not self.refused:
            return
        first = self.refused[0]
        which = f"The conda channel {channel}" if channel else "A conda channel"
        raise CondaChannelError(
            f"{which} sent this server to {first.where}, which is not allowed: {first.reason}.",
            hint="This server only fetches conda packages from public channels.",
            log_message=f"conda proxy refused {first.where}: {first.reason}",
        )

    # -- one client connection ----------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._open_writers.add(writer)
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except TimeoutError:
            pass
        finally:
            self._tasks.discard(task)
            self._open_writers.discard(writer)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(IDLE):
            head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            return await _answer(writer, 431, "Request Header Fields Too Large")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = [*lines[0].split(" "), "", ""][:3]
        headers = [line for line in lines[1:] if line]
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            return await self._tunnel(reader, writer, host.strip("[]"), int(port), "https")
        if method not in ("GET", "HEAD") or not target.startswith("http://"):
            return await _answer(writer, 405, "Method Not Allowed")
        parts = urlsplit(target)
        upstream = await self._open(writer, "http", parts.hostname or "", parts.port or 80)
        if upstream is None:
            return None
        up_reader, up_writer = upstream
        path = parts.path or "/"
        path += f"?{parts.query}" if parts.query else ""
        kept = [h for h in headers if not h.lower().startswith(("proxy-", "connection:"))]
        request = "\r\n".join([f"{method} {path} HTTP/1.1", *kept, "Connection: close", "", ""])
        up_writer.write(request.encode("latin-1"))
        await _pipe(up_reader, writer, up_writer)
        return None

    async def _tunnel(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        port: int,
        scheme: str,
    ) -> None:
        upstream = await self._open(writer, scheme, host, port)
        if upstream is None:
            return
        up_reader, up_writer = upstream
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(_pipe(reader, up_writer, None), _pipe(up_reader, writer, up_writer))

    async def _open(
        self, writer: asyncio.StreamWriter, scheme: str, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to ``host:port`` where the policy allows it, else an answer."""
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        url = f"{scheme}://{where}/"
        checked = _Checked()
        if not self._trusted(scheme, host, port):
            refusal = await host_refusal(
                url,
                allow_ssh=False,
                allow_private_hosts=self.rules.allow_private_channels,
                destinations=self.rules.destinations,
                pins=checked,
            )
            if refusal is not None:
                self.refused.append(Refused(where, refusal.reason))
                await _answer(writer, 403, "Forbidden")
                return None
        targets = [str(a) for a in checked.addresses] or [host]
        for target in targets:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    return await asyncio.open_connection(target, port)
        await _answer(writer, 502, "Bad Gateway")
        return None

    def _trusted(self, scheme: str, host: str, port: int) -> bool:
        """Whether ``host:port`` is the origin of a channel the operator configured."""
        for url in self.rules.trusted:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                continue
            default = 443 if parts.scheme == "https" else 80
            if parts.hostname == host.lower() and (parts.port or default) == port:
                return True
        return False


async def _answer(writer: asyncio.StreamWriter, code: int, text: str) -> None:
    body = f"{code} {text} (binderbox conda proxy)\n".encode()
    head = f"HTTP/1.1 {code} {text}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode() + body)
    with contextlib.suppress(OSError):
        await writer.drain()


async def _pipe(
    source: asyncio.StreamReader,
    sink: asyncio.StreamWriter,
    also: asyncio.StreamWriter | None,
) -> None:
    """Copy ``source`` to ``sink`` until either end closes or is idle too long; then
    close ``sink``'s sending side (and ``also``)."""
    try:
        while True:
            async with asyncio.timeout(IDLE):
                chunk = await source.read(1 << 16)
            if not chunk:
                break
            sink.write(chunk)
            await sink.drain()
    except (OSError, TimeoutError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if sink.can_write_eof():
                sink.write_eof()
        if also is not None:
            also.close()
