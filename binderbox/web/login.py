"""The web app as a hub OAuth client: who is logged in, and the routes of a login.

When the operator turns logins on (``c.Logins.mode``), binderbox's service in
the hub is an OAuth client (``service-binderbox``, as BinderHub's is), and
the web app knows the visitor from its own login cookie:

``/login?next=<path>``
    starts the hub's OAuth flow (the hub logs the visitor in with the
    operator's authenticator first), then goes to ``next`` (a path of this
    site; default the home page)
``/oauth_callback``
    the end of the flow: sets the web app's cookie (JupyterHub's
    ``HubOAuthCallbackHandler``)
``/logout``
    clears that cookie, then logs out of the hub (``<base_url>hub/logout``)

:func:`make_hub_auth` is the :class:`~jupyterhub.services.auth.HubOAuth` of the
web app; :meth:`BaseHandler.visitor <binderbox.web.base.BaseHandler.visitor>`
reads it.
"""

from __future__ import annotations

from typing import Any

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from tornado.web import authenticated

from ..hub.config import OAUTH_CLIENT_ID, SERVICE_NAME
from .base import BaseHandler, Site


def make_hub_auth(base_url: str, hub_api_url: str, api_token: str) -> HubOAuth:
    """The web app's OAuth client of the hub (``base_url`` normalised, ``/``-ended)."""
    return HubOAuth(
        api_token=api_token,
        api_url=hub_api_url.rstrip("/"),
        base_url=base_url,
        hub_prefix=f"{base_url}hub/",
        hub_host="",
        oauth_client_id=OAUTH_CLIENT_ID,
        oauth_redirect_uri=f"{base_url}oauth_callback",
        access_scopes={f"access:services!service={SERVICE_NAME}"},
    )


def local_next(handler: BaseHandler) -> str:
    """The ``next`` argument when it is a path of this site, else the home page."""
    target = handler.get_argument("next", "")
    base = handler.base_url
    if target.startswith(base) and not target.startswith("//") and "\\" not in target:
        return target
    return base


class LoginHandler(HubOAuthenticated, BaseHandler):  # type: ignore[misc]
    """``GET /login``: to the hub's login (OAuth), then back to ``next``."""

    def initialize(self, site: Site) -> None:
        super().initialize(site)
        self.hub_auth = site.hub_auth

    @authenticated  # type: ignore[untyped-decorator,unused-ignore]
    def get(self) -> None:
        self.redirect(local_next(self))


class OAuthCallbackHandler(HubOAuthCallbackHandler, BaseHandler):  # type: ignore[misc]
    """``GET /oauth_callback``: the hub's answer; sets the web app's login cookie."""

    def initialize(self, site: Site) -> None:
        BaseHandler.initialize(self, site)
        self.hub_auth = site.hub_auth


class LogoutHandler(BaseHandler):
    """``GET /logout``: forget the login here, then log out of the hub too."""

    def get(self, *args: Any) -> None:
        hub_auth = self.site.hub_auth
        if hub_auth is not None:
            hub_auth.clear_cookie(self)
        self.redirect(f"{self.base_url}hub/logout")
