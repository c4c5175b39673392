"""What every handler shares: the pipeline contract, the site, the base handler.

Handlers receive their collaborators explicitly through ``initialize`` (the
URLSpec keyword arguments set up in :func:`binderbox.web.app.make_app`):
every handler gets the :class:`Site` (settings + templates + providers),
the ones that need more get it by name (``pipeline``, ``limiter``...).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import jinja2
from jupyterhub._xsrf_utils import get_xsrf_token
from tornado.httputil import HTTPServerRequest, url_concat
from tornado.web import HTTPError, RequestHandler

from .. import __version__
from ..events import Event
from ..pipeline import LaunchRequest
from ..providers import offered_providers, repoprovider_configs
from ..providers.base import RepoProvider
from ..providers.gitutil import loggable
from ..sessions.identity import ANONYMOUS, Visitor

if TYPE_CHECKING:
    from jupyterhub.services.auth import HubOAuth

    from .app import WebApp

#: the web layer's own files
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


class LaunchPipelineProtocol(Protocol):
    """What the web layer needs from the launch pipeline.

    ``launch(request)``
        an async iterator of events for one request.  It never raises a
        :class:`~binderbox.errors.BinderboxError`: it ends with a ``Failed``
        event (with ``status_code``), a ``Ready`` event, or a ``Built`` event
        when ``request.build_only``.  Closing the iterator early (the client
        went away) must release what it holds (its ``finally`` runs).
    ``health()``
        a list of checks, each ``{"service": str, "ok": bool, ...}``
    ``versions()``
        ``{"builder": str, "builder_info": dict}`` (more keys allowed)
    """

    def launch(self, request: LaunchRequest) -> AsyncIterator[Event]: ...

    async def health(self) -> list[dict[str, Any]]: ...

    def versions(self) -> dict[str, Any]: ...


class VisitorSessionsProtocol(Protocol):
    """What the pages need to show logged-in visitors their sessions (the
    :class:`~binderbox.sessions.launcher.SessionLauncher` does it).

    ``sessions_of(visitor)``
        the visitor's running sessions: dicts with ``name`` (the hub server),
        ``url``, ``ready``, ``repo_url``, ``binder_request``, ``started``,
        ``last_activity``; [] for an anonymous visitor
    ``stop_session(visitor, name)``
        stop the visitor's session ``name`` and free its slot
    """

    async def sessions_of(self, visitor: Visitor) -> list[dict[str, Any]]: ...

    async def stop_session(self, visitor: Visitor, server: str) -> None: ...


#: a hub server name (JupyterHub's safe slugs)
SERVER_NAME = r"[a-z0-9-]{1,30}"


class SessionIndex:
    """Remembers which launch request each session came from, by user name, or by
    ``<user>/<server>`` for a named server (a logged-in user's).

    The build API records every ``ready`` event here; the page for an ended
    session (``/user/<name>/...``) looks the name up to offer a relaunch.
    Bounded: the oldest entries are forgotten first.  Kept in the SQLite file
    ``path`` (the service keeps it in its data directory, so a session's page
    still offers the relaunch after binderbox restarts); in memory without.
    """

    def __init__(self, limit: int = 10000, path: Path | None = None) -> None:
        self.limit = limit
        where = str(path) if path is not None else ":memory:"
        # used from the event loop's thread only; small writes without fsync (WAL)
        self._db = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sessions"
            " (name TEXT PRIMARY KEY, request TEXT NOT NULL, at INTEGER NOT NULL)"
        )

    def record(self, server_url: str, binder_request: str) -> None:
        """Remember ``binder_request`` (``v2/gh/o/r/ref``) for the session at ``server_url``."""
        name = server_key(server_url)
        if not name or not binder_request:
            return
        with self._db:
            (last,) = self._db.execute("SELECT COALESCE(MAX(at), 0) FROM sessions").fetchone()
            self._db.execute(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)", (name, binder_request, last + 1)
            )
            self._db.execute("DELETE FROM sessions WHERE at <= ?", (last + 1 - self.limit,))

    def lookup(self, name: str, rest: str = "") -> str | None:
        """The ``v2/...`` request the session ``name`` was launched from, if known;
        ``rest``: the path after ``/user/<name>``, whose first part may be a named
        server of the user (looked up first)."""
        server = rest.strip("/").split("/", 1)[0]
        for key in ([f"{name}/{server}"] if server else []) + [name]:
            row = self._db.execute("SELECT request FROM sessions WHERE name = ?", (key,))
            found = row.fetchone()
            if found:
                return str(found[0])
        return None


def server_key(server_url: str) -> str | None:
    """``<user>`` of a default server's URL (``.../user/<user>/``), ``<user>/<server>``
    of a named one (``.../user/<user>/<server>/``), else ``None``."""
    parts = urlsplit(server_url).path.split("/")
    for i, part in enumerate(parts[:-1]):
        if part == "user" and parts[i + 1]:
            return "/".join(p for p in parts[i + 1 : i + 3] if p)
    return None


def log_request(handler: RequestHandler) -> None:
    """Tornado's access log line, with credentials in the URI masked."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    logging.getLogger("tornado.access").log(
        level,
        "%d %s %.2fms",
        status,
        _summary(request),
        1000.0 * request.request_time(),
    )


