"""A small client of JupyterHub's REST API (what binderbox's service needs).

Every call authenticates with the service's API token.  Failures raise
:class:`HubAPIError` carrying the HTTP status and the hub's own message
(callers turn it into a user-facing error); a hub that cannot be reached at
all gives status 599.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse


class HubAPIError(Exception):
    """The hub answered with an error (or not at all: status 599)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def _hub_message(err: HTTPClientError) -> str:
    body = err.response.body if err.response is not None else b""
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body).get("message") or err.message)
    return str(err.message)


class HubClient:
    """REST calls on ``api_url`` (e.g. ``http://127.0.0.1:8081/hub/api/``)."""

    def __init__(self, api_url: str, token: str, timeout: float = 30) -> None:
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.token = token
        self.timeout = timeout

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
            return await AsyncHTTPClient().fetch(request)
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
    def user_path(name: str) -> str:
        """``users/<name>/server`` (the default server: sessions use no named ones)."""
        return f"users/{quote(name, safe='')}/server"

    async def info(self) -> dict[str, Any]:
        """``GET /`` -- the hub's version (answers without special scopes)."""
        result: dict[str, Any] = await self.request("GET", "")
        return result

    async def create_user(self, name: str) -> dict[str, Any]:
        """Create user ``name``; HubAPIError 409 if it exists."""
        result: dict[str, Any] = await self.request("POST", f"users/{quote(name, safe='')}")
        return result

    async def get_user(self, name: str) -> dict[str, Any]:
        """The user model (with its servers)."""
        result: dict[str, Any] = await self.request("GET", f"users/{quote(name, safe='')}")
        return result

    async def delete_user(self, name: str) -> None:
        """Delete ``name`` (its servers are stopped first); a missing user is fine."""
        try:
            await self.request("DELETE", f"users/{quote(name, safe='')}")
        except HubAPIError as err:
            if err.status != 404:
                raise

    async def create_token(self, name: str, scopes: list[str], note: str) -> str:
        """Issue an API token owned by ``name`` with ``scopes``; returns it."""
        body = {"scopes": scopes, "note": note}
        result = await self.request("POST", f"users/{quote(name, safe='')}/tokens", body)
        return str(result["token"])

    async def start_server(self, name: str, user_options: dict[str, Any]) -> bool:
        """Ask for a server; True if it is already ready (201), False if pending (202)."""
        response = await self._fetch("POST", self.user_path(name), user_options)
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

    async def progress(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """Follow the spawn-progress event stream (SSE) until it ends."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        request = HTTPRequest(
            self._url(self.user_path(name) + "/progress"),
            headers={"Authorization": f"token {self.token}", "Accept": "text/event-stream"},
            request_timeout=3600,
            streaming_callback=queue.put_nowait,
        )

        async def fetch() -> None:
            try:
                await AsyncHTTPClient().fetch(request)
            finally:
                queue.put_nowait(None)

        task = asyncio.ensure_future(fetch())
        buffer = b""
        try:
            while (chunk := await queue.get()) is not None:
                buffer += chunk
                while b"\n\n" in buffer:
                    frame, buffer = buffer.split(b"\n\n", 1)
                    for line in frame.decode(errors="replace").splitlines():
                        if line.startswith("data:"):
                            with contextlib.suppress(ValueError):
                                yield json.loads(line[5:].strip())
            await asyncio.wait([task])
            err = task.exception()
            if err is not None:
                if isinstance(err, HTTPClientError):
                    raise HubAPIError(err.code, _hub_message(err)) from err
                raise HubAPIError(599, f"progress stream failed: {err}") from err
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
