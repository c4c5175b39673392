"""The web application of ``binderbox serve``: configuration and routes.

:class:`WebApp` holds every setting of the web layer (``c.WebApp.*``);
:func:`make_app` builds the Tornado application from it and the
collaborators it serves (the launch pipeline, the provider classes).  The
app owns the root URL behind the configurable-http-proxy; JupyterHub lives
at ``<base_url>hub/`` and running sessions at ``<base_url>user/<name>/``
(the proxy sends requests for sessions that are *not* running here).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jinja2
from tornado.web import Application, url
from traitlets import Bool, Bytes, Float, Integer, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from ..hub.config import normalise_base_url
from . import api, login, pages
from .base import (
    SERVER_NAME,
    STATIC,
    TEMPLATES,
    LaunchPipelineProtocol,
    SessionIndex,
    Site,
    VisitorSessionsProtocol,
    log_request,
)
from .menu import OptionsMenu
from .ratelimit import LaunchTokens, RateLimiter

if TYPE_CHECKING:
    from jupyterhub.services.auth import HubOAuth


class WebApp(LoggingConfigurable):
    """Settings of the web layer (pages, the build API, badges)."""

    base_url = Unicode(
        "/",
        help="URL prefix of every route, e.g. ``/binder/``; always starts and ends with ``/``.",
    ).tag(config=True)
    public_url = Unicode(
        "",
        help="""The public base URL of the service (``https://binder.example.org/``), used in
        launch links, badges and as ``binder_launch_host``.  Empty: derived from each
        request's scheme and Host header (plus ``base_url``).""",
    ).tag(config=True)
    banner_html = Unicode(
        "", help="Trusted HTML shown in a banner at the top of every page (announcements)."
    ).tag(config=True)
    about_html = Unicode(
        "", help="Trusted HTML shown on the about page, after ``about_text``."
    ).tag(config=True)
    about_text = Unicode(
        "", help="Plain text (escaped) shown on the home and about pages: who runs this service."
    ).tag(config=True)
    extra_header_html = Unicode(
        "", help="Trusted HTML inserted at the end of each page's ``<head>`` (analytics, styles)."
    ).tag(config=True)
    extra_footer_html = Unicode(
        "", help="Trusted HTML inserted at the end of each page's footer."
    ).tag(config=True)
    logo_url = Unicode(
        "", help="URL of the logo shown in the page header.  Empty: the built-in logo."
    ).tag(config=True)
    site_name = Unicode(
        "binderbox", help="The name of the service shown in page titles and the header."
    ).tag(config=True)
    cors_allow_origin = Unicode(
        "",
        help="""Value of ``Access-Control-Allow-Origin`` on the API (``/build``, ``/health``,
        ``/versions``, ``/api/*``, badges); OPTIONS preflights are answered too.  ``*``
        lets any site (thebe, Jupyter Book buttons) use the API.  Empty: no CORS header.""",
    ).tag(config=True)
    rate_limit = Integer(
        0,
        help="""Requests to ``/build`` allowed per client address per ``rate_limit_period``,
        for requests without a launch token (the launch page gives one).  Beyond it the
        answer is HTTP 429.  0: no limit.""",
    ).tag(config=True)
    rate_limit_period = Integer(
        3600, help="The window of ``rate_limit`` in seconds (a fixed window per address)."
    ).tag(config=True)
    launch_token_seconds = Integer(
        3600,
        help="How long a launch token issued by a launch page lets ``/build`` skip the rate limit.",
    ).tag(config=True)
    launch_token_secret = Bytes(
        help="""Key that signs launch tokens.  Default: random per process (tokens then do not
        survive a restart, which only costs a rate-limit check).""",
    ).tag(config=True)
    api_only = Bool(
        False,
        help="""Serve only the API, badges and the ended-session page: no home page, no launch
        page, no legacy redirect (BinderHub's API-only mode).""",
    ).tag(config=True)
    sse_keepalive_interval = Float(
        25.0, help="Seconds between ``:keepalive`` comments on event streams."
    ).tag(config=True)
    ready_linger_seconds = Float(
        0.0,
        help="""Seconds the event stream stays open after ``ready`` (BinderHub keeps it a
        minute).  0: it ends at once; an EventSource that then reconnects sends the final
        event's id back and is answered 204 No Content, which stops it.""",
    ).tag(config=True)
    trust_xheaders = Bool(
        True,
        help="""Take the client address from ``X-Forwarded-For`` and the scheme from
        ``X-Forwarded-Proto`` (the configurable-http-proxy sets them).  Turn off when the
        app is reachable without the proxy.""",
    ).tag(config=True)
    forwarded_hops = Integer(
        1,
        help="""How many proxies before the app append to ``X-Forwarded-For``: the client's
        address is that many entries from its end (1: the configurable-http-proxy alone;
        ``serve`` sets 2 behind its TLS front, which sends only its own entry).""",
    ).tag(config=True)
    recent_sessions = Integer(
        10000,
        help="""How many launched sessions to remember (name -> repository) so that the page
        for an ended session can offer to launch the same repository again.""",
    ).tag(config=True)

    @default("launch_token_secret")
    def _default_secret(self) -> bytes:
        return secrets.token_bytes(32)

    @validate("base_url")
    def _valid_base_url(self, proposal: Any) -> str:
        return normalise_base_url(str(proposal["value"]))

    @validate("public_url")
    def _valid_public_url(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip()
        return value.rstrip("/") + "/" if value else ""


def make_app(
    pipeline: LaunchPipelineProtocol,
    *,
    config: WebApp,
    hub_url: str | None = None,
    providers: Mapping[str, type] | None = None,
    sessions: SessionIndex | None = None,
    debug: bool = False,
    login_mode: str = "none",
    hub_auth: HubOAuth | None = None,
    cookie_secret: str | None = None,
    visitor_sessions: VisitorSessionsProtocol | None = None,
    menu: OptionsMenu | None = None,
) -> Application:
    """The Tornado application serving pages, the build API and badges.

    ``pipeline``
        runs launches (``/build``), health checks and version info
    ``config``
        the :class:`WebApp` settings
    ``hub_url``
        public URL of JupyterHub (linked from the pages); ``None``: ``<base_url>hub/``
    ``providers``
        prefix -> :class:`~binderbox.providers.base.RepoProvider` subclass, for the
        home page and ``/api/repoproviders``; ``None``: ``binderbox.providers.PROVIDERS``
    ``sessions``
        remembers which repository each session was launched from (shared with
        whoever else launches sessions); ``None``: a new in-memory index
    ``login_mode``, ``hub_auth``, ``cookie_secret``
        ``Logins.mode``, the web app's OAuth client of the hub
        (:func:`binderbox.web.login.make_hub_auth`) and the secret signing its
        cookie; without ``hub_auth`` nobody logs in here
    ``visitor_sessions``
        lists and stops logged-in visitors' sessions (the session launcher; None: the
        home page lists none)
    ``menu``
        the options menu of the home page (:mod:`binderbox.web.menu`: prebuilt
        environments and sizes); None: none
    """
    base = config.base_url
    site = Site(
        config=config,
        templates=jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        ),
        hub_url=hub_url or f"{base}hub/",
        providers=providers,
        login_mode=login_mode,
        hub_auth=hub_auth,
    )
    index = sessions if sessions is not None else SessionIndex(limit=config.recent_sessions)
    routes = _routes(pipeline, config, site, index, visitor_sessions, menu)
    return Application(
        routes,
        default_handler_class=pages.NotFoundHandler,
        default_handler_args={"site": site},
        static_path=str(STATIC),
        static_url_prefix=f"{base}static/",
        static_handler_class=pages.StaticHandler,
        log_function=log_request,
        debug=debug,
        cookie_secret=cookie_secret or secrets.token_hex(32),
    )