def _summary(request: HTTPServerRequest) -> str:
    """``METHOD uri (ip)`` with credentials in the URI masked."""
    return f"{request.method} {loggable(request.uri or '')} ({request.remote_ip})"


@dataclass
class Site:
    """The parts every handler needs: settings, templates, provider classes, and
    who logs in: ``login_mode`` (``Logins.mode``: ``none``, ``optional``,
    ``required``) and the web app's OAuth client of the hub (None without logins)."""

    config: WebApp
    templates: jinja2.Environment
    hub_url: str
    providers: Mapping[str, type[RepoProvider]] | None = None
    login_mode: str = "none"
    hub_auth: HubOAuth | None = None

    @property
    def logins(self) -> bool:
        """Whether visitors can log in."""
        return self.hub_auth is not None and self.login_mode != "none"

    def provider_classes(self) -> Mapping[str, type[RepoProvider]]:
        """Provider prefix -> class: the ``providers`` given, else all of
        ``binderbox.providers.PROVIDERS`` (looked up on each call)."""
        return offered_providers() if self.providers is None else self.providers

    def provider_configs(self) -> list[dict[str, Any]]:
        """The body of ``/api/repoproviders``: the providers' own
        :func:`~binderbox.providers.repoprovider_configs` for these classes."""
        return repoprovider_configs(providers=self.provider_classes())


