"""HTTPS against a real ACME server on loopback (Debian's pebble, tests/pebble.py).

The front's own tests relay to a test HTTP server on loopback standing in for the
proxy; the last test runs the real ``binderbox serve`` (proxy, hub, web app) behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import socket
import ssl
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from acme_server import Pebble
from certs import make_cert
from cryptography import x509
from kernels import run_code
from loopback import LoopbackServer
from repos import make_repo, notebook
from serve_helpers import escaped_file_url, git_spec, running_serve

from binderbox.hub.children import free_port
from binderbox.tls import HTTPS, CertError
from binderbox.tls.relay import RequestHead

DOMAIN = "binder.example.org"
SSE = {"Accept": "text/event-stream"}


class _Backend(BaseHTTPRequestHandler):
    """Stands in for the proxy; ``/headers``: the forwarded headers it got (and the body)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.headers.get("Upgrade"):
            self._upgraded()
            return
        body = f"proxy says hello at {self.path}".encode()
        if self.path == "/headers":
            seen = [f"{k}={self.headers.get_all(k)}" for k in ("X-Forwarded-For", "X-Real-IP")]
            body = (" ".join(seen) + " body=").encode() + self._body()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def _upgraded(self) -> None:
        """101, then the forwarded address and an echo of raw bytes (a websocket's place)."""
        self.send_response(101)
        self.send_header("Upgrade", "echo")
        self.send_header("Connection", "Upgrade")
        self.end_headers()
        self.wfile.write(f"{self.headers.get_all('X-Forwarded-For')}\n".encode())
        self.wfile.flush()
        with contextlib.suppress(OSError):  # until the client goes
            while line := self.rfile.readline():
                self.wfile.write(line)
                self.wfile.flush()
        self.close_connection = True

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b""):  # trailers
            pass
        return body

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def pebble(http_port: int) -> Iterator[Pebble]:
    server = Pebble(http_port=http_port, validity=3600)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def backend() -> Iterator[LoopbackServer]:
    server = LoopbackServer(_Backend)
    yield server
    server.close()


def _https(pebble: Pebble, backend: LoopbackServer, data: Path, **settings: object) -> HTTPS:
    defaults: dict[str, object] = {
        "domain": DOMAIN,
        "acme_directory": pebble.directory,
        "acme_ca_bundle": str(pebble.ca_bundle),
        "ip": "127.0.0.1",
        "https_port": free_port(),
        "http_port": pebble.http_port,
        "renew_before": 0.0,
    }
    https = HTTPS(**(defaults | settings))
    https.setup(data, backend.httpd.server_address[1])
    return https


def _client_context(pebble: Pebble) -> ssl.SSLContext:
    """Trusts pebble's root only (from its management API)."""
    return ssl.create_default_context(cadata=pebble.root_pem().decode())


def _connect(
    https: HTTPS | int, context: ssl.SSLContext, source: str = "127.0.0.1"
) -> http.client.HTTPSConnection:
    """An HTTPS connection to the front on loopback (its port), verified for DOMAIN,
    from the loopback address ``source`` (another client address)."""
    port = https if isinstance(https, int) else https.https_port
    conn = http.client.HTTPSConnection(DOMAIN, port, context=context, timeout=30)
    raw = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    conn.sock = context.wrap_socket(raw, server_hostname=DOMAIN)
    return conn


def _get(
    conn: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str, http.client.HTTPMessage]:
    """Status, body and headers (case-insensitive: the proxy lowercases their names)."""
    conn.request("GET", path, headers=headers or {})
    answer = conn.getresponse()
    return answer.status, answer.read().decode(), answer.headers


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server ends ``sock`` (which sends nothing) within its timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        sock.close()


def _serial(conn: http.client.HTTPSConnection) -> int:
    assert isinstance(conn.sock, ssl.SSLSocket)
    der = conn.sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.slow
