"""HTML pages, redirects and badges.

``/``                       home page: a form that makes launch links and badges,
                            the options menu, a logged-in visitor's running sessions
``/sessions/<name>/stop``   POST: stop one of them, back to the home page
``/v2/<provider>/<spec>``   launch page: follows ``/build`` live, then opens the session
``/repo/<user>/<repo>[/p]`` legacy Binder links: redirect to ``/v2/gh/...``
``/user/<name>/...``        a session that is not running: "this session ended"
``/_proxy-error/<code>``    the proxy's error target: a session whose server does not
                            answer gets "this session ended", anything else our page
``/about``                  about text and versions
``/badge.svg``, ``/badge_logo.svg``
``/static/...``             the pages' assets
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, unquote

from tornado.httputil import url_concat
from tornado.web import HTTPError, StaticFileHandler

from ..errors import BinderboxError
from .base import (
    STATIC,
    BaseHandler,
    LaunchPipelineProtocol,
    SessionIndex,
    Site,
    VisitorSessionsProtocol,
)
from .menu import OptionsMenu
from .ratelimit import LaunchTokens


class PageHandler(BaseHandler):
    """Base of HTML handlers: errors are rendered as pages."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = self._reason
        exc_info = kwargs.get("exc_info")
        if exc_info is not None:
            error = exc_info[1]
            if isinstance(error, HTTPError) and error.log_message and status_code < 500:
                message = error.log_message
        self.render_page("error.html", status_code=status_code, message=message)


class HomePageHandler(PageHandler):
    """``GET /``: the form that builds launch links and badge markup; the options menu
    (:mod:`binderbox.web.menu`); for a logged-in visitor, their running sessions with
    open and stop."""

    def initialize(
        self,
        site: Site,
        sessions: VisitorSessionsProtocol | None = None,
        menu: OptionsMenu | None = None,
    ) -> None:
        super().initialize(site)
        self.visitor_sessions = sessions
        self.menu = menu or OptionsMenu(login_mode=site.login_mode)

    async def get(self) -> None:
        running: list[dict[str, Any]] = []
        if self.visitor_sessions is not None and self.visitor.logged_in:
            try:
                running = await self.visitor_sessions.sessions_of(self.visitor)
            except BinderboxError as err:
                self.log.warning("cannot list the sessions of %s: %s", self.visitor.name, err)
        menu = self.menu.offered(self.visitor)
        self.render_page(
            "home.html",
            launch_host=self.launch_host,
            about_text=self.config.about_text,
            running=running,
            logged_in=self.visitor.logged_in,
            xsrf=self.xsrf_token.decode(),
            menu=menu,
            menu_hint=menu is None and not self.visitor.logged_in and self.menu.has_choices,
        )


class StopSessionHandler(PageHandler):
    """``POST /sessions/<name>/stop`` (a form of the home page): stop the visitor's
    session ``name``, then back to the home page."""

    def initialize(self, site: Site, sessions: VisitorSessionsProtocol) -> None:  # type: ignore[override]
        super().initialize(site)
        self.visitor_sessions = sessions

    async def post(self, name: str) -> None:
        if not self.visitor.logged_in:
            raise HTTPError(403, "Log in to manage your sessions.")
        try:
            await self.visitor_sessions.stop_session(self.visitor, name)
        except BinderboxError as err:
            raise HTTPError(err.status_code, err.user_message) from None
        self.redirect(self.base_url)


class ApiOnlyHomeHandler(PageHandler):
    """``GET /`` in API-only mode: a minimal page naming the API."""

    def get(self) -> None:
        self.render_page("api_only.html")


class AboutPageHandler(PageHandler):
    """``GET /about``: the operator's about text and the versions."""

    def initialize(self, site: Site, pipeline: LaunchPipelineProtocol) -> None:  # type: ignore[override]
        super().initialize(site)
        self.pipeline = pipeline

    def get(self) -> None:
        versions = self.pipeline.versions()
        self.render_page(
            "about.html",
            about_text=self.config.about_text,
            about_html=self.config.about_html,
            builder=versions.get("builder", ""),
        )


