"""The TLS front's relay, HTTP-aware just enough to say who the client is.

Requests (client -> proxy): each request head is read whole and passed on with
the ``X-Forwarded-*``/``Forwarded``/``X-Real-IP`` headers a client sent removed
and the front's own ``X-Forwarded-For: <client address>`` and
``X-Forwarded-Proto: https`` added; bodies are copied by their framing
(``Content-Length`` or chunked).  Framing that could be read two ways (both
headers, two lengths, another transfer coding, bare CR or LF, folded lines)
ends the connection: the proxy must never see a request the front did not
rewrite.  After an upgrade request (``Upgrade`` and ``Connection: upgrade``, as
Node's parser reads it: websockets) the rest is copied as it comes; the
configurable-http-proxy parses nothing after one either (a refused upgrade ends
its connection).  An ``Upgrade`` header without ``Connection: upgrade`` is an
ordinary request to Node, so the requests after it are rewritten as well.

Responses (proxy -> client) are copied as they come; the first one of a
connection gets ``Strict-Transport-Security`` after its status line (a browser
keeps the policy for the host from any response, so once per connection is
enough, and needs no response framing).
"""

from __future__ import annotations

import asyncio

#: request headers only the front may set
FORWARDED = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip", b"forwarded"}
)
CHUNK = 65536


class Refused(Exception):
    """A request the relay does not pass on: its connection ends."""


class RequestHead:
    """One request head, checked; :meth:`rewritten` is what the proxy gets."""

    def __init__(self, head: bytes) -> None:
        if b"\x00" in head:
            raise Refused("NUL in the request head")
        lines = head[:-4].split(b"\r\n")
        if any(b"\r" in line or b"\n" in line for line in lines):
            raise Refused("bare CR or LF in the request head")
        self.request_line = lines[0]
        parts = self.request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise Refused("not an HTTP/1.x request line")
        self.headers: list[bytes] = []
        self.length = 0
        self.chunked = self.upgrade = False
        seen_length = asks_upgrade = False
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                raise Refused("malformed header line")
            key, value = name.lower(), value.strip()
            if key in FORWARDED:
                continue
            if key == b"content-length":
                if seen_length or not value.isdigit():
                    raise Refused("bad or repeated Content-Length")
                seen_length, self.length = True, int(value)
            elif key == b"transfer-encoding":
                if self.chunked or value.lower() != b"chunked":
                    raise Refused("a transfer coding other than one 'chunked'")
                self.chunked = True
            elif key == b"upgrade":
                asks_upgrade = True
            elif key == b"connection":
                tokens = {token.strip().lower() for token in value.split(b",")}
                self.upgrade = self.upgrade or b"upgrade" in tokens
            self.headers.append(line)
        if self.chunked and seen_length:
            raise Refused("both Content-Length and Transfer-Encoding")
        self.upgrade = self.upgrade and asks_upgrade

    def rewritten(self, client_ip: str) -> bytes:
        ours = [b"X-Forwarded-For: " + client_ip.encode(), b"X-Forwarded-Proto: https"]
        return b"\r\n".join([self.request_line, *self.headers, *ours]) + b"\r\n\r\n"


async def relay_requests(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    client_ip: str,
    first_timeout: float,
) -> None:
    """Requests until the client ends (or a refusal, raised); the first head must
    arrive within ``first_timeout`` seconds (then :class:`TimeoutError`)."""
    timeout: float | None = first_timeout
    while True:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except asyncio.IncompleteReadError as err:
            if err.partial.strip():
                raise Refused("the connection ended inside a request head") from err
            return
        timeout = None  # later idleness: the proxy's keep-alive timeout
        head = RequestHead(raw)
        writer.write(head.rewritten(client_ip))
        if head.upgrade:
            await copy(reader, writer)
            return
        if head.chunked:
            await _copy_chunked(reader, writer)
        else:
            await _copy_exactly(reader, writer, head.length)
        await writer.drain()


async def relay_responses(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hsts: bytes
) -> None:
    """Everything from the proxy; ``hsts`` (a header line, or empty) after the first
    status line."""
    if hsts:
        try:
            status = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            return
        writer.write(status + hsts + b"\r\n")
    await copy(reader, writer)


async def copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(CHUNK):
        writer.write(chunk)
        await writer.drain()


async def _copy_exactly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        chunk = await reader.read(min(n, CHUNK))
        if not chunk:
            raise Refused("the connection ended inside a request body")
        writer.write(chunk)
        await writer.drain()
        n -= len(chunk)


async def _copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        line = await reader.readuntil(b"\r\n")
        size = line[:-2].split(b";", 1)[0].strip()
        if not size or size.strip(b"0123456789abcdefABCDEF") or len(size) > 16:
            raise Refused("bad chunk size")
        writer.write(line)
        if int(size, 16) == 0:
            break
        await _copy_exactly(reader, writer, int(size, 16))
        if await reader.readexactly(2) != b"\r\n":
            raise Refused("a chunk without its CRLF")
        writer.write(b"\r\n")
    while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
        if b"\n" in trailer[:-2] or b"\r" in trailer[:-2]:
            raise Refused("bare CR or LF in a trailer")
        writer.write(trailer)
    writer.write(b"\r\n")