async def test_certificate_issued_served_and_http_redirects(
    pebble: Pebble, backend: LoopbackServer, tmp_path: Path
) -> None:
    https = _https(pebble, backend, tmp_path)
    try:
        await https.start()
        context = _client_context(pebble)

        def fetch() -> tuple[int, str]:
            conn = _connect(https, context)
            status, body, _ = _get(conn, "/v2/gh/org/repo/HEAD")
            conn.close()
            return status, body

        assert await asyncio.to_thread(fetch) == (200, "proxy says hello at /v2/gh/org/repo/HEAD")

        def plain() -> tuple[int, str, http.client.HTTPMessage]:
            conn = http.client.HTTPConnection("127.0.0.1", https.http_port, timeout=10)
            return _get(conn, "/v2/gh/org/repo/HEAD?x=1")

        status, _, headers = await asyncio.to_thread(plain)
        assert status == 301
        assert headers["Location"] == f"{https.origin}/v2/gh/org/repo/HEAD?x=1"
        assert https.origin == f"https://{DOMAIN}:{https.https_port}"
        # key and chain in one file, private, and the account key beside it
        pem = tmp_path / "tls" / f"{DOMAIN}.pem"
        assert b"PRIVATE KEY" in pem.read_bytes() and b"CERTIFICATE" in pem.read_bytes()
        assert pem.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "tls" / "account.key").stat().st_mode & 0o777 == 0o600
        assert [p.name for p in (tmp_path / "tls").iterdir() if p.name.startswith(".")] == []
    finally:
        await https.stop()


@pytest.mark.slow
async def test_renewal_swaps_certificate_without_dropping_connections(
    pebble: Pebble, backend: LoopbackServer, tmp_path: Path
) -> None:
    # certificates live an hour (pebble's config): a window of two renews at each check
    https = _https(pebble, backend, tmp_path, check_interval=0.2)
    try:
        await https.start()
        context = _client_context(pebble)
        old = await asyncio.to_thread(_connect, https, context)
        assert (await asyncio.to_thread(_get, old, "/a"))[0] == 200
        first = _serial(old)
        https.renew_before = 7200.0
        renewals = asyncio.create_task(https.renewals())
        try:
            serial = first
            for _ in range(100):
                await asyncio.sleep(0.2)
                new = await asyncio.to_thread(_connect, https, context)
                serial = _serial(new)
                new.close()
                if serial != first:
                    break
            assert serial != first, "the certificate was not renewed"
        finally:
            renewals.cancel()
        # the connection opened before the renewal still works, with its certificate
        assert (await asyncio.to_thread(_get, old, "/b"))[:2] == (200, "proxy says hello at /b")
        assert _serial(old) == first
        old.close()
    finally:
        await https.stop()


