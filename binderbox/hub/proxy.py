"""The environment the Node configurable-http-proxy starts with: its guard.

The proxy routes each request on its decoded path
(``decodeURIComponent`` in ``ConfigurableProxy.targetForReq``); a path
with a bad percent-escape (``/%zz``, ``/x%``, ``/%C0%AE``) makes it throw,
and the proxy answers **500** and logs a stack trace, once per request: the
newest release (5.3.0) still does, and ``--error-target``/``--error-path``
only choose the body of that 500, not its status.  A path that decodes to
a NUL (``%00``) is routed, and JupyterHub's static files answer it with 500
and a traceback.  So :data:`GUARD` (``proxy_guard.mjs``, beside this file)
is loaded into the proxy before its own code through
``NODE_OPTIONS=--import``: it answers both kinds of path with the proxy's
own error handling and code **400** (the hub's error page, through
``--error-target``), one log line and no stack, and hands every other
request to the proxy unchanged.  The proxy's command
line stays the proxy's.  A proxy whose code the guard does not recognise
does not start (see its log), rather than running unguarded; so does a Node
without ``--import`` (before 20.6; the proxy itself needs 20).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

#: the ES module loaded into the proxy first
GUARD = Path(__file__).with_name("proxy_guard.mjs")


def guarded_node_options(environ: Mapping[str, str]) -> str:
    """``NODE_OPTIONS`` for the proxy: the operator's own (from ``environ``), plus
    the import of :data:`GUARD`."""
    own = environ.get("NODE_OPTIONS", "").strip()
    guard = f"--import={GUARD.resolve().as_uri()}"
    return f"{own} {guard}" if own else guard
