"""A test's HTTP server on a loopback address, serving from a thread of the test process."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from socketserver import BaseRequestHandler


class LoopbackServer:
    """``handler`` served on a free port of ``host`` from a daemon thread, each request
    in its own thread, until :meth:`close`.  Subclasses add what they serve."""

    def __init__(self, handler: Callable[..., BaseRequestHandler], host: str = "127.0.0.1") -> None:
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """``http://host:port`` (no trailing slash)."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
