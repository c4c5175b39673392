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
from tornado.httputil import HTTPServerRequest
from tornado.web import HTTPError, RequestHandler

from .. import __version__
from ..events import Event
from ..pipeline import LaunchRequest
from ..providers import offered_providers, repoprovider_configs
from ..providers.base import RepoProvider
from ..providers.gitutil import redact

if TYPE_CHECKING:
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


class SessionIndex:
    """Remembers which launch request each session came from, by user name.

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
        name = user_from_url(server_url)
        if not name or not binder_request:
            return
        with self._db:
            (last,) = self._db.execute("SELECT COALESCE(MAX(at), 0) FROM sessions").fetchone()
            self._db.execute(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)", (name, binder_request, last + 1)
            )
            self._db.execute("DELETE FROM sessions WHERE at <= ?", (last + 1 - self.limit,))

    def lookup(self, name: str) -> str | None:
        """The ``v2/...`` request the session ``name`` was launched from, if known."""
        row = self._db.execute("SELECT request FROM sessions WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None


def user_from_url(server_url: str) -> str | None:
    """The user name in a server URL (``.../user/<name>/...``), else ``None``."""
    parts = urlsplit(server_url).path.split("/")
    for i, part in enumerate(parts[:-1]):
        if part == "user" and parts[i + 1]:
            return parts[i + 1]
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
    return f"{request.method} {redact(request.uri or '')} ({request.remote_ip})"


@dataclass
class Site:
    """The parts every handler needs: settings, templates, provider classes."""

    config: WebApp
    templates: jinja2.Environment
    hub_url: str
    providers: Mapping[str, type[RepoProvider]] | None = None

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

    @property
    def base_url(self) -> str:
        return str(self.config.base_url)

    @property
    def client_ip(self) -> str:
        """The requester's address: the proxy's ``X-Forwarded-For`` entry when trusted.

        The configurable-http-proxy appends the address it saw to the header, so
        the *last* entry is the one a client cannot forge.
        """
        forwarded = self.request.headers.get("X-Forwarded-For", "")
        if self.config.trust_xheaders and forwarded.strip():
            return forwarded.split(",")[-1].strip()
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
