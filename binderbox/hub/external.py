"""A JupyterHub and proxy binderbox uses but does not run (``c.ServeCommand.hub = "external"``).

On Kubernetes, zero-to-jupyterhub runs the hub and configurable-http-proxy;
binderbox is one of the hub's services (the Helm chart, ``helm/binderbox``).  Then
``binderbox serve`` starts neither: :class:`ExternalHub` stands where
:class:`~binderbox.hub.process.ManagedHub` stands on one machine.

* its web app listens on :attr:`ExternalHub.ip`:`port` (the pod's port);
* sessions are asked of the hub at :attr:`ExternalHub.api_url` with binderbox's
  service token, ``$BINDERBOX_HUB_API_TOKEN`` (the hub's ``hub.services.binderbox``);
* the proxy (its REST API at :attr:`ExternalHub.proxy_api_url`, token
  ``$CONFIGPROXY_AUTH_TOKEN``) routes ``/`` to :attr:`ExternalHub.route_target`
  (binderbox's Kubernetes Service); the hub keeps ``/hub/`` (``hub_routespec``)
  and its sessions' routes.  binderbox adds its route at start, and looks at the
  routing table every :attr:`route_interval` seconds: a proxy that restarted (its
  table is in memory) gets the route again.  The route carries no ``jupyterhub``
  marker, so the hub's own route check leaves it alone;
* sessions are the hub's: stopping binderbox (a new pod on an upgrade) stops none.

What binderbox does not do here: start, restart or configure the hub, the proxy
or the idle culler (zero-to-jupyterhub's ``cull`` settings); /health reports
whether the hub's API and the proxy's answer.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any

from traitlets import Float, Instance, Int, Unicode, default
from traitlets.config import LoggingConfigurable

from ..sessions.hubclient import HubAPIError, HubClient
from .logins import Logins
from .process import HubError
from .proxy import ProxyRoutes

#: the variables holding the two tokens (the Helm chart sets them from the hub's Secret)
HUB_TOKEN_ENV = "BINDERBOX_HUB_API_TOKEN"
PROXY_TOKEN_ENV = "CONFIGPROXY_AUTH_TOKEN"


class ExternalHub(ProxyRoutes, LoggingConfigurable):
    """The hub and proxy of the cluster.  See the module docstring."""

    api_url = Unicode(
        help="The hub's REST API, e.g. http://hub:8081/hub/api/ (zero-to-jupyterhub's hub)."
    ).tag(config=True)
    proxy_api_url = Unicode(help="The proxy's REST API root, e.g. http://proxy-api:8001/api/.").tag(
        config=True
    )
    route_target = Unicode(
        help="Where the proxy sends '/' (binderbox's web app as the proxy reaches it), "
        "e.g. http://binderbox:8585."
    ).tag(config=True)
    ip = Unicode("0.0.0.0", help="Address binderbox's web app listens on.").tag(config=True)
    port = Int(8585, help="Port binderbox's web app listens on.").tag(config=True)
    public_url = Unicode(
        "", help="The service's public URL, for the log line (default: ip:port)."
    ).tag(config=True)
    route_interval = Float(
        10.0,
        help="Seconds between looks at the proxy's routing table (a restarted proxy "
        "gets binderbox's route again within them).",
    ).tag(config=True)
    start_timeout = Float(
        300.0, help="Seconds to wait at start for the hub's and the proxy's APIs."
    ).tag(config=True)
    named_server_limit = Int(
        5,
        help="The hub's named_server_limit_per_user (binderbox refuses a logged-in "
        "user's launch past it with a plain message; 0 = no limit).",
    ).tag(config=True)
    cull_timeout = Int(
        3600, help="The hub's idle-culling timeout, in seconds (for messages only)."
    ).tag(config=True)
    logins = Instance(Logins, help="Who logs in to the hub (c.Logins.*).")

    #: binderbox's own route goes to route_target (ProxyRoutes' contract)
    web_port = 0

    @default("logins")
    def _default_logins(self) -> Logins:
        return Logins(parent=self)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.children: dict[str, Any] = {}
        self._answers = {"hub": False, "proxy": False}
        self._cookie_secret = os.environ.get("BINDERBOX_COOKIE_SECRET") or secrets.token_hex(32)

    # -- what binderbox serve reads --------------------------------------------

    @property
    def hub_api_url(self) -> str:
        return self.api_url if self.api_url.endswith("/") else self.api_url + "/"

    @property
    def api_token(self) -> str:
        return _token(HUB_TOKEN_ENV)

    @property
    def proxy_token(self) -> str:
        return _token(PROXY_TOKEN_ENV)

    @property
    def _proxy_api(self) -> HubClient:
        """The proxy's REST API (``proxy_api_url`` given with or without ``/api``)."""
        url = self.proxy_api_url.rstrip("/")
        url = url if url.endswith("/api") else url + "/api"
        return HubClient(url + "/", self.proxy_token, timeout=5)

    @property
    def web_cookie_secret(self) -> str:
        """The web app's cookie secret ($BINDERBOX_COOKIE_SECRET, else one per start)."""
        return self._cookie_secret

    @property
    def url(self) -> str:
        """Where the service says it runs."""
        return self.public_url or f"http://{self.ip}:{self.port}/"

    def status(self) -> dict[str, bool]:
        """Whether the hub's API and the proxy's answered at the last look."""
        return dict(self._answers)

    def given_up(self) -> dict[str, str]:
        return {}  # nothing is started here, so nothing is given up

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Wait for the hub's API and the proxy's, then add binderbox's route."""
        for name in ("api_url", "proxy_api_url", "route_target"):
            if not getattr(self, name):
                raise HubError(f"ExternalHub.{name} is not set.")
        self.api_token, self.proxy_token  # noqa: B018 - a missing token: said now
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while not all(self._answers.values()):
            await self.check()
            if loop.time() > deadline:
                down = " and ".join(name for name, ok in self._answers.items() if not ok)
                raise HubError(
                    f"The cluster's {down} did not answer in {self.start_timeout:g} s.",
                    hint=f"Check ExternalHub.api_url ({self.api_url}) and proxy_api_url "
                    f"({self.proxy_api_url}), and the tokens.",
                )
            if not all(self._answers.values()):
                await asyncio.sleep(1.0)
        self.log.info("using the hub at %s; / routed to %s", self.api_url, self.route_target)

    async def check(self) -> None:
        """One look: does the hub answer, does the proxy route ``/`` to us (added if not)."""
        try:
            await HubClient(self.hub_api_url, self.api_token, timeout=5).info()
            self._answers["hub"] = True
        except HubAPIError as err:
            self._answers["hub"] = False
            self.log.warning("the hub's API does not answer: %s", err)
        try:
            route = (await self.routes()).get("/")
            if route is None or route.get("target") != self.route_target:
                await self.add_route("/", self.route_target)
                self.log.info("added the proxy route / -> %s", self.route_target)
            self._answers["proxy"] = True
        except HubAPIError as err:
            self._answers["proxy"] = False
            self.log.warning("the proxy's API does not answer: %s", err)

    async def watch(self) -> None:
        """Forever: :meth:`check` every :attr:`route_interval` seconds."""
        while True:
            await asyncio.sleep(self.route_interval)
            await self.check()

    async def stop(self) -> None:
        """Nothing to stop: the hub, the proxy and the sessions are the cluster's."""


def _token(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise HubError(
            f"${name} is not set.",
            hint="The Helm chart sets it from zero-to-jupyterhub's Secret.",
        )
    return value
