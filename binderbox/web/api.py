"""The JSON and event-stream API (BinderHub's surface).

``/build/<provider>/<spec>``
    the launch as an event stream (see :class:`BuildHandler`)
``/health``
    ``{"ok": bool, "checks": [...]}``; 503 when a check fails
``/versions``
    ``{"binderhub": ..., "binderbox": ..., "builder": ..., "builder_info": {...}}``
``/metrics``
    Prometheus text
``/api/repoproviders``
    the display config of each provider
``/api/sessions``, ``/api/sessions/<name>``
    a logged-in visitor's running sessions (GET), one stopped (DELETE)
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from tornado.web import HTTPError

from .. import __version__, metrics
from ..errors import BinderboxError
from ..events import Failed, Ready
from ..pipeline import LaunchRequest
from ..providers.gitutil import loggable
from .base import (
    ApiHandler,
    LaunchPipelineProtocol,
    SessionIndex,
    Site,
    VisitorSessionsProtocol,
)
from .ratelimit import LaunchTokens, RateLimiter
from .sse import ClientGone, EventStreamHandler

#: the id of a launch stream's final event (see :class:`BuildHandler`)
ENDED = "binderbox-launch-ended"


class BuildHandler(EventStreamHandler):
    """``GET /build/<provider>/<spec>``: stream the pipeline's events.

    The handler only checks the request (Accept header, rate limit) and
    relays: the flow lives in the pipeline.  After ``ready`` or ``failed`` (or
    ``built`` with ``?build_only=true``) the stream ends (after ready, unless
    ``WebApp.ready_linger_seconds`` keeps it open).  The final event carries the
    id :data:`ENDED`: an EventSource that reconnects once the stream has ended sends
    it back as ``Last-Event-ID`` and gets 204 No Content, which stops it, not a
    second launch.  The pipeline's events are
    read to their end once ``ready`` is sent: that hands the session over.
    A client that leaves before (its connection closed) abandons the launch,
    and the pipeline removes what it had started.
    """

    def initialize(  # type: ignore[override]
        self,
        site: Site,
        pipeline: LaunchPipelineProtocol,
        limiter: RateLimiter,
        tokens: LaunchTokens,
        sessions: SessionIndex,
    ) -> None:
        super().initialize(site)
        self.pipeline = pipeline
        self.limiter = limiter
        self.tokens = tokens
        self.sessions = sessions

    async def get(self, provider: str, _spec: str) -> None:
        if self.request.headers.get("Last-Event-ID") == ENDED:  # a reconnect after the end
            self.set_status(204)
            return
        spec = self.raw_spec("build")
        retry_after = self.over_rate_limit(f"{provider}/{spec}")
        if retry_after is not None:
            self.set_header("Retry-After", str(retry_after))
            message = f"Rate limit exceeded. Try again in {retry_after} seconds."
            self.write_json({"status_code": 429, "message": message}, status=429)
            return
        build_only = self.get_query_argument("build_only", "").lower() == "true"
        visitor = self.visitor
        if self.site.login_mode == "required" and not visitor.logged_in:
            page = f"{self.base_url}v2/{provider}/{spec}"
            refusal = Failed(
                message=f"Log in to launch: {self.launch_host}{self.login_url(page)[1:]}",
                status_code=403,
                reason="login_required",
            )
            await self.stream(lambda: self.send(refusal.to_wire()))
            return
        request = LaunchRequest(
            provider=provider,
            spec=spec,
            launch_host=self.launch_host,
            build_only=build_only,
            client_ip=self.client_ip,
            visitor=visitor,
            size=self.get_query_argument("size", "")[:64],
        )
        self.log.info(
            "build %s/%s for %s%s%s",
            provider,
            loggable(spec),
            request.client_ip,
            f" ({visitor.name})" if visitor.logged_in else "",
            " (build only)" if build_only else "",
        )
        if build_only and not self.config.api_only:
            refusal = Failed(
                message="Building without launching is only allowed in API-only mode.",
                status_code=400,
                reason="build_only",
            )
            await self.stream(lambda: self.send(refusal.to_wire()))
            return
        await self.stream(lambda: self.relay(request))

    def over_rate_limit(self, target: str) -> int | None:
        """Seconds to wait when this address is over the limit without a launch token."""
        if not self.limiter.enabled:
            return None
        token = self.get_query_argument("build_token", "")
        if token and self.tokens.valid(token, target):
            return None
        retry_after = self.limiter.check(self.client_ip)
        return None if retry_after is None else max(1, math.ceil(retry_after))

    async def relay(self, request: LaunchRequest) -> None:
        """Send every event of the launch; linger after ``ready``."""
        events = self.pipeline.launch(request)
        last = None
        try:
            async for event in events:  # to the end: the pipeline ends after its outcome
                await self.send(event.to_wire(), ENDED if event.terminal else "")
                last = event
                if isinstance(event, Ready):
                    self.sessions.record(event.url, event.binder_request)
        except ClientGone:
            raise
        except BinderboxError as error:  # the pipeline's contract says it does not raise
            self.log.warning("pipeline raised %s: %s", type(error).__name__, error.log_message)
            last = error.to_event()
            await self.send(last.to_wire(), ENDED)
        except Exception:
            self.log.exception("launch of %s/%s failed", request.provider, loggable(request.spec))
            last = Failed(message="Internal error: the launch failed.", status_code=500)
            await self.send(last.to_wire(), ENDED)
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
        if last is None or (not last.terminal and not request.build_only):
            await self.send(
                Failed(message="The launch ended without a result.", status_code=500).to_wire(),
                ENDED,
            )
        elif isinstance(last, Ready):
            await self.linger(float(self.config.ready_linger_seconds))


class HealthHandler(ApiHandler):
    """``GET /health``: the pipeline's checks; 503 when one is not ok."""

    def initialize(self, site: Site, pipeline: LaunchPipelineProtocol) -> None:  # type: ignore[override]
        super().initialize(site)
        self.pipeline = pipeline

    async def get(self) -> None:
        try:
            checks = await self.pipeline.health()
        except Exception:
            self.log.exception("health check raised")
            checks = [{"service": "binderbox", "ok": False, "error": "health check failed"}]
        ok = all(bool(check.get("ok")) for check in checks)
        self.write_json({"ok": ok, "checks": checks}, status=200 if ok else 503)