@pytest.mark.slow
async def test_failing_order_is_logged_and_old_certificate_kept(
    pebble: Pebble, backend: LoopbackServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    https = _https(pebble, backend, tmp_path)
    try:
        await https.start()
        context = _client_context(pebble)
        conn = await asyncio.to_thread(_connect, https, context)
        before = _serial(conn)
        conn.close()
        stored = (tmp_path / "tls" / f"{DOMAIN}.pem").read_bytes()
        https.http.stop()  # the challenge port is unreachable now
        https.renew_before = 7200.0
        with caplog.at_level(logging.ERROR):
            assert await https.renew_if_due() is False
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is None
        message = errors[0].getMessage()
        assert f"did not issue a certificate for {DOMAIN}" in message
        assert "still serving the one that expires" in message
        assert (tmp_path / "tls" / f"{DOMAIN}.pem").read_bytes() == stored
        conn = await asyncio.to_thread(_connect, https, context)
        assert _serial(conn) == before
        assert (await asyncio.to_thread(_get, conn, "/"))[0] == 200
        conn.close()
    finally:
        await https.stop()


@pytest.mark.slow
async def test_no_certificate_and_failing_order_refuses_to_start(
    pebble: Pebble, backend: LoopbackServer, tmp_path: Path
) -> None:
    # our HTTP port is not the one pebble validates against: nothing answers there
    https = _https(pebble, backend, tmp_path, http_port=free_port())
    with pytest.raises(CertError, match=f"No certificate for {DOMAIN}"):
        await https.start()
    assert not (tmp_path / "tls" / f"{DOMAIN}.pem").exists()
    await https.stop()


async def test_operators_own_certificate(
    pebble: Pebble, backend: LoopbackServer, tmp_path: Path
) -> None:
    """cert_file/key_file: no ACME; served as given."""
    cert, key = make_cert(tmp_path, "operator")
    https = HTTPS(
        cert_file=str(cert),
        key_file=str(key),
        ip="127.0.0.1",
        https_port=free_port(),
        http_port=free_port(),
    )
    https.setup(tmp_path / "data", backend.httpd.server_address[1])
    try:
        await https.start()
        context = ssl.create_default_context(cafile=cert)

        def fetch() -> int:
            conn = http.client.HTTPSConnection("127.0.0.1", https.https_port, context=context)
            status = _get(conn, "/")[0]
            conn.close()
            return status

        assert await asyncio.to_thread(fetch) == 200
    finally:
        await https.stop()


@pytest.mark.slow
def test_serve_with_domain_answers_over_https(
    pebble: Pebble, http_port: int, tmp_path: Path
) -> None:
    """``binderbox serve --domain``: the real service (proxy, hub, web app) behind the
    front: HSTS over HTTPS only, the hub's cookies Secure, limits per client address."""
    https_port = free_port()
    config = "\n".join(
        [
            f"c.HTTPS.domain = {DOMAIN!r}",
            f"c.HTTPS.acme_directory = {pebble.directory!r}",
            f"c.HTTPS.acme_ca_bundle = {str(pebble.ca_bundle)!r}",
            "c.HTTPS.ip = '127.0.0.1'",
            f"c.HTTPS.https_port = {https_port}",
            f"c.HTTPS.http_port = {http_port}",
            "c.WebApp.rate_limit = 1",
        ]
    )
    with running_serve(tmp_path, extra_config=config) as serve:
        assert serve.url == f"https://{DOMAIN}:{https_port}/"
        context = _client_context(pebble)
        conn = _connect(https_port, context)
        status, body, headers = _get(conn, "/")
        assert status == 200 and "<html" in body.lower()
        assert headers["Strict-Transport-Security"] == "max-age=86400"
        status, _, _ = _get(conn, "/hub/api/")  # the hub, through the proxy
        assert status == 200
        _, _, headers = _get(conn, "/hub/login")  # the hub's page sets its _xsrf cookie
        assert headers["Set-Cookie"].startswith("_xsrf=")
        assert "; Secure" in headers["Set-Cookie"]
        conn.close()
        # one /build per address: the front's X-Forwarded-For, not a client's, counts
        missing = f"/build/git/{escaped_file_url(tmp_path / 'no-repo')}/HEAD"
        assert [
            _get(_connect(https_port, context, source), missing, {**SSE, **forged})[0]
            for source, forged in [
                ("127.0.0.2", {}),
                ("127.0.0.2", {"X-Forwarded-For": "127.0.0.9"}),
                ("127.0.0.3", {}),
            ]
        ] == [200, 429, 200]
        plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        status, _, headers = _get(plain, "/v2/gh/org/repo/HEAD")
        assert status == 301
        assert headers["Location"] == f"https://{DOMAIN}:{https_port}/v2/gh/org/repo/HEAD"
        assert "Strict-Transport-Security" not in headers
        # a session's REST API and kernel websocket through the front
        repo = make_repo(tmp_path / "repos" / "over-tls", {"index.ipynb": notebook("1")})
        ready = _launch(_connect(https_port, context, "127.0.0.4"), git_spec(repo))
        assert ready["url"].startswith(f"https://{DOMAIN}:{https_port}/user/")
        local = ready["url"].replace(f"//{DOMAIN}:", "//127.0.0.1:", 1)
        loose = _client_context(pebble)
        loose.check_hostname = False  # the URL names 127.0.0.1; the chain is still verified
        code = "print(6 * 7)"
        assert asyncio.run(run_code(local, ready["token"], code, tls=loose)) == "42\n"


def _launch(conn: http.client.HTTPSConnection, spec: str) -> dict[str, object]:
    """The ``ready`` event of a launch of ``spec`` over ``conn`` (the /build stream)."""
    conn.request("GET", f"/build/git/{spec}", headers=SSE)
    answer = conn.getresponse()
    assert answer.status == 200
    for _ in range(2000):  # bounded: a launch sends some dozens of events
        line = answer.readline().decode()
        assert line, "the event stream ended before ready"
        if line.startswith("data:"):
            event = json.loads(line[5:])
            assert event.get("phase") != "failed", event
            if event.get("phase") == "ready":
                conn.close()
                return dict(event)
    raise AssertionError("no ready event")


async def test_unusable_certificate_files_or_port_are_plain_errors(
    backend: LoopbackServer, tmp_path: Path
) -> None:
    """A missing key file, a port already taken: CertError with a message, no traceback."""
    cert, _ = make_cert(tmp_path, "operator")
    https = HTTPS(
        cert_file=str(cert),
        key_file=str(tmp_path / "missing.key"),
        ip="127.0.0.1",
        https_port=free_port(),
        http_port=free_port(),
    )
    https.setup(tmp_path / "data", backend.httpd.server_address[1])
    with pytest.raises(CertError, match="cannot be used"):
        await https.start()
    await https.stop()
    taken = backend.httpd.server_address[1]
    https = HTTPS(cert_file=str(cert), key_file=str(cert), ip="127.0.0.1", http_port=taken)
    https.setup(tmp_path / "data", taken)
    with pytest.raises(CertError, match=f"Cannot listen on port {taken}"):
        await https.start()
    await https.stop()


@pytest.mark.slow
async def test_front_forwards_the_client_address_and_sends_hsts(
    pebble: Pebble, backend: LoopbackServer, tmp_path: Path
) -> None:
    """The proxy gets the front's X-Forwarded-For (the client's address; what a client
    sent is dropped) on every request of a connection; HTTPS answers carry HSTS, the
    port-80 redirect does not; ambiguous framing never reaches the proxy."""
    https = _https(pebble, backend, tmp_path, hsts_max_age=600)
    try:
        await https.start()
        context = _client_context(pebble)

        def exchange() -> list[tuple[int, str, http.client.HTTPMessage]]:
            conn = _connect(https, context, source="127.0.0.2")
            forged = {"X-Forwarded-For": "203.0.113.9", "X-Real-IP": "203.0.113.9"}
            first = _get(conn, "/headers", forged)
            conn.request("POST", "/headers", body=iter([b"ab", b"cd"]), headers=forged)
            answer = conn.getresponse()  # chunked (an iterable body), same connection
            second = (answer.status, answer.read().decode(), answer.headers)
            conn.close()
            return [first, second]

        (status, body, headers), (status2, body2, _) = await asyncio.to_thread(exchange)
        assert status == status2 == 200
        assert body == "X-Forwarded-For=['127.0.0.2'] X-Real-IP=None body="
        assert body2 == "X-Forwarded-For=['127.0.0.2'] X-Real-IP=None body=abcd"
        assert headers["Strict-Transport-Security"] == "max-age=600"

        def smuggling() -> bytes:
            conn = _connect(https, context)
            assert conn.sock is not None
            conn.sock.sendall(
                b"POST /headers HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            data = conn.sock.recv(100)
            conn.close()
            return data

        assert await asyncio.to_thread(smuggling) == b""  # closed, nothing answered

        def upgraded() -> bytes:
            conn = _connect(https, context, source="127.0.0.2")
            sock = conn.sock
            assert sock is not None
            sock.sendall(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
            )
            raw = b""
            # after the upgrade, bytes pass as they are, even ones shaped like a request
            sock.sendall(b"GET / HTTP/1.1\r\nX-Forwarded-For: 203.0.113.9\r\n")
            while not raw.endswith(b"203.0.113.9\r\n") and (chunk := sock.recv(4096)):
                raw += chunk
            conn.close()
            return raw

        raw = await asyncio.to_thread(upgraded)
        assert raw.startswith(b"HTTP/1.0 101 ") or raw.startswith(b"HTTP/1.1 101 ")
        assert b"\r\nStrict-Transport-Security: max-age=600\r\n" in raw
        tail = raw.split(b"\r\n\r\n", 1)[1]
        assert tail == b"['127.0.0.2']\nGET / HTTP/1.1\r\nX-Forwarded-For: 203.0.113.9\r\n"

        def plain() -> tuple[int, str, http.client.HTTPMessage]:
            conn = http.client.HTTPConnection("127.0.0.1", https.http_port, timeout=10)
            return _get(conn, "/")

        status, _, headers = await asyncio.to_thread(plain)
        assert status == 301 and "Strict-Transport-Security" not in headers
    finally:
        await https.stop()


@pytest.mark.slow
async def test_silent_clients_are_closed_and_connections_capped(
    pebble: Pebble, backend: LoopbackServer, tmp_path: Path
) -> None:
    """A client that connects and sends nothing (no handshake; a handshake and no
    request; nothing on port 80) is closed; connections beyond the cap are refused."""
    https = _https(pebble, backend, tmp_path, handshake_timeout=0.5, idle_timeout=0.5)
    try:
        await https.start()
        context = _client_context(pebble)

        def silent() -> list[bool]:
            no_handshake = socket.create_connection(("127.0.0.1", https.https_port), timeout=20)
            handshake = _connect(https, context).sock
            assert isinstance(handshake, socket.socket)
            handshake.settimeout(20)
            port80 = socket.create_connection(("127.0.0.1", https.http_port), timeout=20)
            return [_closed_by_server(s) for s in (no_handshake, handshake, port80)]

        assert await asyncio.to_thread(silent) == [True, True, True]
    finally:
        await https.stop()
    capped = _https(pebble, backend, tmp_path, max_connections=1, idle_timeout=60.0)
    try:
        await capped.start()
        context = _client_context(pebble)

        def over_the_cap() -> tuple[bool, bool, int]:
            first = _connect(capped, context)
            status = _get(first, "/a")[0]  # the relay holds this connection
            second = _connect(capped, context).sock
            assert isinstance(second, socket.socket)
            second.settimeout(20)
            held = socket.create_connection(("127.0.0.1", capped.http_port), timeout=20)
            extra = socket.create_connection(("127.0.0.1", capped.http_port), timeout=5)
            refused = _closed_by_server(second), _closed_by_server(extra)
            assert _get(first, "/b")[0] == 200  # the held ones still work
            first.close()
            held.close()
            return (*refused, status)

        assert await asyncio.to_thread(over_the_cap) == (True, True, 200)
    finally:
        await capped.stop()


@pytest.mark.parametrize(
    ("headers", "upgrade"),
    [
        (b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade", True),
        (b"Upgrade: websocket", False),  # Node reads an ordinary request: so do we
        (b"Connection: upgrade", False),
    ],
)
def test_only_a_real_upgrade_request_ends_the_rewriting(headers: bytes, upgrade: bool) -> None:
    """After an upgrade the relay copies bytes as they come; a request Node does not
    upgrade must not switch it off, or the next request's forged X-Forwarded-For would
    reach the proxy."""
    head = RequestHead(b"GET /x HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n\r\n")
    assert head.upgrade is upgrade
    assert b"X-Forwarded-For: 127.0.0.2" in head.rewritten("127.0.0.2")
