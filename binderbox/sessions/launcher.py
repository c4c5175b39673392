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

A launch is under way until its consumer has taken its session: asked for
what follows ``Ready`` (iterated to the end).  One that fails, or whose
consumer stops iterating before (a visitor who left: the iterator closed or
its task cancelled), is *undone* by a clean-up the launcher owns, which no
cancellation cuts short: the hub calls already sent are let finish, no
server is asked for after the consumer left, the server is stopped (a
pending spawn interrupted: the hub's ``DELETE .../server``) and the
temporary user deleted, retried for :data:`FORGET_SECONDS` while the hub is
busy or away.  Clean-ups use a hub client of their own, so they never wait
behind launches.

``launches_per_address`` bounds the launches one client address has under
way, an undone launch counting until its clean-up is over: leaving and
coming back does not start more sessions.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import secrets
import string
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
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
#: seconds the removal of a temporary user is retried (the hub busy or restarting)
FORGET_SECONDS = 120.0
#: seconds the consumer of a launch that failed waits for its clean-up (which goes on)
CLEANUP_WAIT = 10.0


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
    (``per_repo_quota_higher`` applies);
    ``client_ip``: the requester's address (``launches_per_address``).
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
    client_ip: str = ""


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


class _Abandoned(Exception):
    """The consumer left before the admission asked for a server: nothing more is asked."""


@dataclass
class _Launch:
    """One launch's state, shared by its consumer and its clean-up."""

    #: the temporary user, from just before it is asked for
    user: str | None = None
    #: set when the consumer has left (or the launch failed)
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    def check(self) -> None:
        """Raise :class:`_Abandoned` once the consumer has left."""
        if self.gone.is_set():
            raise _Abandoned()


class AddressCounts:
    """Launches under way per client address."""

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()

    def take(self, address: str, limit: int) -> Callable[[], None]:
        """Count one launch of ``address``; returns what ends it (once; again: nothing).

        Raises :class:`QuotaExceeded` when ``address`` has ``limit`` under way
        (``limit`` 0: no limit).
        """
        if limit and self._counts[address] >= limit:
            raise QuotaExceeded(
                "Too many launches from your address at the same time."
                " Wait until one is ready, then try again.",
                log_message=f"{address or 'an unknown address'} has {limit} launches under way",
            )
        self._counts[address] += 1
        counted = True

        def release() -> None:
            nonlocal counted
            if counted:
                counted = False
                self._counts[address] -= 1
                if self._counts[address] <= 0:
                    del self._counts[address]

        return release


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
    launches_per_address = Int(
        10,
        help="""Launches one client address may have under way at once: from asking the hub
        for a session until it is ready, or removed again when the visitor left first (so
        leaving and coming back does not start more).  Past it a launch fails with 429.
        A classroom behind one address launching in the same seconds may need more;
        0: no limit.""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._admission = asyncio.Lock()
        self._hub: HubClient | None = None
        self._cleanup_hub: HubClient | None = None
        self.addresses = AddressCounts()
        #: clean-ups under way (owned here: their consumers may be gone)
        self._cleanups: set[asyncio.Task[None]] = set()

    @property
    def hub(self) -> HubClient:
        """The REST client of launches."""
        if self._hub is None:
            self._hub = HubClient(self.hub_api_url, self.api_token)
        return self._hub

    @property
    def cleanup_hub(self) -> HubClient:
        """The REST client of clean-ups: connections of its own, so removing a user
        never waits behind the calls of launches."""
        if self._cleanup_hub is None:
            self._cleanup_hub = HubClient(self.hub_api_url, self.api_token)
        return self._cleanup_hub

    async def aclose(self, within: float = 30) -> None:
        """Wait (at most ``within`` s) for the clean-ups under way, then let go of the
        hub connections."""
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=within)
        for client in (self._hub, self._cleanup_hub):
            if client is not None:
                client.close()
        self._hub = self._cleanup_hub = None

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

    async def launch(self, req: SessionRequest) -> AsyncGenerator[Event, None]:
        """Yield ``Launching`` events, then ``Ready``.  Raises QuotaExceeded / LaunchError.

        The session is the consumer's once it asks for what follows ``Ready``;
        a consumer that stops before undoes the launch (see the module docstring).
        """
        yield Launching(message=f"Launching server for {req.resolved.repo_url}")
        release = self.addresses.take(req.client_ip, self.launches_per_address)
        launch = _Launch()
        # a task: a consumer that leaves does not cut a hub call short
        admission = asyncio.ensure_future(self._admit(req, launch))
        taken = False
        try:
            token, ready = await asyncio.shield(admission)
            name = str(launch.user)
            found: dict[str, str] = {}
            if not ready:
                async for event in self._follow(name, found):
                    yield event
            path = found.get("url")  # the hub's ready event names it
            if not path:
                model = await self._call(self.hub.get_user(name))
                path = model["servers"][""]["url"]
            yield self._ready(req, urljoin(req.launch_host or "/", path), token)
            taken = True
        finally:
            if taken:
                release()
            else:
                await self._undo(admission, launch, release)

    async def _admit(self, req: SessionRequest, launch: _Launch) -> tuple[str, bool]:
        """Check the quotas and ask for the server as one step.

        Where a quota applies, launches are admitted one at a time (the step
        takes a few hub API calls), so two launches at once cannot both pass
        it: the second sees the first's pending server.  Once the consumer
        has left, nothing more is asked.  Returns (launch token, already ready?).
        """
        limited = bool(self.repo_quota(req.high_quota)) or self.total_quota is not None
        async with self._admission if limited else contextlib.nullcontext():
            launch.check()
            await self.check_quota(req.resolved, req.high_quota)
            launch.check()
            name = await self._make_user(req, launch)
            scopes = [f"access:servers!user={name}"]
            token = await self._call(self.hub.create_token(name, scopes, "binder launch"))
            options = self.user_options(req, token)
            launch.check()
            ready = await self._call(self.hub.start_server(name, options))
        return token, ready

    async def _undo(
        self, admission: asyncio.Future[Any], launch: _Launch, release: Callable[[], None]
    ) -> None:
        """Clean up after a launch whose session nobody took (it failed, or its consumer
        left): in a task of the launcher's, counted against the address until it is
        over; the consumer waits for it at most :data:`CLEANUP_WAIT` s."""
        launch.gone.set()

        async def clean_up() -> None:
            with contextlib.suppress(Exception):  # a failure is the consumer's to see
                await admission
            if launch.user is None:
                return
            try:
                await self._forget(launch.user)
            except Exception:
                self.log.exception("clean-up of temporary user %s failed", launch.user)

        task = asyncio.ensure_future(clean_up())
        self._cleanups.add(task)

        def over(done: asyncio.Task[None]) -> None:
            self._cleanups.discard(done)
            release()

        task.add_done_callback(over)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), CLEANUP_WAIT)

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

    async def _make_user(self, req: SessionRequest, launch: _Launch) -> str:
        """Create this launch's temporary user (``launch.user`` from just before it is
        asked for: a call that fails may still have made it); returns its name."""
        for _ in range(5):
            name = launch.user = user_name_for(req.resolved)
            try:
                await self.hub.create_user(name)
            except HubAPIError as err:
                if err.status == 409:  # someone else's
                    launch.user = None
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
        """Stop ``name``'s server (interrupting a pending spawn) and delete the user,
        retried for :data:`FORGET_SECONDS`."""
        hub = self.cleanup_hub
        loop = asyncio.get_running_loop()
        give_up = loop.time() + FORGET_SECONDS
        delay = 0.25
        while True:
            try:
                await hub.stop_server(name)
                await hub.delete_user(name)
                return
            except HubAPIError as err:  # 400: still stopping; 599: busy or away
                if loop.time() + delay > give_up:
                    self.log.warning("could not delete temporary user %s: %s", name, err)
                    return
                self.log.debug("deleting temporary user %s: %s; trying again", name, err)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)

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