class LaunchPageHandler(PageHandler):
    """``GET /v2/<provider>/<spec>``: the page that follows a launch live.

    The page's script opens ``/build/<provider>/<spec>`` with the page's query
    (minus ``urlpath``/``labpath``/``filepath``) plus a launch token that
    exempts it from the rate limit, then sends the browser to the session.
    """

    def initialize(self, site: Site, tokens: LaunchTokens) -> None:  # type: ignore[override]
        super().initialize(site)
        self.tokens = tokens

    def get(self, provider: str, _spec: str) -> None:
        providers = self.site.provider_classes()
        if provider not in providers:
            raise HTTPError(404, f"No repository provider is called {provider!r}.")
        spec = self.raw_spec("v2")
        if self.site.login_mode == "required" and not self.visitor.logged_in:
            self.redirect(self.login_url())  # then back here, logged in
            return
        display_name = getattr(providers[provider], "display_name", "") or provider
        self.render_page(
            "launch.html",
            provider=provider,
            provider_name=display_name,
            display_spec=unquote(spec),
            build_url=f"{self.base_url}build/{provider}/{spec}",
            build_token=self.tokens.issue(f"{provider}/{spec}"),
            xsrf=self.xsrf_token.decode() if self.visitor.logged_in else "",
        )


class LegacyRedirectHandler(PageHandler):
    """``GET /repo/<user>/<repo>[/<path>]``: old Binder links, as BinderHub redirects them.

    Tornado hands over ``user`` and ``repo`` unescaped, so they are escaped again
    for the ``Location``: a ``%0d%0a`` or ``%00`` in them stays an escape there
    (unescaped, Tornado refuses the header and the answer would be a 500).
    """

    def get(self, user: str, repo: str, path: str | None = None) -> None:
        target = f"{self.base_url}v2/gh/{quote(user, safe='')}/{quote(repo, safe='')}/master"
        if path is not None and path.strip("/"):
            target = url_concat(target, {"urlpath": path})
        self.redirect(target)


class EndedSessionHandler(PageHandler):
    """``/user/<name>/...`` reaching us: the server is not running (ended or culled).

    Browsers get a 404 page that offers to launch the same repository again
    when the :class:`SessionIndex` knows it; other clients get JSON.
    """

    def initialize(self, site: Site, sessions: SessionIndex) -> None:  # type: ignore[override]
        super().initialize(site)
        self.sessions = sessions

    def get(self, name: str, rest: str | None = None) -> None:
        accept = self.request.headers.get("Accept", "")
        self.ended(name, rest or "", 404, html="text/html" in accept)

    def ended(self, name: str, rest: str, status: int, *, html: bool) -> None:
        """Answer ``status``: the ended page (or JSON) of the session ``name``."""
        origin = self.sessions.lookup(name, rest)
        relaunch = f"{self.base_url}{origin}" if origin and not self.config.api_only else None
        self.set_status(status)
        if not html:
            self.set_header("Content-Type", "application/json; charset=utf-8")
            body = {
                "status_code": status,
                "message": "This session has ended.",
                "relaunch": relaunch,
            }
            self.finish(json.dumps(body))
            return
        self.render_page(
            "ended.html",
            name=name,
            relaunch_url=relaunch,
            relaunch_spec=unquote(origin.removeprefix("v2/")) if origin else "",
        )

    post = put = patch = delete = get  # an API call from a dead session gets the same 404


class ProxyErrorHandler(EndedSessionHandler):
    """``/_proxy-error/<code>?url=<path>``: what the proxy shows when it cannot answer
    (its ``--error-target``; the status stays the proxy's).  A session's URL whose
    server does not answer (it ended; the hub has not removed its route yet) gets the
    ended-session page, as after the route is gone; anything else our error page.
    The proxy sends no Accept header of the visitor's: the answer is HTML."""

    def get(self, code: str, rest: str | None = None) -> None:
        status = int(code) if 400 <= int(code) <= 599 else 502
        path = self.get_query_argument("url", "").split("?", 1)[0]
        session = re.match(rf"{re.escape(self.base_url)}user/([^/]+)(/.*)?$", path)
        if session is not None and status in (502, 503, 504):
            self.ended(session[1], session[2] or "", status, html=True)
            return
        raise HTTPError(status)


class NotFoundHandler(PageHandler):
    """Every other URL: a 404 page."""

    def prepare(self) -> None:
        raise HTTPError(404, "There is nothing at this address.")


class BadgeHandler(BaseHandler):
    """``GET /badge.svg`` and ``/badge_logo.svg``: the launch badges."""

    cors_enabled = True

    def get(self, name: str) -> None:
        self.set_header("Content-Type", "image/svg+xml")
        self.set_header("Cache-Control", "public, max-age=86400")
        self.finish((STATIC / f"{name}.svg").read_bytes())


class StaticHandler(StaticFileHandler):
    """``/static/...``: Tornado's static files, except that a path holding a NUL is
    not found (Tornado's own handler passes it to ``os.path`` and answers 500)."""

    def parse_url_path(self, url_path: str) -> str:
        if "\x00" in url_path:
            raise HTTPError(404)
        return super().parse_url_path(url_path)
