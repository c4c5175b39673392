"""A small client of JupyterHub's REST API (what binderbox's service needs).

Every call authenticates with the service's API token.  Failures raise
:class:`HubAPIError` carrying the HTTP status and the hub's own message
(callers turn it into a user-facing error); a hub that cannot be reached at
all gives status 599.

Each :class:`HubClient` has connections of its own: its calls never wait
behind other code's requests (Tornado's shared ``AsyncHTTPClient()`` allows
10 at once and queues the rest, failing them with "599: Timeout in request
queue" after 20 s).  A spawn's progress stream, which lasts as long as the
spawn, has a connection of its own too, closed as soon as its reader stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

#: how long :meth:`HubClient.delete_user` waits for a user's servers to stop
DELETE_SECONDS = 30.0


class HubAPIError(Exception):
    """The hub answered with an error (or not at all: status 599)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def _hub_message(err: HTTPClientError) -> str:
    body = err.response.body if err.response is not None else b""
    return _hub_message_of(body, str(err.message))


def _hub_message_of(body: bytes, default: str) -> str:
    """The ``message`` of the hub's JSON error body, else ``default``."""
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body).get("message") or default)
    return default


class _Streamed(httputil.HTTPMessageDelegate):
    """A response read as it comes: its status, then its body's chunks (``None``: the
    end); ``error``: why the reading stopped early, if it did."""

    def __init__(self) -> None:
        self.status = 0
        self.reason = ""
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.error: BaseException | None = None

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        if isinstance(start_line, httputil.ResponseStartLine):
            self.status, self.reason = start_line.code, start_line.reason

    def data_received(self, chunk: bytes) -> None:
        self.chunks.put_nowait(chunk)

    def finish(self) -> None:
        self.chunks.put_nowait(None)

    def on_connection_close(self) -> None:
        self.chunks.put_nowait(None)

    def read_from(self, connection: HTTP1Connection) -> None:
        """Read the response of ``connection`` into this object, in the background."""

        def done(reading: asyncio.Future[bool]) -> None:
            if not reading.cancelled() and reading.exception() is not None:
                self.error = reading.exception()
                self.chunks.put_nowait(None)

        asyncio.ensure_future(connection.read_response(self)).add_done_callback(done)

    async def body(self) -> bytes:
        """The rest of the body."""
        data = b""
        while (chunk := await self.chunks.get()) is not None:
            data += chunk
        return data


