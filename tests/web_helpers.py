"""Helpers for the web tests: scripted pipelines, a live server, an SSE client.

The pipelines are a few lines each (like JupyterHub's ``SlowSpawner`` /
``NeverSpawner``): they script the events the real pipeline would yield, so
the tests exercise the HTTP mechanics over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application

from binderbox.events import Building, Built, Event, Failed, Fetching, Launching, Ready, Waiting
from binderbox.pipeline import LaunchRequest
from binderbox.providers.base import RepoProvider


class GitHubish(RepoProvider):
    prefix = "gh"
    display_name = "GitHub"
    spec_label = "GitHub repository name or URL"
    spec_placeholder = "owner/repository"


class GitLabish(RepoProvider):
    prefix = "gl"
    display_name = "GitLab.com"


class Zenodoish(RepoProvider):
    prefix = "zenodo"
    display_name = "Zenodo DOI"
    has_ref = False


PROVIDERS: dict[str, type] = {"gh": GitHubish, "gl": GitLabish, "zenodo": Zenodoish}


def ready(url: str = "http://127.0.0.1:9/user/alice/", token: str = "s3cret") -> Ready:
    """A ``ready`` event for a session at ``url``."""
    return Ready(
        message="server running",
        url=url,
        token=token,
        image="env-abc",
        repo_url="https://github.com/o/r",
        binder_ref_url="https://github.com/o/r/tree/abc",
        binder_launch_host="http://127.0.0.1/",
        binder_request="v2/gh/o/r/HEAD",
        binder_persistent_request="v2/gh/o/r/abc",
    )


def launch_events(url: str = "http://127.0.0.1:9/user/alice/") -> list[Event]:
    """A whole successful launch, in order."""
    return [
        Waiting(message="waiting for a slot"),
        Fetching(message="cloning o/r"),
        Building(message="Resolved 3 packages\n"),
        Building(message="Installed 3 packages\n"),
        Built(message="built", image_name="env-abc", path="/srv/env"),
        Launching(message="starting server"),
        ready(url),
    ]


@dataclass
class ScriptedPipeline:
    """Yields ``events`` in order (pausing ``delay`` seconds between them)."""

    events: Sequence[Event] = ()
    checks: list[dict[str, Any]] = field(default_factory=lambda: [{"service": "Hub", "ok": True}])
    delay: float = 0.0
    requests: list[LaunchRequest] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    #: set when the consumer asked for what follows the last event (a launch's hand-over)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    async def launch(self, request: LaunchRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        try:
            for event in self.events:
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield event
            self.finished.set()
        finally:
            self.closed.set()

    async def health(self) -> list[dict[str, Any]]:
        return self.checks

    def versions(self) -> dict[str, Any]:
        return {"builder": "uv 0.5", "builder_info": {"uv": "0.5"}, "python": "3.11"}


@dataclass
class NeverPipeline(ScriptedPipeline):
    """Says it is waiting, then never finishes (until closed)."""

    async def launch(self, request: LaunchRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        try:
            yield Waiting(message="waiting forever")
            await asyncio.Event().wait()
        finally:
            self.closed.set()


@dataclass
class BrokenPipeline(ScriptedPipeline):
    """Yields one event, then raises a bug (not a BinderboxError)."""

    async def launch(self, request: LaunchRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        yield Fetching(message="cloning")
        raise RuntimeError("a bug")


def failing(message: str = "Could not resolve ref.", status_code: int = 404) -> ScriptedPipeline:
    return ScriptedPipeline(
        [Fetching(message="resolving"), Failed(message=message, status_code=status_code)]
    )


@contextlib.asynccontextmanager
async def serve(app: Application) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 on a free port; yields ``http://127.0.0.1:<port>``."""
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        await server.close_all_connections()


@dataclass
class Frame:
    """One SSE frame: ``data`` (parsed JSON) or a comment."""

    raw: str

    @property
    def is_comment(self) -> bool:
        return self.raw.startswith(":")

    @property
    def data(self) -> dict[str, Any]:
        line = self.raw.split("\n")[0]
        assert line.startswith("data: "), self.raw
        parsed: dict[str, Any] = json.loads(line[len("data: ") :])
        return parsed

    @property
    def id(self) -> str:
        """The frame's ``id:`` field ('' without one)."""
        found = [line for line in self.raw.split("\n")[1:] if line.startswith("id: ")]
        return found[-1][len("id: ") :] if found else ""


class SSEClient:
    """A minimal HTTP/1.0 event-stream client over a raw socket.

    HTTP/1.0 makes the server send the body unchunked, so frames can be read
    as they come and the connection closed at any point.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def open(cls, base: str, path: str, headers: dict[str, str] | None = None) -> SSEClient:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        lines = [f"GET {path} HTTP/1.0", f"Host: {host}:{port}"]
        all_headers = {"Accept": "text/event-stream", **(headers or {})}
        lines += [f"{k}: {v}" for k, v in all_headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        client = cls(reader, writer)
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        status_line, *header_lines = head.strip().split("\r\n")
        client.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            client.headers[name.strip().lower()] = value.strip()
        return client

    async def frame(self, wait: float = 10.0) -> Frame | None:
        """The next frame, or ``None`` at the end of the stream."""
        try:
            raw = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), wait)
        except asyncio.IncompleteReadError as end:
            assert not end.partial.strip(), f"truncated frame {end.partial!r}"
            return None
        return Frame(raw.decode()[:-2])

    async def events(self, wait: float = 10.0) -> list[dict[str, Any]]:
        """Every data frame until the server ends the stream."""
        found = []
        while (frame := await self.frame(wait)) is not None:
            if not frame.is_comment:
                found.append(frame.data)
        return found

    async def body(self) -> bytes:
        return await self.reader.read()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
