"""One log record per launch of the service, at its end: what was launched, how it
ended, and how long each phase took -- the line an operator ships and counts.

The record's message is a sentence; its fields (JSON lines: ``--log-format json``)
are:

``event``
    ``"launch"``
``provider``, ``spec``, ``ref``
    what was asked for, credentials masked
    (:func:`~binderbox.providers.gitutil.loggable`)
``repo``
    the repository's URL as the session shows it (``ready`` only), masked likewise
``outcome``
    ``ready``, ``built`` (a build-only request), ``failed``, or ``abandoned`` (the
    visitor left before the end)
``failure``, ``status_code``
    the ``failed`` event's reason label and HTTP-like code
``cached``
    whether the environment was already built (null: not reached)
``session``
    the session's hub name, ``user`` or ``user/server`` (``ready`` only)
``fetch_seconds``, ``build_seconds``, ``launch_seconds``, ``total_seconds``
    fetch: from the request to the first build event (queued, building or built);
    build: from there to ``built``; launch: from ``built`` to the outcome (datasets
    and the session's start).  A phase not reached is null.

Never the session's token, never a URL's user-info or query.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .events import Built, Event, Failed, Phase, Ready
from .pipeline import LaunchRequest
from .providers.gitutil import loggable
from .web.base import server_key

_BUILD_PHASES = (Phase.WAITING, Phase.BUILDING, Phase.BUILT)


@dataclass
class LaunchSummary:
    """What one launch's events said, for its log record."""

    request: LaunchRequest
    started: float = field(default_factory=time.monotonic)
    #: when the first event of the build phases came, when ``built`` came, the end
    build_started: float | None = None
    built_at: float | None = None
    ended: float | None = None
    last: Event | None = None
    #: whether the environment was found built (None: not reached)
    cached: bool | None = None

    def observe(self, event: Event) -> None:
        """Note one event of the launch."""
        now = time.monotonic()
        if event.phase in _BUILD_PHASES and self.build_started is None:
            self.build_started = now
        if isinstance(event, Built) and self.built_at is None:
            self.built_at, self.cached = now, event.cached
        if event.terminal or (isinstance(event, Built) and self.request.build_only):
            self.ended = now
        self.last = event

    @property
    def outcome(self) -> str:
        if isinstance(self.last, Ready):
            return "ready"
        if isinstance(self.last, Failed):
            return "failed"
        if isinstance(self.last, Built) and self.request.build_only:
            return "built"
        return "abandoned"

    def fields(self) -> dict[str, Any]:
        """The record's fields (see the module docstring)."""
        end = self.ended if self.ended is not None else time.monotonic()
        last = self.last
        built = self.built_at
        return {
            "event": "launch",
            "provider": self.request.provider,
            "spec": loggable(self.request.spec),
            "ref": loggable(self.request.ref) if self.request.ref else None,
            "repo": loggable(last.repo_url) if isinstance(last, Ready) else None,
            "outcome": self.outcome,
            "failure": last.reason if isinstance(last, Failed) else None,
            "status_code": last.status_code if isinstance(last, Failed) else None,
            "cached": self.cached,
            "session": server_key(last.url) if isinstance(last, Ready) else None,
            "fetch_seconds": _span(self.started, self.build_started),
            "build_seconds": _span(self.build_started, built),
            "launch_seconds": _span(built, self.ended) if not self.request.build_only else None,
            "total_seconds": _span(self.started, end),
        }

    def message(self, values: dict[str, Any]) -> str:
        """The record's sentence."""
        what = f"{values['provider']}/{values['spec']}"
        how = values["outcome"]
        if values["failure"]:
            how += f" ({values['failure']})"
        return f"launch of {what}: {how} in {values['total_seconds']:.1f} s"


def _span(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(end - start, 3)


async def logged(
    events: AsyncGenerator[Event, None], request: LaunchRequest, log: logging.Logger
) -> AsyncIterator[Event]:
    """``events`` unchanged; at their end (or when the visitor leaves), the launch's
    record on ``log`` at INFO, its fields as the record's ``extra``."""
    summary = LaunchSummary(request)
    try:
        async with contextlib.aclosing(events):  # the pipeline's clean-up first (its holds)
            async for event in events:
                summary.observe(event)
                yield event
    finally:
        values = summary.fields()
        log.info("%s", summary.message(values), extra=values)
