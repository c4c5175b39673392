"""Malformed HTTP requests, made deterministically, and a bounded raw client.

:func:`malformed_requests` gives a fixed corpus of known-bad cases (bad
percent-escapes, overlong and invalid UTF-8, NUL and CRLF, over-long
segments, odd methods and headers) on every route prefix of the service,
followed by seeded random ones built from the same pieces; the same seed
gives the same requests.  :func:`send_all` sends them over raw sockets (so
nothing normalises them on the way), a few at a time, each bounded in time,
and returns the status of each; :func:`stack_traces` finds Python
tracebacks and Node stack frames in log text.

Nothing sent here starts a launch: ``/build`` is never asked for an event
stream (without ``Accept: text/event-stream`` it answers 400 at once), and
redirects are not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from serve_helpers import read_chunks

#: every route of the web app and the hub, some with a first segment already
PREFIXES = (
    "/",
    "/v2/",
    "/v2/gh/",
    "/v2/gh/o/",
    "/v2/git/",
    "/v2/zenodo/",
    "/v2/nope/",
    "/build/gh/",
    "/build/gh/o/r/",
    "/build/git/",
    "/repo/",
    "/repo/o/",
    "/repo/o/r/",
    "/user/",
    "/user/ghost/",
    "/hub/",
    "/hub/api/",
    "/hub/api/users/",
    "/hub/login",
    "/hub/error/",
    "/hub/static/",
    "/static/",
    "/badge.svg",
    "/health",
    "/versions",
    "/metrics",
    "/about",
    "/api/repoproviders",
)

#: pieces of a path segment that broke (or could break) a decoder
BAD_PIECES = (
    "%",
    "%z",
    "%zz",
    "%%",
    "%%41",
    "%4",
    "%ff",
    "%FF%FE",
    "%80",
    "%C0%AE",
    "%C0%AF",
    "%C0%80",
    "%E0%A4%A",
    "%E0%80%AF",
    "%ED%A0%80",
    "%F4%90%80%80",
    "%F8%88%80%80%80",
    "%u0041",
    "%00",
    "%0d%0a",
    "%0D%0ASet-Cookie:%20x=y",
    "%0a",
    "%0d",
    "%09",
    "%7f",
    "%1b",
    "%2e%2e",
    "%2e%2e%2f",
    "%2f",
    "%5c",
    "%25",
    "%252e",
    "%3f",
    "%23",
    "%3c%73%63%72%69%70%74%3e",
    "..",
    ".",
    "//",
    "\\",
    "+",
    ";",
    "@",
    ":",
    "~",
    "'",
    '"',
    "<script>",
    "\x80",
    "\xff",
    "\xc3\xa9",
)

#: query strings, malformed or with bad values for the parameters routes read
QUERIES = (
    "?",
    "?&",
    "?=",
    "?==",
    "?&&=&",
    "?%",
    "?%zz",
    "?a=%",
    "?a=%zz",
    "?a%zz=b",
    "?a=%ff%fe",
    "?urlpath=%0d%0a",
    "?urlpath=%zz",
    "?labpath=%00",
    "?filepath=%C0%AE%C0%AE/",
    "?build_only=%ff",
    "?build_only=true",
    "?build_token=%zz",
    "?build_token=99999999999999999999.ab",
    "?token=%ff",
    "?next=%0d%0ahttp://example.invalid/",
    "?url=%zz",
    "?a=1&a=2&a=%",
    "?;",
    "?" + "a=" + "x" * 5000,
)

METHODS = ("GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")
ODD_METHODS = ("FOO", "get", "PROPFIND", "CONNECT", "BREW")

#: extra header lines (the proxy adds its own X-Forwarded-*; these come first)
HEADERS = (
    "",
    "Accept: text/html\r\n",
    "Accept: application/json\r\n",
    "Accept: */*;q=%zz\r\n",
    'Cookie: =; ;;%zz=%ff; jupyterhub-session-id="%0d"\r\n',
    "Cookie: jupyterhub-hub-login=%ff%fe; _xsrf=%zz\r\n",
    "X-Forwarded-Proto: javascript\r\n",
    "X-Forwarded-For: <script>, %zz\r\n",
    "Authorization: token %ff\r\n",
    "Authorization: Bearer\r\n",
    "Origin: null\r\n",
    "Origin: \xff\r\n",
    "Access-Control-Request-Headers: \xff\xfe, x\r\n",
    "Access-Control-Request-Headers: a\x01b\r\n",
    "Content-Type: application/json\r\n",
    "X-Forwarded-Proto: \x7f\r\n",
    "Host: a\x00b\r\n",
    "Transfer-Encoding: chunked\r\n",
    "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    "X: " + "y" * 70000 + "\r\n",
)

#: the protocol versions sent (the first with a Host header, the others without)
VERSIONS = ("HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTP/9")


@dataclass(frozen=True)
class Malformed:
    """One request: method, request target (path and query, as sent), extra headers,
    protocol version (a ``Host`` header goes only with HTTP/1.1)."""

    method: str
    target: str
    headers: str = ""
    version: str = "HTTP/1.1"

    def encode(self, host: str) -> bytes:
        host_line = f"Host: {host}\r\n" if self.version == "HTTP/1.1" else ""
        head = (
            f"{self.method} {self.target} {self.version}\r\n{host_line}{self.headers}"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        return head.encode("latin-1")


def _corpus() -> Iterator[Malformed]:
    """The fixed cases: each bad piece, a few over-long segments and every query
    string on each prefix; the odd methods and headers on a few."""
    long_segments = ("a" * 256, "a" * 4096, "%ff" * 1000, "é" * 2000, "/".join(["x"] * 2000))
    for i, prefix in enumerate(PREFIXES):
        for j, piece in enumerate(BAD_PIECES):  # alone, or inside two segments
            inside = f"{prefix}x{piece}/r{piece}/ref"
            yield Malformed("GET", inside if (i + j) % 2 else f"{prefix}{piece}")
        for segment in long_segments:
            yield Malformed("GET", f"{prefix}{segment}")
        for query in QUERIES:
            yield Malformed("GET", f"{prefix}o/r/HEAD{query}")
    for prefix in ("/", "/v2/gh/o/r/HEAD", "/repo/o/r", "/hub/login", "/user/ghost/api"):
        for method in METHODS + ODD_METHODS:
            yield Malformed(method, f"{prefix}%zz")
        for headers in HEADERS:
            yield Malformed("GET", prefix, headers)
            yield Malformed("OPTIONS", prefix, headers)  # CORS preflights echo some
        for version in VERSIONS:
            yield Malformed("GET", prefix, version=version)
    for target in ("*", "x", "http://example.invalid/", "//hub/", "/%zz#%zz", "/a?b#c"):
        yield Malformed("GET", target)


def _random_segment(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 6)):
        roll = rng.random()
        if roll < 0.4:
            parts.append(rng.choice(BAD_PIECES))
        elif roll < 0.6:
            parts.append(f"%{rng.randrange(256):02X}")
        elif roll < 0.7:
            parts.append(chr(rng.randrange(0x80, 0x100)))
        else:
            alphabet = "abcXYZ019-._~!$&'()*+,;=:@"
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))))
    return "".join(parts)


def _random(rng: random.Random) -> Malformed:
    segments = "/".join(_random_segment(rng) for _ in range(rng.randint(1, 4)))
    target = rng.choice(PREFIXES) + segments
    if rng.random() < 0.4:
        target += rng.choice(QUERIES) if rng.random() < 0.5 else "?" + _random_segment(rng)
    method = rng.choice(METHODS) if rng.random() < 0.9 else rng.choice(ODD_METHODS)
    headers = rng.choice(HEADERS) if rng.random() < 0.2 else ""
    return Malformed(method, target, headers)


def malformed_requests(count: int, seed: int) -> list[Malformed]:
    """The fixed corpus, then random requests from ``seed`` up to ``count`` in all."""
    rng = random.Random(seed)
    requests = list(_corpus())
    while len(requests) < count:
        requests.append(_random(rng))
    return requests


# -- the client ------------------------------------------------------------------------

#: what :func:`send_one` reports for a connection closed without a status line
NO_ANSWER = 0
#: header blocks over this many bytes are over both servers' limits (Node 16 KiB,
#: Tornado 64 KiB)
HEADER_LIMIT = 65536


def may_go_unanswered(request: Malformed) -> bool:
    """True for the requests a server may drop without a status line: ``CONNECT``
    (the proxy has no tunnel to offer), a websocket upgrade that is not a ``GET``
    (the proxy's websocket path takes only those), and header blocks over
    :data:`HEADER_LIMIT` (closed while the client is still sending)."""
    upgrade = "Upgrade: websocket" in request.headers and request.method != "GET"
    return request.method == "CONNECT" or upgrade or len(request.headers) > HEADER_LIMIT


#: seconds one request may take, answer and all (then TimeoutError)
REQUEST_TIMEOUT = 20.0


async def send_one(host: str, port: int, request: Malformed) -> int:
    """Send ``request`` and read the whole answer; its status, or :data:`NO_ANSWER`
    if the server closed the connection without one.  Raises TimeoutError after
    :data:`REQUEST_TIMEOUT` seconds."""
    async with asyncio.timeout(REQUEST_TIMEOUT):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request.encode(f"{host}:{port}"))
            await writer.drain()
            parts = (await reader.readline()).split()
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                return NO_ANSWER
            status = int(parts[1])
            with contextlib.suppress(asyncio.IncompleteReadError):
                await _read_rest(reader, status, request.method)
            return status
        except ConnectionError:
            return NO_ANSWER
        finally:
            writer.close()


async def _read_rest(reader: asyncio.StreamReader, status: int, method: str) -> None:
    """The headers and body of an answer (a server may keep the connection open
    after it, whatever the request's ``Connection: close``)."""
    headers: dict[str, str] = {}
    while (line := await reader.readline()).strip():
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if method == "HEAD" or status < 200 or status in (204, 304):
        return
    length = headers.get("content-length", "")
    if length.isdigit() and "transfer-encoding" not in headers:
        await reader.readexactly(int(length))
        return
    async for _ in read_chunks(reader, "chunked" in headers.get("transfer-encoding", "")):
        pass


async def send_all(
    host: str, port: int, requests: Iterable[Malformed], concurrency: int = 8
) -> list[tuple[Malformed, int]]:
    """Every request with its status, ``concurrency`` at a time."""
    limit = asyncio.Semaphore(concurrency)

    async def bounded(request: Malformed) -> tuple[Malformed, int]:
        async with limit:
            return request, await send_one(host, port, request)

    return list(await asyncio.gather(*(bounded(r) for r in requests)))


# -- the logs --------------------------------------------------------------------------

#: a Python traceback, or a frame of a Node stack trace ("    at f (file.js:1:2)")
_STACK = re.compile(r"^Traceback \(most recent call last\)|^\s+at \S.*:\d+:\d+\)?$", re.M)


def stack_traces(text: str) -> list[str]:
    """The lines of ``text`` that belong to a stack trace (Python or Node)."""
    return [match.group(0) for match in _STACK.finditer(text)]
