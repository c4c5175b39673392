"""HTTPS against a real ACME server on loopback (Debian's pebble, tests/pebble.py).

The front's own tests relay to a test HTTP server on loopback standing in for the
proxy; the last test runs the real ``binderbox serve`` (proxy, hub, web app) behind it.
"""

from __future__ import annotations

import asyncio
import http.client
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
from loopback import LoopbackServer
from serve_helpers import running_serve

from binderbox.hub.children import free_port
from binderbox.tls import HTTPS, CertError

DOMAIN = "binder.example.org"


class _Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"proxy says hello at {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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


def _connect(https: HTTPS, context: ssl.SSLContext) -> http.client.HTTPSConnection:
    """An HTTPS connection to the front on loopback, verified for DOMAIN."""
    conn = http.client.HTTPSConnection(DOMAIN, https.https_port, context=context, timeout=10)
    raw = socket.create_connection(("127.0.0.1", https.https_port), timeout=10)
    conn.sock = context.wrap_socket(raw, server_hostname=DOMAIN)
    return conn


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, str, dict[str, str]]:
    conn.request("GET", path)
    answer = conn.getresponse()
    return answer.status, answer.read().decode(), dict(answer.getheaders())


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

        def plain() -> tuple[int, str, dict[str, str]]:
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
    """``binderbox serve --domain``: the real service (proxy, hub, web app) behind the front."""
    https_port = free_port()
    config = "\n".join(
        [
            f"c.HTTPS.domain = {DOMAIN!r}",
            f"c.HTTPS.acme_directory = {pebble.directory!r}",
            f"c.HTTPS.acme_ca_bundle = {str(pebble.ca_bundle)!r}",
            "c.HTTPS.ip = '127.0.0.1'",
            f"c.HTTPS.https_port = {https_port}",
            f"c.HTTPS.http_port = {http_port}",
        ]
    )
    with running_serve(tmp_path, extra_config=config) as serve:
        assert serve.url == f"https://{DOMAIN}:{https_port}/"
        context = _client_context(pebble)
        conn = http.client.HTTPSConnection(DOMAIN, https_port, context=context, timeout=30)
        raw = socket.create_connection(("127.0.0.1", https_port), timeout=30)
        conn.sock = context.wrap_socket(raw, server_hostname=DOMAIN)
        status, body, _ = _get(conn, "/")
        assert status == 200 and "<html" in body.lower()
        status, _, _ = _get(conn, "/hub/api/")  # the hub, through the proxy
        assert status == 200
        conn.close()
        plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        status, _, headers = _get(plain, "/v2/gh/org/repo/HEAD")
        assert status == 301
        assert headers["Location"] == f"https://{DOMAIN}:{https_port}/v2/gh/org/repo/HEAD"


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