def _routes(
    pipeline: LaunchPipelineProtocol,
    config: WebApp,
    site: Site,
    index: SessionIndex,
    visitor_sessions: VisitorSessionsProtocol | None = None,
    menu: OptionsMenu | None = None,
) -> list[Any]:
    """The URL table; each handler gets only the collaborators it uses."""
    base = config.base_url
    limiter = RateLimiter(limit=config.rate_limit, period=config.rate_limit_period)
    tokens = LaunchTokens(config.launch_token_secret, lifetime=config.launch_token_seconds)
    common: dict[str, Any] = {"site": site}
    build: dict[str, Any] = {
        **common,
        "pipeline": pipeline,
        "limiter": limiter,
        "tokens": tokens,
        "sessions": index,
    }
    ended = {**common, "sessions": index}
    routes = [
        url(rf"{base}build/([^/]+)/(.+)", api.BuildHandler, build, name="build"),
        url(rf"{base}health", api.HealthHandler, {**common, "pipeline": pipeline}),
        url(rf"{base}versions", api.VersionsHandler, {**common, "pipeline": pipeline}),
        url(rf"{base}metrics", api.MetricsHandler, common),
        url(rf"{base}api/repoproviders", api.RepoProvidersHandler, common),
        url(rf"{base}(badge_logo|badge)\.svg", pages.BadgeHandler, common),
        url(rf"{base}user/([^/]+)(/.*)?", pages.EndedSessionHandler, ended),
        url(rf"{base}_proxy-error/(\d{{3}})", pages.ProxyErrorHandler, ended),
    ]
    mine = {**common, "sessions": visitor_sessions}
    if site.logins and visitor_sessions is not None:
        routes += [
            url(rf"{base}api/sessions(?:/({SERVER_NAME}))?", api.VisitorSessionsHandler, mine),
            url(rf"{base}sessions/({SERVER_NAME})/stop", pages.StopSessionHandler, mine),
        ]
    if site.logins:
        routes += [
            url(rf"{base}login", login.LoginHandler, common, name="login"),
            url(rf"{base}oauth_callback", login.OAuthCallbackHandler, common),
            url(rf"{base}logout", login.LogoutHandler, common),
        ]
    if config.api_only:
        routes.append(url(rf"{base}?", pages.ApiOnlyHomeHandler, common))
    else:
        routes += [
            url(rf"{base}?", pages.HomePageHandler, {**mine, "menu": menu}, name="home"),
            url(rf"{base}about", pages.AboutPageHandler, {**common, "pipeline": pipeline}),
            url(rf"{base}v2/([^/]+)/(.+)", pages.LaunchPageHandler, {**common, "tokens": tokens}),
            url(rf"{base}repo/([^/]+)/([^/]+)(/.*)?", pages.LegacyRedirectHandler, common),
        ]
    return routes
