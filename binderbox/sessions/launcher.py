"""The session seam: a built environment + content become a running server.

:class:`SessionLauncher` asks JupyterHub (through its REST API, with the
``binderbox`` service token) for a sandboxed single-user server, the way
BinderHub does:

1. quotas: ``total_quota`` (``0`` = maintenance: refuse everything) and the
   per-repository quota (``per_repo_quota``, or ``per_repo_quota_higher``
   for specs the provider's ``high_quota_specs`` match), counted over the hub's active
   servers by their ``repo_url`` user option -> :class:`QuotaExceeded`;
2. a temporary user named after the repository plus random characters
   (``[a-z0-9-]``, at most 30), with its default server (nobody logs in:
   see :mod:`binderbox.hub.config`);
3. a launch token: a hub API token owned by that user, allowed only to use
   its servers (``access:servers!user=<name>``); ``?token=<token>`` links
   work on the single-user server;
4. ``POST .../server`` with the launch's
   :class:`~binderbox.runtime.options.LaunchOptions` as ``user_options``, then follow
   ``.../progress`` (SSE), relaying the hub's messages as ``Launching``
   events, ending with ``Ready``.

On failure (or when the consumer stops iterating before ``Ready``) the
temporary user is deleted, so nothing is left half-started.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import string
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

from traitlets import Int, Unicode
from traitlets.config import LoggingConfigurable

from ..errors import LaunchError, QuotaExceeded
from ..events import Event, Launching, Ready
from ..providers.base import Resolved
from ..runtime.options import BinderInfo, LaunchOptions
from .hubclient import HubAPIError, HubClient

#: JupyterHub user names we make: lowercase letters, digits, '-'; at most 30
NAME_MAX = 30
RANDOM_CHARS = 8


@dataclass(frozen=True)
class SessionRequest:
    """What to launch.

    ``env_key``/``env_path``: the built environment (its store key and host
    directory); ``content_path``: the repository content copied into the
    home; ``resolved``: the version launched (for ``BINDER_*`` and quotas);
    ``start_script``: the repository's ``start`` script relative to its root;
    ``launch_host``: the public base URL of the service (``http://host:8000/``);
    ``data_mounts``: datasets bound read-only at ``~/data/<name>``;
    ``hold_files``: use-lock files (``locks/<key>.use`` of the store and of
    the dataset cache) the session holds shared while it runs, so neither
    its environment nor its datasets are evicted;
    ``high_quota``: the spec matches its provider's ``high_quota_specs``
    (``per_repo_quota_higher`` applies).
    """

    env_key: str
    env_path: Path
    content_path: Path
    resolved: Resolved
    start_script: str | None = None
    launch_host: str = ""
    data_mounts: Mapping[str, Path] = field(default_factory=dict)
    hold_files: Sequence[Path] = ()
    high_quota: bool = False


def user_name_for(resolved: Resolved) -> str:
    """A fresh temporary user name: readable repository prefix + random chars."""
    path = urlparse(resolved.repo_url).path if resolved.repo_url else resolved.spec
    parts = [p for p in re.split(r"[/:]+", path.removesuffix(".git")) if p][-2:]
    room = NAME_MAX - RANDOM_CHARS - 1
    slugs = [re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts]
    prefix = "-".join(s for s in slugs if s)
    if len(prefix) > room:  # keep the repository's own name readable
        prefix = slugs[-1] if slugs else ""
    prefix = prefix[:room].rstrip("-") or "binder"
    alphabet = string.ascii_lowercase + string.digits
    suffix = "".join(secrets.choice(alphabet) for _ in range(RANDOM_CHARS))
    return f"{prefix}-{suffix}"


class SessionLauncher(LoggingConfigurable):
    """Launches sessions through the hub.  See the module docstring."""

    hub_api_url = Unicode("http://127.0.0.1:8081/hub/api/", help="The hub's REST API URL.").tag(
        config=True
    )
    api_token = Unicode(help="binderbox's service token for the hub API.").tag(config=True)
    per_repo_quota = Int(0, help="Running sessions allowed per repository (0 = unlimited).").tag(
        config=True
    )
    per_repo_quota_higher = Int(
        0,
        help="""Per-repository quota for specs matching their provider's high_quota_specs
        (e.g. c.GitHubProvider.high_quota_specs = ['^org/.*']); 0 = unlimited.""",
    ).tag(config=True)
    total_quota = Int(
        None,
        allow_none=True,
        help="Running sessions allowed in total (None = unlimited, 0 = maintenance: "
        "refuse all launches).",
    ).tag(config=True)
    maintenance_message = Unicode(
        "This Binder is in maintenance mode: no new sessions can start right now.",
        help="What users are told when total_quota is 0.",
    ).tag(config=True)
    launch_timeout = Int(
        300, help="Seconds to wait for a session to be ready before giving up."
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._admission = asyncio.Lock()

    @property
    def hub(self) -> HubClient:
        """The REST client (created per use: cheap, no state)."""
        return HubClient(self.hub_api_url, self.api_token)

    # -- quotas -----------------------------------------------------------------

    def repo_quota(self, high_quota: bool) -> int:
        """The per-repository quota that applies (0 = unlimited)."""
        return self.per_repo_quota_higher if high_quota else self.per_repo_quota

    async def _servers(self) -> list[dict[str, Any]]:
        try:
            users = await self.hub.active_users()
        except HubAPIError as err:
            raise self._unavailable(err) from err
        return [s for u in users for s in (u.get("servers") or {}).values()]

    async def check_quota(self, resolved: Resolved, high_quota: bool = False) -> None:
        """Raise :class:`QuotaExceeded` if a new session for ``resolved`` is over a quota."""
        if self.total_quota == 0:
            raise QuotaExceeded(self.maintenance_message, status_code=503)
        quota = self.repo_quota(high_quota)
        if not quota and self.total_quota is None:
            return
        servers = await self._servers()
        if self.total_quota is not None and len(servers) >= self.total_quota:
            raise QuotaExceeded(
                "Too many users on this Binder right now! Try again soon.",
                log_message=f"total quota {self.total_quota} reached",
            )
        same = [
            s for s in servers if (s.get("user_options") or {}).get("repo_url") == resolved.repo_url
        ]
        if quota and len(same) >= quota:
            raise QuotaExceeded(
                f"Too many users running {resolved.repo_url}! Try again soon.",
                log_message=f"{resolved.repo_url} has {len(same)} servers, quota {quota}",
            )

    # -- launch -----------------------------------------------------------------

    async def launch(self, req: SessionRequest) -> AsyncIterator[Event]:
        """Yield ``Launching`` events, then ``Ready``.  Raises QuotaExceeded / LaunchError."""
        yield Launching(message=f"Launching server for {req.resolved.repo_url}")
        name, token, ready = await self._admit(req)
        done = False
        found: dict[str, str] = {}
        try:
            if not ready:
                async for event in self._follow(name, found):
                    yield event
            path = found.get("url")  # the hub's ready event names it
            if not path:
                model = await self._call(self.hub.get_user(name))
                path = model["servers"][""]["url"]
            done = True
            yield self._ready(req, urljoin(req.launch_host or "/", path), token)
        finally:
            if not done:
                await asyncio.shield(self._forget(name))

    async def _admit(self, req: SessionRequest) -> tuple[str, str, bool]:
        """Check the quotas and ask for the server as one step.

        Where a quota applies, launches are admitted one at a time (the step
        takes a few hub API calls), so two launches at once cannot both pass
        it: the second sees the first's pending server.  Returns (temporary
        user, launch token, already ready?).
        """
        limited = bool(self.repo_quota(req.high_quota)) or self.total_quota is not None
        async with self._admission if limited else contextlib.nullcontext():
            await self.check_quota(req.resolved, req.high_quota)
            name = await self._make_user(req)
            try:
                scopes = [f"access:servers!user={name}"]
                token = await self._call(self.hub.create_token(name, scopes, "binder launch"))
                options = self.user_options(req, token)
                ready = await self._call(self.hub.start_server(name, options))
            except BaseException:
                await asyncio.shield(self._forget(name))
                raise
        return name, token, ready

    def user_options(self, req: SessionRequest, token: str) -> dict[str, Any]:
        """The ``user_options`` of the server: the launch's :class:`LaunchOptions`."""
        return LaunchOptions(
            env_key=req.env_key,
            env_path=req.env_path,
            content_path=req.content_path,
            start_script=req.start_script,
            data_mounts=req.data_mounts,
            hold_files=tuple(req.hold_files),
            token=token,
            binder=binder_info(req),
        ).to_user_options()

    def _ready(self, req: SessionRequest, url: str, token: str) -> Ready:
        return Ready(
            message=f"server running at {url}",
            url=url,
            token=token,
            image=req.env_key,
            **binder_info(req).fields(),
        )

    async def _make_user(self, req: SessionRequest) -> str:
        """Create this launch's temporary user; returns its name."""
        for _ in range(5):
            name = user_name_for(req.resolved)
            try:
                await self.hub.create_user(name)
            except HubAPIError as err:
                if err.status == 409:
                    continue
                raise self._unavailable(err) from err
            return name
        raise LaunchError("Could not create a session user.", log_message="5 name collisions")

    async def _follow(self, name: str, found: dict[str, str]) -> AsyncIterator[Event]:
        """Relay the hub's spawn progress until ready (its URL path into ``found["url"]``);
        LaunchError on failure."""
        try:
            async with asyncio.timeout(self.launch_timeout):
                async for event in self.hub.progress(name):
                    if event.get("failed"):
                        raise LaunchError(
                            "The session could not be started.",
                            hint="Try again; if it keeps failing, tell the operator.",
                            log_message=f"spawn of {name} failed: {event.get('message')}",
                        )
                    if event.get("message"):
                        yield Launching(message=str(event["message"]))
                    if event.get("ready"):
                        if isinstance(event.get("url"), str):
                            found["url"] = event["url"]
                        return
        except TimeoutError as err:
            raise LaunchError(
                f"The session did not start within {self.launch_timeout} s.",
                log_message=f"launch of {name} timed out",
            ) from err
        except HubAPIError as err:
            raise self._launch_failed(err) from err
        raise LaunchError(
            "The session could not be started.",
            log_message=f"progress stream of {name} ended before ready",
        )

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except HubAPIError as err:
            raise self._launch_failed(err) from err

    async def _forget(self, name: str) -> None:
        try:
            await self.hub.delete_user(name)
        except HubAPIError as err:
            self.log.warning("could not delete temporary user %s: %s", name, err)

    @staticmethod
    def _launch_failed(err: HubAPIError) -> LaunchError:
        return LaunchError(
            "The session could not be started.",
            hint="Try again; if it keeps failing, tell the operator.",
            log_message=f"hub API error {err.status}: {err.message}",
        )

    @staticmethod
    def _unavailable(err: HubAPIError) -> LaunchError:
        return LaunchError(
            "The session service is not available right now.",
            hint="Try again in a minute.",
            log_message=f"hub API error {err.status}: {err.message}",
            status_code=503,
        )

    # -- shutdown -----------------------------------------------------------------

    async def count_running(self) -> int:
        """How many sessions run now (0 when the hub does not answer)."""
        try:
            return len(await self._servers())
        except LaunchError:
            return 0

    async def stop_all(self, at_once: int = 8, within: float = 120) -> int:
        """End every session (its temporary user with it); how many are left."""
        try:
            users = [u["name"] for u in await self.hub.active_users()]
        except HubAPIError as err:
            self.log.warning("cannot list sessions to stop them: %s", err)
            return -1
        slots = asyncio.Semaphore(at_once)

        async def end(name: str) -> None:
            async with slots:
                await self._forget(name)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await asyncio.gather(*(end(name) for name in users))
        return await self.count_running()

    # -- health -------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """``{"service": "JupyterHub API", "ok": bool, ...}`` for /health."""
        result: dict[str, Any] = {"service": "JupyterHub API", "ok": False}
        try:
            info = await self.hub.info()
            servers = await self._servers()
        except (HubAPIError, LaunchError) as err:
            result["error"] = str(err)
            return result
        result.update(
            ok=True,
            version=info.get("version"),
            running=len(servers),
            total_quota=self.total_quota,
            quota_ok=self.total_quota is None or len(servers) < self.total_quota,
        )
        return result


def binder_info(req: SessionRequest) -> BinderInfo:
    """What a launch tells about its repository: the ``ready`` event's fields and the
    session's ``BINDER_*`` variables, under the same names."""
    r = req.resolved
    return BinderInfo(
        repo_url=r.repo_url,
        binder_ref_url=r.ref_url,
        binder_launch_host=req.launch_host,
        binder_request=r.binder_request,
        binder_persistent_request=r.binder_persistent_request,
    )
