"""HTTPS for ``binderbox serve``: a TLS front of binderbox's own before the proxy.

Where TLS ends: the configurable-http-proxy can terminate TLS itself
(``--ssl-key``/``--ssl-cert``), but it reads those files once; a renewed
certificate would need a proxy restart, which drops every open connection to
the sessions (their kernels' websockets) and leaves the service unanswered
while the hub re-adds its routes.  So with HTTPS the proxy listens on loopback
only and :class:`TLSFront` listens on the public address: it terminates TLS
with an :class:`ssl.SSLContext` and relays the plain bytes to the proxy.  A
renewal loads the new chain into that same context (``load_cert_chain``):
new connections get the new certificate, open ones keep theirs, nothing
restarts.  The relay is below HTTP, so websockets pass unchanged.

The relay reads just enough HTTP (:mod:`binderbox.tls.relay`) to put the
client's address in ``X-Forwarded-For`` (any a client sent is dropped), so the
per-address limits (``SessionLauncher.launches_per_address``,
``WebApp.rate_limit``) see visitors, not the front; ``serve`` tells the web app
to trust one more hop (``WebApp.forwarded_hops``).  The first response of each
connection carries ``Strict-Transport-Security`` (``HTTPS.hsts_max_age``).

Slow clients: the front gives a TLS handshake ``handshake_timeout`` seconds
and the first request head ``idle_timeout``; later idleness is the proxy's
keep-alive timeout.  Both ports accept at most ``max_connections`` at once
(the front counts relayed connections; handshakes are bounded by their timeout).

:class:`HTTPListener` is the plain-HTTP port (80): it answers the ACME
server's HTTP-01 challenges and redirects every other request to HTTPS.

:class:`HTTPS` holds the settings and runs both, with the renewal:
:meth:`HTTPS.start` obtains a certificate if there is none (or it is within
``renew_before`` of expiry), :meth:`HTTPS.renewals` checks every
``check_interval`` seconds.  A failing order at start with no certificate at
all is a :class:`~binderbox.tls.certs.CertError` (the service does not start);
any later failure is one logged error and the old certificate stays in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream
from tornado.web import Application, RequestHandler
from traitlets import Float, Int, Unicode
from traitlets.config import LoggingConfigurable

from .certs import CertError, CertStore, order_certificate
from .relay import Refused, relay_requests, relay_responses

#: Let's Encrypt's production directory, and its staging one (untrusted certificates)
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


class _ChallengeHandler(RequestHandler):
    """``/.well-known/acme-challenge/<token>``: the answer, or 404."""

    def initialize(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def get(self, token: str) -> None:
        answer = self.answers.get(f"/.well-known/acme-challenge/{token}")
        if answer is None:
            self.set_status(404)
            return
        self.set_header("Content-Type", "text/plain")
        self.write(answer)


class _RedirectHandler(RequestHandler):
    """Any other request: a permanent redirect to the same path over HTTPS."""

    def initialize(self, origin: str) -> None:
        self.origin = origin

    def prepare(self) -> None:
        self.redirect(self.origin + self.request.uri, permanent=True)


class _CappedHTTPServer(HTTPServer):
    """An :class:`HTTPServer` that closes connections beyond ``max_connections``."""

    max_connections = 0

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        if self.max_connections and len(self._connections) >= self.max_connections:
            stream.close()
            return
        super().handle_stream(stream, address)


class HTTPListener:
    """The plain-HTTP port: ACME challenges, and redirects to ``https_origin``; a
    connection idle for ``idle_timeout`` s is closed, at most ``max_connections``."""

    def __init__(
        self,
        https_origin: str,
        answers: dict[str, str],
        idle_timeout: float = 30.0,
        max_connections: int = 0,
    ) -> None:
        app = Application(
            [
                (r"/\.well-known/acme-challenge/([^/]+)", _ChallengeHandler, {"answers": answers}),
                (r".*", _RedirectHandler, {"origin": https_origin}),
            ]
        )
        self.server = _CappedHTTPServer(
            app,
            xheaders=False,
            idle_connection_timeout=idle_timeout,
            body_timeout=idle_timeout,
            max_body_size=65536,  # ACME and redirects take no bodies
            max_header_size=65536,
        )
        self.server.max_connections = max_connections

    def listen(self, port: int, address: str) -> None:
        self.server.listen(port, address=address)

    def stop(self) -> None:
        self.server.stop()


class TLSFront:
    """Terminates TLS on the public port and relays each connection to ``backend_port``
    on loopback (the proxy).  :meth:`reload` swaps the certificate for new connections."""

    def __init__(
        self,
        backend_port: int,
        hsts_max_age: int = 0,
        handshake_timeout: float = 30.0,
        idle_timeout: float = 30.0,
        max_connections: int = 0,
    ) -> None:
        self.backend_port = backend_port
        self.hsts = f"Strict-Transport-Security: max-age={hsts_max_age}".encode()
        if hsts_max_age <= 0:
            self.hsts = b""
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server: asyncio.Server | None = None
        #: the open connections' writers (both sides), closed at stop
        self._open: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Task[Any]] = set()

    def reload(self, certfile: Path, keyfile: Path | None = None) -> None:
        """Serve ``certfile`` (chain, and the key unless ``keyfile``) from now on."""
        self.context.load_cert_chain(certfile, keyfile)

    async def listen(self, port: int, address: str) -> None:
        self._server = await asyncio.start_server(
            self._relay,
            address or None,
            port,
            ssl=self.context,
            ssl_handshake_timeout=self.handshake_timeout,
        )

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._open):
            writer.close()
        if self._relays:  # their pipes end on the closed sockets
            await asyncio.wait(self._relays, timeout=5)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.max_connections and len(self._relays) >= self.max_connections:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        except OSError:
            writer.close()
            return
        self._open |= {writer, up_writer}
        task = asyncio.current_task()
        if task is not None:
            self._relays.add(task)
        peer = writer.get_extra_info("peername")
        client_ip = str(peer[0]) if peer else ""
        requests = relay_requests(reader, up_writer, client_ip, self.idle_timeout)
        try:
            await asyncio.gather(
                _ending(requests, up_writer),
                _ending(relay_responses(up_reader, writer, self.hsts), writer),
            )
        finally:
            self._open -= {writer, up_writer}
            self._relays.discard(task)


async def _ending(relay: Coroutine[Any, Any, None], writer: asyncio.StreamWriter) -> None:
    """Run one direction; when it ends (or fails: a refusal, a timeout, a reset),
    close ``writer``, so the other direction ends too."""
    try:
        await relay
    except (
        OSError,
        ssl.SSLError,
        Refused,
        TimeoutError,
        asyncio.LimitOverrunError,  # a request head or chunk line over the reader's limit
        asyncio.IncompleteReadError,  # the client left inside a chunk or its CRLF
    ):
        pass
    finally:
        writer.close()


class HTTPS(LoggingConfigurable):
    """HTTPS for ``binderbox serve``: a certificate over ACME for ``domain``, or the
    operator's own (``cert_file``, ``key_file``).  See :mod:`binderbox.tls.front`."""

    domain = Unicode(
        "", help="The service's public name: serve HTTPS with a certificate obtained over ACME."
    ).tag(config=True)
    acme_directory = Unicode(
        LETS_ENCRYPT,
        help=f"""The ACME server's directory URL: Let's Encrypt's production one, its staging
        one ({LETS_ENCRYPT_STAGING}), or a site's own CA.""",
    ).tag(config=True)
    acme_ca_bundle = Unicode(
        "", help="A CA bundle (PEM) to trust the ACME server with ('' = the system's)."
    ).tag(config=True)
    email = Unicode("", help="Contact address for the ACME account (expiry notices).").tag(
        config=True
    )
    cert_file = Unicode(
        "", help="The operator's own certificate chain (PEM) instead of ACME; with key_file."
    ).tag(config=True)
    key_file = Unicode("", help="The private key of cert_file (PEM).").tag(config=True)
    ip = Unicode("", help="Address of the HTTPS and HTTP ports ('' = all interfaces).").tag(
        config=True
    )
    https_port = Int(443, help="The HTTPS port.").tag(config=True)
    http_port = Int(
        80, help="The plain-HTTP port: ACME's HTTP-01 challenges, and redirects to HTTPS."
    ).tag(config=True)
    renew_before = Float(
        30 * 86400.0, help="Renew a certificate this many seconds before it expires."
    ).tag(config=True)
    check_interval = Float(
        12 * 3600.0, help="Seconds between checks of the certificate's expiry."
    ).tag(config=True)
    hsts_max_age = Int(
        86400,
        help="""``Strict-Transport-Security: max-age`` (seconds) sent over HTTPS: browsers
        then use only HTTPS for the host that long.  0: not sent.""",
    ).tag(config=True)
    handshake_timeout = Float(30.0, help="Seconds a client has to complete its TLS handshake.").tag(
        config=True
    )
    idle_timeout = Float(
        30.0,
        help="""Seconds a connection may wait for its (first) request: on the HTTPS port
        after the handshake, on the HTTP port between requests.""",
    ).tag(config=True)
    max_connections = Int(
        2000, help="Connections each port (HTTPS, HTTP) holds at once; more are closed. 0: no cap."
    ).tag(config=True)

    @property
    def enabled(self) -> bool:
        return bool(self.domain or self.cert_file)

    def setup(self, data: Path, backend_port: int) -> None:
        """Prepare (no I/O yet): certificates in ``<data>/tls``, relaying to ``backend_port``."""
        if self.cert_file and not self.key_file:
            raise CertError("HTTPS.cert_file is set without HTTPS.key_file.")
        self.store = CertStore(data / "tls")
        self.answers: dict[str, str] = {}
        self.front = TLSFront(
            backend_port,
            hsts_max_age=self.hsts_max_age,
            handshake_timeout=self.handshake_timeout,
            idle_timeout=self.idle_timeout,
            max_connections=self.max_connections,
        )
        self.http = HTTPListener(self.origin, self.answers, self.idle_timeout, self.max_connections)

    @property
    def origin(self) -> str:
        """``https://<domain>[:port]``: the service's public origin."""
        host = self.domain or "localhost"
        return f"https://{host}" + ("" if self.https_port == 443 else f":{self.https_port}")

    async def start(self) -> None:
        """Listen on the HTTP port, have a certificate, then listen on the HTTPS port."""
        try:
            self.http.listen(self.http_port, self.ip)
        except OSError as err:
            raise _port_error(self.http_port, err) from err
        if self.cert_file:
            try:
                self.front.reload(Path(self.cert_file), Path(self.key_file))
            except (OSError, ssl.SSLError) as err:
                raise CertError(
                    f"HTTPS.cert_file and HTTPS.key_file cannot be used: {err}"
                ) from err
        else:
            if not await self.renew_if_due() and self.store.expiry(self.domain) is None:
                raise CertError(f"No certificate for {self.domain}: see the error above.")
            self.front.reload(self.store.cert_path(self.domain))
        try:
            await self.front.listen(self.https_port, self.ip)
        except OSError as err:
            raise _port_error(self.https_port, err) from err
        self.log.info("serving HTTPS at %s", self.origin)

    async def renew_if_due(self) -> bool:
        """Order a certificate if there is none or it expires within ``renew_before``;
        False if an order failed (logged; the old certificate stays)."""
        expiry = self.store.expiry(self.domain)
        now = datetime.datetime.now(datetime.UTC)
        if expiry is not None and (expiry - now).total_seconds() > self.renew_before:
            return True
        try:
            path = await asyncio.to_thread(
                order_certificate,
                self.store,
                self.domain,
                self.acme_directory,
                challenges_out=self.answers,
                ca_bundle=self.acme_ca_bundle,
                email=self.email,
            )
        except CertError as err:
            kept = ""
            if expiry is not None:
                kept = f"; still serving the one that expires {expiry:%Y-%m-%d %H:%M} UTC"
            self.log.error("%s%s", err.message, kept)
            self.log.debug("%s", err.log_message)
            return False
        self.log.info("certificate for %s obtained: %s", self.domain, path)
        if expiry is not None:
            self.front.reload(path)
        return True

    async def renewals(self) -> None:
        """Forever: every ``check_interval`` s, renew if due; reload the operator's files."""
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                if self.cert_file:
                    self.front.reload(Path(self.cert_file), Path(self.key_file))
                else:
                    await self.renew_if_due()
            except (OSError, ssl.SSLError, CertError) as err:
                self.log.error("reloading the certificate failed: %s", err)

    async def stop(self) -> None:
        with contextlib.suppress(AttributeError):
            self.http.stop()
            await self.front.stop()


def _port_error(port: int, err: OSError) -> CertError:
    """A port that cannot be had, as a plain error with what to do."""
    return CertError(
        f"Cannot listen on port {port}: {err.strerror or err}.",
        hint="Ports below 1024 need root or CAP_NET_BIND_SERVICE; "
        "or choose others (c.HTTPS.http_port, c.HTTPS.https_port).",
    )
