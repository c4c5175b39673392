"""The one Server-Sent-Events base class.

Subclasses call :meth:`EventStreamHandler.stream` with a coroutine function
that produces the stream with :meth:`~EventStreamHandler.send`.  The base
class owns the mechanics every stream needs:

* requests without ``Accept: text/event-stream`` get HTTP 400 (JSON);
* frames are ``data: <json>\\n\\n``; a ``:keepalive`` comment goes out every
  ``WebApp.sse_keepalive_interval`` seconds so proxies keep the connection;
* when the client disconnects, the producing task is cancelled (so an async
  generator it iterates runs its ``finally``) and nothing more is written;
* :meth:`~EventStreamHandler.linger` keeps a finished stream open (with
  keepalives) until a timeout or the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from tornado.iostream import StreamClosedError
from tornado.web import HTTPError

from .base import ApiHandler


class ClientGone(Exception):
    """The client closed the connection; stop producing."""


class EventStreamHandler(ApiHandler):
    """Base of handlers that answer with an event stream."""

    _gone: asyncio.Event
    _lock: asyncio.Lock
    _work: asyncio.Task[None] | None = None

    def prepare(self) -> None:
        self._gone = asyncio.Event()
        self._lock = asyncio.Lock()
        accept = self.request.headers.get("Accept", "")
        if self.request.method == "GET" and "text/event-stream" not in accept:
            raise HTTPError(400, "This is an event stream: send 'Accept: text/event-stream'.")

    @property
    def client_gone(self) -> bool:
        """True once the client has disconnected."""
        return self._gone.is_set()

    def on_connection_close(self) -> None:
        self._gone.set()
        if self._work is not None:
            self._work.cancel()

    async def _write_frame(self, frame: str) -> None:
        if self.client_gone:
            raise ClientGone()
        try:
            async with self._lock:  # one flush at a time: tornado drops overlapping futures
                self.write(frame)
                await self.flush()
        except StreamClosedError:
            self.on_connection_close()
            raise ClientGone() from None

    async def send(self, data: dict[str, Any], event_id: str = "") -> None:
        """Send one event frame (with an ``id:`` line when ``event_id``: what an
        EventSource sends back as ``Last-Event-ID`` when it reconnects).  Raises
        :class:`ClientGone` after a disconnect."""
        id_line = f"id: {event_id}\n" if event_id else ""
        await self._write_frame(f"data: {json.dumps(data)}\n{id_line}\n")

    async def _keepalive(self) -> None:
        interval = float(self.config.sse_keepalive_interval)
        while True:
            await asyncio.sleep(interval)
            await self._write_frame(":keepalive\n\n")

    async def linger(self, seconds: float) -> None:
        """Keep the stream open ``seconds`` or until the client leaves."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gone.wait(), timeout=seconds)

    async def stream(self, produce: Callable[[], Awaitable[None]]) -> None:
        """Send headers, run ``produce`` with keepalives, then end the response.

        ``produce`` is cancelled when the client disconnects.
        """
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        try:
            await self._write_frame("")  # send the headers now
        except ClientGone:
            return
        keepalive = asyncio.create_task(self._keepalive())

        async def guarded() -> None:
            with contextlib.suppress(ClientGone):
                await produce()

        self._work = asyncio.create_task(guarded())
        try:
            await self._work
        except asyncio.CancelledError:
            if not self.client_gone:
                raise
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClientGone):
                await keepalive
        if not self.client_gone:
            with contextlib.suppress(StreamClosedError):
                self.finish()
