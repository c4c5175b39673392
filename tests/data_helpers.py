"""Helpers for the dataset tests: a real HTTP server on loopback, archives, an env.

:class:`FileServer` is a threaded ``http.server`` whose routes are set by the
test (bytes, recorded JSON with ``{base}`` replaced by the server's URL, or a
function of the query), with failure modes real servers show: wrong status,
a body shorter than its ``Content-Length``, a connection reset mid-body.  It
counts requests per path.

:func:`code_env` gives a bare virtualenv built at ``/srv/env`` by the real
builder (tests/envs.py), cached across runs, for the code-source tests.
"""

from __future__ import annotations

import hashlib
import io
import socket
import struct
import tarfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from envs import built_env
from loopback import LoopbackServer
from testcache import CACHE as TEST_CACHE

RECORDED = Path(__file__).parent / "data" / "recorded"
CACHE = TEST_CACHE

#: a route function: query -> (status, headers, body)
RouteFn = Callable[[dict[str, list[str]]], tuple[int, dict[str, str], bytes]]


@dataclass
class Route:
    """What the server answers for one path."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    #: "" | "truncate" (announce more than sent) | "reset" (RST mid-body) |
    #: "stall" (half the body, then silence for 3 s)
    failure: str = ""
    fn: RouteFn | None = None


class FileServer:
    """A local HTTP server in a thread on ``host`` (a loopback address); see the
    module docstring."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                with server._lock:
                    server.hits[parts.path] += 1
                    route = server.routes.get(parts.path)
                if route is None:
                    route = Route(b"not found", status=404)
                if route.fn is not None:
                    status, headers, body = route.fn(parse_qs(parts.query))
                    route = Route(body, status, headers, route.failure)
                self._answer(route)

            def _answer(self, route: Route) -> None:
                body = route.body
                self.send_response(route.status)
                length = len(body) + (1000 if route.failure == "truncate" else 0)
                headers = {"Content-Type": "application/octet-stream", **route.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if route.failure == "reset":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    linger = struct.pack("ii", 1, 0)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    self.connection.close()
                    self.close_connection = True
                    return
                if route.failure == "stall":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    time.sleep(3)
                    self.close_connection = True
                    return
                self.wfile.write(body)
                if route.failure == "truncate":
                    self.close_connection = True

        self._server = LoopbackServer(Handler, host)
        self.httpd = self._server.httpd
        self.base = self._server.url

    def url(self, path: str) -> str:
        """The full URL of ``path``."""
        return self.base + path

    def add(self, path: str, body: bytes = b"", **kwargs: object) -> str:
        """Serve ``body`` at ``path``; returns its URL."""
        self.routes[path] = Route(body, **kwargs)  # type: ignore[arg-type]
        return self.url(path)

    def add_recorded(self, path: str, name: str, content_type: str = "application/json") -> str:
        """Serve a recorded API answer (``{base}`` -> this server's URL)."""
        text = (RECORDED / name).read_text().replace("{base}", self.base)
        return self.add(path, text.encode(), headers={"Content-Type": content_type})

    def close(self) -> None:
        """Stop serving."""
        self._server.close()


def tar_bytes(files: dict[str, bytes], compression: str = "gz", **links: str) -> bytes:
    """A tar archive of ``files``; ``links`` adds symbolic links name -> target."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}" if compression else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def tar_members(*members: tuple[str, bytes, str]) -> bytes:
    """A .tar.gz of ``(name, type, data or link target)`` members, in this order.

    ``type`` is a :mod:`tarfile` type (``REGTYPE``, ``SYMTYPE``, ``CHRTYPE``...).
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value.encode()))
            else:
                info.linkname = value
                tar.addfile(info)
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A zip archive of ``files`` (names are written exactly as given)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def md5(data: bytes) -> str:
    """Hex MD5 of ``data``."""
    return hashlib.md5(data).hexdigest()


def code_env() -> Path:
    """The host path of a bare virtualenv built at /srv/env (see the module docstring)."""
    return built_env(session=False)
