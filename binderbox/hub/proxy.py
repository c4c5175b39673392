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
from typing import TYPE_CHECKING, Any

from ..errors import BinderboxError
from ..sessions.hubclient import HubAPIError, HubClient

#: the ES module loaded into the proxy first
GUARD = Path(__file__).with_name("proxy_guard.mjs")


def guarded_node_options(environ: Mapping[str, str]) -> str:
    """``NODE_OPTIONS`` for the proxy: the operator's own (from ``environ``), plus
    the import of :data:`GUARD`."""
    own = environ.get("NODE_OPTIONS", "").strip()
    guard = f"--import={GUARD.resolve().as_uri()}"
    return f"{own} {guard}" if own else guard


class ProxyError(BinderboxError):
    """The proxy does not do what binderbox asks."""

    reason = "hub"


class ProxyRoutes:
    """The proxy routes :class:`~binderbox.hub.process.ManagedHub` manages: binderbox's
    own route (``/`` -> the web app) and the hub's, after a proxy restart."""

    web_port: int
    log: Any
    #: the managed children by name (``hub`` among them), each with ``running``
    children: dict[str, Any]

    if TYPE_CHECKING:  # ManagedHub's

        @property
        def proxy_api_url(self) -> str: ...
        @property
        def proxy_token(self) -> str: ...
        @property
        def hub_api_url(self) -> str: ...
        @property
        def api_token(self) -> str: ...

    async def _add_web_route(self) -> None:
        """Route ``/`` to the web app (when ``web_port`` is set)."""
        if not self.web_port:
            return
        try:
            await self.add_route("/", f"http://127.0.0.1:{self.web_port}")
        except HubAPIError as err:
            raise ProxyError(
                "The proxy does not accept routes.", log_message=f"adding the route / failed: {err}"
            ) from err

    async def _sync_hub_routes(self) -> None:
        """Ask a running hub to add its routes (hub, sessions) to the proxy now."""
        if not self.children["hub"].running:
            return  # the hub adds them when it starts
        try:
            await HubClient(self.hub_api_url, self.api_token).request("POST", "proxy")
        except HubAPIError as err:
            self.log.warning(
                "the hub did not sync its routes to the new proxy (%s); it will at its "
                "next route check",
                err,
            )

    @property
    def _proxy_api(self) -> HubClient:
        """The proxy's REST API (token auth and JSON, like the hub's)."""
        return HubClient(self.proxy_api_url, self.proxy_token, timeout=5)

    async def add_route(self, routespec: str, target: str) -> None:
        """Route ``routespec`` (e.g. ``/``) to ``target`` on the proxy.

        The route carries no ``jupyterhub`` data marker, so the hub's route
        check leaves it alone.
        """
        await self._proxy_api.request("POST", "routes" + routespec, {"target": target})

    async def routes(self) -> dict[str, Any]:
        """The proxy's routing table (routespec -> {target, data...})."""
        result: dict[str, Any] = await self._proxy_api.request("GET", "routes")
        return result