class VersionsHandler(ApiHandler):
    """``GET /versions``: BinderHub's keys plus ours."""

    def initialize(self, site: Site, pipeline: LaunchPipelineProtocol) -> None:  # type: ignore[override]
        super().initialize(site)
        self.pipeline = pipeline

    def get(self) -> None:
        info: dict[str, Any] = {"binderhub": __version__, "binderbox": __version__}
        info.update({"builder": "", "builder_info": {}, **self.pipeline.versions()})
        self.write_json(info)


class MetricsHandler(ApiHandler):
    """``GET /metrics``: Prometheus text format."""

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(metrics.render())


class RepoProvidersHandler(ApiHandler):
    """``GET /api/repoproviders``: a list with each provider's display config."""

    def get(self) -> None:
        self.write_json(self.site.provider_configs())


class VisitorSessionsHandler(ApiHandler):
    """``GET /api/sessions``: the logged-in visitor's running sessions
    (``{"sessions": [...]}``); ``DELETE /api/sessions/<name>``: stop one (204).
    Anonymous visitors have none to manage: 403."""

    cors_enabled = False  # the visitor's own sessions: this site's pages only

    def initialize(self, site: Site, sessions: VisitorSessionsProtocol) -> None:  # type: ignore[override]
        super().initialize(site)
        self.visitor_sessions = sessions

    def _logged_in(self) -> None:
        if not self.visitor.logged_in:
            raise HTTPError(403, "Log in to see your sessions.")

    async def get(self, name: str | None = None) -> None:
        self._logged_in()
        if name is not None:
            raise HTTPError(405, "GET /api/sessions lists them")
        try:
            found = await self.visitor_sessions.sessions_of(self.visitor)
        except BinderboxError as err:
            raise HTTPError(err.status_code, err.user_message) from None
        self.write_json({"sessions": found})

    async def delete(self, name: str | None = None) -> None:
        self._logged_in()
        if name is None:
            raise HTTPError(405, "DELETE /api/sessions/<name> stops one")
        try:
            await self.visitor_sessions.stop_session(self.visitor, name)
        except BinderboxError as err:
            raise HTTPError(err.status_code, err.user_message) from None
        self.set_status(204)
        self.finish()