class BaseHandler(RequestHandler):
    """Base of all binderbox handlers: client address, public URL, CORS, pages."""

    site: Site
    log = logging.getLogger("binderbox.web")

    def _request_summary(self) -> str:
        """What Tornado logs for errors: credentials in the URI masked there too."""
        return _summary(self.request)

    def initialize(self, site: Site) -> None:
        self.site = site
        self.set_default_headers()

    @property
    def config(self) -> WebApp:
        return self.site.config

    def get_current_user(self) -> dict[str, Any] | None:
        """The hub's model of the logged-in visitor (from the web app's login cookie,
        checked with the hub; cached by ``HubOAuth``), None: anonymous."""
        hub_auth = self.site.hub_auth
        if hub_auth is None or not self.site.logins:
            return None
        model = hub_auth.get_user(self)
        if not model or model.get("kind", "user") != "user":
            return None
        if not hub_auth.check_scopes(hub_auth.access_scopes, model):
            return None
        return dict(model)

    @property
    def xsrf_token(self) -> bytes:
        """JupyterHub's xsrf token when visitors log in (what its cookie check accepts:
        a cookie-authenticated request that is not a page view, such as the launch
        page's event stream, must carry it as ``_xsrf``), else Tornado's."""
        hub_auth = self.site.hub_auth
        if hub_auth is None:
            return super().xsrf_token
        token: bytes = get_xsrf_token(self, cookie_path=hub_auth.base_url)
        return token

    @property
    def _xsrf_token_id(self) -> bytes:
        """What JupyterHub's xsrf token is bound to: the login cookie and session."""
        hub_auth = self.site.hub_auth
        return b"" if hub_auth is None else bytes(hub_auth._get_xsrf_token_id(self))

    def check_xsrf_cookie(self) -> None:
        """JupyterHub's xsrf check (called by ``HubOAuth`` for cookie logins)."""
        hub_auth = self.site.hub_auth
        if hub_auth is None:
            super().check_xsrf_cookie()
        else:
            hub_auth.check_xsrf_cookie(self)

    @property
    def visitor(self) -> Visitor:
        """Who makes this request: the logged-in hub user (``name``; ``admin`` and
        ``groups`` as the hub says: the authenticator's admin users / admin groups,
        the provider's groups claim for generic OAuth), else :data:`ANONYMOUS`."""
        model = self.current_user
        if not isinstance(model, dict) or not model.get("name"):
            return ANONYMOUS
        groups = model.get("groups") or ()
        return Visitor(
            name=str(model["name"]),
            admin=bool(model.get("admin")),
            groups=tuple(sorted(str(group) for group in groups)),
        )

    def login_url(self, next_url: str | None = None) -> str:
        """Where a visitor logs in, coming back to ``next_url`` (default: this page)."""
        target = next_url if next_url is not None else self.request.uri or self.base_url
        return url_concat(f"{self.base_url}login", {"next": target})

    @property
    def base_url(self) -> str:
        return str(self.config.base_url)

    @property
    def client_ip(self) -> str:
        """The requester's address: the proxies' ``X-Forwarded-For`` entry when trusted.

        Each trusted proxy appends the address it saw to the header (the
        configurable-http-proxy; before it the TLS front, which drops what a client
        sent), so the entry ``forwarded_hops`` from the end is the one a client cannot
        forge.
        """
        forwarded = self.request.headers.get("X-Forwarded-For", "")
        if self.config.trust_xheaders and forwarded.strip():
            entries = forwarded.split(",")
            return entries[-min(max(1, self.config.forwarded_hops), len(entries))].strip()
        return str(self.request.remote_ip or "")

    @property
    def launch_host(self) -> str:
        """The public base URL of the service, ending with ``/``."""
        if self.config.public_url:
            return str(self.config.public_url)
        scheme = self.request.protocol
        if self.config.trust_xheaders:
            forwarded = self.request.headers.get("X-Forwarded-Proto", "")
            scheme = forwarded.split(",")[0].strip() or scheme
        return f"{scheme}://{self.request.host}{self.base_url}"

    def set_default_headers(self) -> None:
        # tornado calls this before initialize() (then ``site`` is not set yet) and
        # again when an error clears the headers
        site: Site | None = getattr(self, "site", None)
        origin = site.config.cors_allow_origin if site is not None else ""
        if origin and self.cors_enabled:
            self.set_header("Access-Control-Allow-Origin", origin)
            if origin != "*":
                self.add_header("Vary", "Origin")

    #: API handlers and badges send CORS headers; HTML pages do not
    cors_enabled = False

    def options(self, *args: Any) -> None:
        """Answer CORS preflight requests."""
        if not (self.cors_enabled and self.config.cors_allow_origin):
            self.set_status(405)
            return
        self.set_header("Access-Control-Allow-Methods", "GET, OPTIONS")
        requested = self.request.headers.get("Access-Control-Request-Headers", "")
        self.set_header("Access-Control-Allow-Headers", requested or "accept, cache-control")
        self.set_header("Access-Control-Max-Age", "3600")
        self.set_status(204)

    def render_page(self, template: str, **namespace: Any) -> None:
        """Render ``templates/<template>`` with the page chrome and finish."""
        config = self.config
        values: dict[str, Any] = {
            "base_url": self.base_url,
            "static_url": self.static_url,
            "site_name": config.site_name,
            "logo_url": config.logo_url or self.static_url("logo.svg"),
            "banner_html": config.banner_html,
            "extra_header_html": config.extra_header_html,
            "extra_footer_html": config.extra_footer_html,
            "hub_url": self.site.hub_url,
            "version": __version__,
            "api_only": config.api_only,
            "logins": self.site.logins,
            "visitor": self.visitor,
            "login_url": self.login_url() if self.site.logins else "",
        }
        values.update(namespace)
        html = self.site.templates.get_template(template).render(**values)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(html)

    def raw_spec(self, route: str) -> str:
        """The spec of ``<base_url><route>/<provider>/<spec>`` as sent, keeping its escaping.

        Tornado unescapes path groups (``group%2Fproject/main`` would become
        ``group/project/main``); providers need the spec as sent, like
        BinderHub's ``get_spec_from_request``.
        """
        rest = self.request.path[len(f"{self.base_url}{route}/") :]
        return rest.partition("/")[2]


class ApiHandler(BaseHandler):
    """Base of JSON/SSE handlers: CORS headers, errors as ``{"message": ...}`` JSON."""

    cors_enabled = True

    def write_json(self, data: Any, status: int = 200) -> None:
        """Answer ``data`` as JSON with ``status`` and finish."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        message = self._reason
        if exc_info is not None:
            error = exc_info[1]
            if isinstance(error, HTTPError) and error.log_message:
                message = error.log_message % error.args if error.args else error.log_message
        self.clear_header("Content-Type")
        self.write_json({"status_code": status_code, "message": message}, status=status_code)