class HubClient:
    """REST calls on ``api_url`` (e.g. ``http://127.0.0.1:8081/hub/api/``).

    ``connections``: how many calls may be under way at once (more wait for
    a free one); the progress streams are not counted.
    """

    def __init__(
        self, api_url: str, token: str, timeout: float = 30, connections: int = 10
    ) -> None:
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.token = token
        self.timeout = timeout
        self.connections = connections
        self._http: AsyncHTTPClient | None = None

    @property
    def http(self) -> AsyncHTTPClient:
        """This client's own connections (made on first use, in the running loop)."""
        if self._http is None:
            self._http = AsyncHTTPClient(force_instance=True, max_clients=self.connections)
        return self._http

    def close(self) -> None:
        """Let go of the connections (calls under way fail)."""
        if self._http is not None:
            self._http.close()
            self._http = None

    def _url(self, path: str, query: dict[str, Any] | None = None) -> str:
        url = self.api_url + path.lstrip("/")
        return f"{url}?{urlencode(query)}" if query else url

    async def _fetch(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None
    ) -> HTTPResponse:
        """One call with the service token; hub errors become HubAPIError."""
        request = HTTPRequest(
            self._url(path, query),
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body),
            request_timeout=self.timeout,
            allow_nonstandard_methods=True,
        )
        try:
            return await self.http.fetch(request)
        except HTTPClientError as err:
            raise HubAPIError(err.code, _hub_message(err)) from err
        except OSError as err:
            raise HubAPIError(599, f"hub not reachable: {err}") from err

    async def request(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None
    ) -> Any:
        """One JSON call; returns the decoded body (None when empty)."""
        response = await self._fetch(method, path, body, query)
        return json.loads(response.body) if response.body else None

    @staticmethod
    def user_path(name: str, server: str = "") -> str:
        """``users/<name>/server`` (the default server: temporary users), or
        ``users/<name>/servers/<server>`` (a named server: logged-in users)."""
        if server:
            return f"users/{quote(name, safe='')}/servers/{quote(server, safe='')}"
        return f"users/{quote(name, safe='')}/server"

    async def info(self) -> dict[str, Any]:
        """``GET /`` -- the hub's version (answers without special scopes)."""
        result: dict[str, Any] = await self.request("GET", "")
        return result

    async def create_user(self, name: str) -> dict[str, Any]:
        """Create user ``name``; HubAPIError 409 if it exists."""
        result: dict[str, Any] = await self.request("POST", f"users/{quote(name, safe='')}")
        return result

    async def get_user(self, name: str, include_stopped: bool = False) -> dict[str, Any]:
        """The user model (with its active servers; ``include_stopped``: its stopped
        named servers too, marked ``"stopped": true``)."""
        query = {"include_stopped_servers": "1"} if include_stopped else None
        path = f"users/{quote(name, safe='')}"
        result: dict[str, Any] = await self.request("GET", path, query=query)
        return result

    async def delete_user(self, name: str, within: float = DELETE_SECONDS) -> None:
        """Delete ``name`` and its servers; a missing user is fine.

        The hub refuses to delete a user while one of their servers is still stopping
        (500 "Spawner ... is active", or 400), so the servers are stopped first (named
        ones removed), their stops waited for, and the deletion tried again while the
        hub refuses so; all of it within ``within`` seconds, then the last HubAPIError
        is raised."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + within
        path = f"users/{quote(name, safe='')}"
        try:
            servers = (await self.get_user(name)).get("servers") or {}
            for server in servers:
                await self.stop_server(name, server, remove=bool(server))
            await self._until_stopped(name, give_up)
            delay = 0.1
            while True:
                try:
                    await self.request("DELETE", path)
                    return
                except HubAPIError as err:
                    if err.status not in (400, 500) or loop.time() + delay > give_up:
                        raise
                await asyncio.sleep(delay)
                delay = min(2 * delay, 1.0)
        except HubAPIError as err:
            if err.status != 404:
                raise

    async def _until_stopped(self, name: str, give_up: float) -> None:
        """Wait until ``name`` has no active server or the loop's clock reaches
        ``give_up`` (the deletion then says why it failed)."""
        loop = asyncio.get_running_loop()
        delay = 0.1
        while (await self.get_user(name)).get("servers"):
            if loop.time() + delay > give_up:
                return
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)

    async def stop_server(self, name: str, server: str = "", remove: bool = False) -> None:
        """Stop ``name``'s server (interrupting a pending spawn); no user or no server
        running is fine.  A stop that takes a while goes on in the hub (202).
        ``remove``: a named server is deleted from the hub too (it no longer counts
        against ``named_server_limit_per_user``)."""
        body = {"remove": True} if remove and server else None
        try:
            await self.request("DELETE", self.user_path(name, server), body)
        except HubAPIError as err:
            if err.status not in (400, 404):  # 400: not running
                raise

    async def add_to_group(self, group: str, name: str) -> None:
        """Make ``name`` a member of hub group ``group``, creating the group if needed."""
        path = f"groups/{quote(group, safe='')}"
        try:
            await self.request("POST", f"{path}/users", {"users": [name]})
        except HubAPIError as err:
            if err.status != 404:
                raise
            with contextlib.suppress(HubAPIError):  # 409: made meanwhile
                await self.request("POST", path)
            await self.request("POST", f"{path}/users", {"users": [name]})

    async def create_token(self, name: str, scopes: list[str], note: str) -> str:
        """Issue an API token owned by ``name`` with ``scopes``; returns it."""
        body = {"scopes": scopes, "note": note}
        result = await self.request("POST", f"users/{quote(name, safe='')}/tokens", body)
        return str(result["token"])

    async def start_server(self, name: str, user_options: dict[str, Any], server: str = "") -> bool:
        """Ask for a server; True if it is already ready (201), False if pending (202)."""
        response = await self._fetch("POST", self.user_path(name, server), user_options)
        return response.code == 201

    async def active_users(self) -> list[dict[str, Any]]:
        """All users with an active (running or pending) server, with server models."""
        users: list[dict[str, Any]] = []
        offset, limit = 0, 200
        while True:
            query = {"state": "active", "offset": offset, "limit": limit}
            page = await self.request("GET", "users", query=query)
            users.extend(page)
            if len(page) < limit:
                return users
            offset += limit

    async def progress(self, name: str, server: str = "") -> AsyncIterator[dict[str, Any]]:
        """Follow the spawn-progress event stream (SSE) until it ends.

        The stream has a connection of its own (one of the pool would be held
        for the whole spawn), closed as soon as the caller stops iterating.
        """
        stream, response = await self._get_streamed(self.user_path(name, server) + "/progress")
        try:
            buffer = await response.chunks.get()
            if response.status != 200:
                body = (buffer or b"") + await response.body()
                status = response.status or 599
                raise HubAPIError(status, _hub_message_of(body, response.reason or "no answer"))
            while buffer is not None:
                while b"\n\n" in buffer:
                    frame, buffer = buffer.split(b"\n\n", 1)
                    for line in frame.decode(errors="replace").splitlines():
                        if line.startswith("data:"):
                            with contextlib.suppress(ValueError):
                                yield json.loads(line[5:].strip())
                chunk = await response.chunks.get()
                buffer = None if chunk is None else buffer + chunk
            if response.error is not None:
                raise HubAPIError(599, f"progress stream failed: {response.error}")
        finally:
            stream.close()

    async def _get_streamed(self, path: str) -> tuple[IOStream, _Streamed]:
        """GET ``path`` on a connection of its own: the connection, and the response
        as it comes."""
        url = urlsplit(self._url(path))
        secure = url.scheme == "https"
        try:
            stream = await TCPClient().connect(
                url.hostname or "127.0.0.1",
                url.port or (443 if secure else 80),
                ssl_options=ssl.create_default_context() if secure else None,
                timeout=self.timeout,
            )
        except (OSError, TimeoutError, StreamClosedError) as err:
            raise HubAPIError(599, f"hub not reachable: {err}") from err
        connection = HTTP1Connection(stream, True, HTTP1ConnectionParameters(no_keep_alive=True))
        headers = httputil.HTTPHeaders(
            {
                "Host": url.netloc,
                "Authorization": f"token {self.token}",
                "Accept": "text/event-stream",
            }
        )
        target = url.path + (f"?{url.query}" if url.query else "")
        response = _Streamed()
        try:
            await connection.write_headers(httputil.RequestStartLine("GET", target, ""), headers)
            connection.finish()
        except StreamClosedError as err:
            stream.close()
            raise HubAPIError(599, f"hub not reachable: {err}") from err
        response.read_from(connection)
        return stream, response
