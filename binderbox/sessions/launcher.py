"""The session seam: a built environment + content become a running server.

:class:`SessionLauncher` asks JupyterHub (through its REST API, with the
``binderbox`` service token) for a sandboxed single-user server, the way
BinderHub does:

1. quotas: ``total_quota`` (``0`` = maintenance: refuse everything) and the
   per-repository quota (``per_repo_quota``, or ``per_repo_quota_higher``
   for specs the provider's ``high_quota_specs`` match), counted over the hub's active
   servers by their ``repo_url`` user option -> :class:`QuotaExceeded`;
2. the hub user and server of the visitor's
   :class:`~binderbox.sessions.identity.IdentityPolicy`: for an anonymous
   visitor a temporary user named after the repository plus random characters
   (``[a-z0-9-]``, at most 30) with its default server; for a logged-in one
   the visitor's own user and a named server per repository and ref, at most
   ``named_server_limit`` at once (the next one is refused with a plain
   :class:`QuotaExceeded`), and a relaunch while that server runs goes to it;
3. a launch token: a hub API token owned by that user, allowed only to use
   that server (``access:servers!server=<name>/<server>``; the default server:
   ``access:servers!user=<name>``); ``?token=<token>`` links work on the
   single-user server;
4. ``POST .../server`` with the launch's
   :class:`~binderbox.runtime.options.LaunchOptions` as ``user_options``, then follow
   ``.../progress`` (SSE), relaying the hub's messages as ``Launching``
   events, ending with ``Ready``.

A launch is under way until its consumer has taken its session: asked for
what follows ``Ready`` (iterated to the end).  One that fails, or whose
consumer stops iterating before (a visitor who left: the iterator closed or
its task cancelled), is *undone* by a clean-up the launcher owns, which no
cancellation cuts short: the hub calls already sent are let finish, no
server is asked for after the consumer left, the server this launch asked
for is stopped (a pending spawn interrupted: the hub's ``DELETE .../server``)
and what the identity policy made removed (a temporary user deleted; a
logged-in user's named server removed, the user kept), retried for
:data:`FORGET_SECONDS` while the hub is busy or away.  Clean-ups use a hub
client of their own, so they never wait behind launches.

``launches_per_address`` bounds the launches one client address has under
way, an undone launch counting until its clean-up is over: leaving and
coming back does not start more sessions.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

from traitlets import Bool, Int, Unicode
from traitlets.config import LoggingConfigurable

from ..errors import LaunchError, QuotaExceeded
from ..events import Event, Launching
from ..providers.base import Resolved
from .hubclient import HubAPIError, HubClient
from .identity import (
    IdentityPolicy,
    TemporaryIdentity,
    Visitor,
    identity_for,
    identity_of,
    user_name_for,
)
from .request import SessionRequest, ready_event, session_options

__all__ = ["SessionLauncher", "SessionRequest", "user_name_for"]

#: seconds the removal of a temporary user is retried (the hub busy or restarting)
FORGET_SECONDS = 120.0
#: seconds the consumer of a launch that failed waits for its clean-up (which goes on)
CLEANUP_WAIT = 10.0


class _Abandoned(Exception):
    """The consumer left before the admission asked for a server: nothing more is asked."""


@dataclass
class _Launch:
    """One launch's state, shared by its consumer and its clean-up."""

    policy: IdentityPolicy = field(default_factory=TemporaryIdentity)
    #: the hub user, from just before it is asked for
    user: str | None = None
    #: the hub server of the launch ("" the default)
    server: str = ""
    #: this launch asked for the server (a relaunch that found it running did not)
    started: bool = False
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
    persistent_homes = Bool(
        True,
        help="""Logged-in visitors' sessions get their user's persistent home
        (binderbox/sessions/persistent.py); False: an ephemeral home, as anonymous ones.""",
    ).tag(config=True)
    named_server_limit = Int(
        5,
        help="""Sessions a logged-in user may run at once (one per repository and ref);
        the next is refused with a plain message.  0: no limit.  binderbox serve sets it
        from ManagedHub.named_server_limit, which the hub enforces too.""",
    )

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

    def identity(self, visitor: Visitor) -> IdentityPolicy:
        """The identity policy of ``visitor`` (see :func:`.identity.identity_for`)."""
        return identity_for(visitor, self.persistent_homes)

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
        policy = self.identity(req.visitor)
        launch = _Launch(policy, server=policy.server_name(req.resolved))
        # a task: a consumer that leaves does not cut a hub call short
        admission = asyncio.ensure_future(self._admit(req, launch))
        taken = False
        try:
            token, ready = await asyncio.shield(admission)
            name, server = str(launch.user), launch.server
            found: dict[str, str] = {}
            if not ready:
                async for event in self._follow(name, server, found):
                    yield event
            path = found.get("url")  # the hub's ready event names it
            if not path:
                model = await self._call(self.hub.get_user(name))
                path = model["servers"][server]["url"]
            yield ready_event(req, urljoin(req.launch_host or "/", path), token, policy)
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
        it: the second sees the first's pending server.  A launch whose server
        runs or starts already (a logged-in user's relaunch) passes no quota and
        follows that server.  Once the consumer has left, nothing more is asked.
        Returns (launch token, already ready?).
        """
        limited = bool(self.repo_quota(req.high_quota)) or self.total_quota is not None
        limited |= bool(launch.server and self.named_server_limit)
        async with self._admission if limited else contextlib.nullcontext():
            launch.check()
            running = None
            if launch.server:  # a named server of a user that may have it already
                running = await self._running(req, launch)
            if running is None:
                await self.check_quota(req.resolved, req.high_quota)
            launch.check()
            if not launch.server:
                await self._make_user(req, launch)
            name, server = str(launch.user), launch.server
            scope = (
                f"access:servers!server={name}/{server}"
                if server
                else f"access:servers!user={name}"
            )
            token = await self._call(self.hub.create_token(name, [scope], "binder launch"))
            if running is not None:
                return token, running
            options = self.user_options(req, token, launch.policy)
            launch.check()
            launch.started = True
            ready = await self._call(self.hub.start_server(name, options, server))
        return token, ready

    async def _running(self, req: SessionRequest, launch: _Launch) -> bool | None:
        """Make the user; whether its server of this launch is ready (False: starting),
        None when it does not run.  :class:`QuotaExceeded` when it does not and the user
        runs ``named_server_limit`` servers already."""
        name = await self._make_user(req, launch)
        model = await self._call(self.hub.get_user(name, include_stopped=True))
        servers = model.get("servers") or {}
        for server in [s for s, info in servers.items() if info.get("stopped")]:
            # the hub counts stopped named servers against its limit too: they hold
            # nothing (the home is the user's), so they go
            await self._call(self.hub.stop_server(name, server, remove=True))
            del servers[server]
        mine = servers.get(launch.server)
        if mine:
            if mine.get("ready"):
                return True
            if mine.get("pending") == "spawn":
                return False
            raise LaunchError(
                "Your session of this repository is stopping.",
                hint="Try again in a few seconds.",
                log_message=f"{launch.user}/{launch.server} is {mine.get('pending')}",
                status_code=409,
            )
        named = [n for n in servers if n]
        if self.named_server_limit and len(named) >= self.named_server_limit:
            raise QuotaExceeded(
                f"You are running {len(named)} sessions, the most this Binder allows at "
                f"once. Stop one of them on the home page to start another.",
                log_message=f"{launch.user} has {len(named)} named servers "
                f"(limit {self.named_server_limit})",
            )
        return None

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
            if launch.user is None or not (launch.started or launch.policy.deletes_user):
                return  # nothing of this launch's own to undo
            try:
                await self._forget(launch.policy, launch.user, launch.server)
            except Exception:
                self.log.exception("clean-up of %s failed", launch.user)

        task = asyncio.ensure_future(clean_up())
        self._cleanups.add(task)

        def over(done: asyncio.Task[None]) -> None:
            self._cleanups.discard(done)
            release()

        task.add_done_callback(over)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), CLEANUP_WAIT)

    def user_options(
        self, req: SessionRequest, token: str, policy: IdentityPolicy | None = None
    ) -> dict[str, Any]:
        """The ``user_options`` of the server (see :func:`.request.session_options`)."""
        return session_options(req, token, policy or self.identity(req.visitor))

    async def _make_user(self, req: SessionRequest, launch: _Launch) -> str:
        """This launch's user, as its identity policy makes it (``launch.user`` from
        just before it is asked for: a call that fails may still have made it)."""

        def note(name: str) -> None:
            launch.user = name

        try:
            launch.user = await launch.policy.make_user(self.hub, req.resolved, note)
        except HubAPIError as err:
            raise self._unavailable(err) from err
        return launch.user

    async def _follow(self, name: str, server: str, found: dict[str, str]) -> AsyncIterator[Event]:
        """Relay the hub's spawn progress until ready (its URL path into ``found["url"]``);
        LaunchError on failure."""
        try:
            async with asyncio.timeout(self.launch_timeout):
                async for event in self.hub.progress(name, server):
                    if event.get("failed"):
                        self.log.warning("spawn of %s failed: %s", name, event.get("message"))
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
        except HubAPIError as err:  # the stream broke (a busy hub): the spawn may go on
            self.log.warning("progress stream of %s failed (%s): polling its server", name, err)
            found["url"] = await self._poll_ready(name, server, err)
            return
        raise LaunchError(
            "The session could not be started.",
            log_message=f"progress stream of {name} ended before ready",
        )

    async def _poll_ready(self, name: str, server: str, broke: HubAPIError) -> str:
        """The URL path of ``name``'s server once the hub says it is ready, asking every
        half second; LaunchError when its spawn ended without one (or took too long)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.launch_timeout
        while loop.time() < deadline:
            try:
                model = (await self.hub.get_user(name)).get("servers", {}).get(server)
            except HubAPIError as err:
                if err.status != 599:
                    raise self._launch_failed(err) from err
                model = {"pending": "spawn"}  # the hub is busy: ask again
            if model and model.get("ready") and model.get("url"):
                return str(model["url"])
            if not model or model.get("pending") != "spawn":
                raise self._launch_failed(broke)
            await asyncio.sleep(0.5)
        raise LaunchError(
            f"The session did not start within {self.launch_timeout} s.",
            log_message=f"launch of {name} timed out (polling after {broke})",
        )

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except HubAPIError as err:
            raise self._launch_failed(err) from err

    async def _forget(self, policy: IdentityPolicy, name: str, server: str = "") -> None:
        """Undo ``name``'s session on ``server`` as ``policy`` says (a pending spawn
        interrupted; a temporary user deleted), retried for :data:`FORGET_SECONDS`."""
        hub = self.cleanup_hub
        loop = asyncio.get_running_loop()
        give_up = loop.time() + FORGET_SECONDS
        delay = 0.25
        while True:
            try:
                await policy.forget(hub, name, server)
                return
            except HubAPIError as err:  # 400: still stopping; 599: busy or away
                if loop.time() + delay > give_up:
                    self.log.warning("could not undo the session of %s: %s", name, err)
                    return
                self.log.debug("undoing the session of %s: %s; trying again", name, err)
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
        """End every session (a temporary user with it; logged-in users are kept);
        how many are left."""
        try:
            users = await self.hub.active_users()
        except HubAPIError as err:
            self.log.warning("cannot list sessions to stop them: %s", err)
            return -1
        slots = asyncio.Semaphore(at_once)

        async def end(user: dict[str, Any], server: str) -> None:
            async with slots:
                await self.end_session(user, server)

        ends = [end(u, server) for u in users for server in u.get("servers") or {}]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await asyncio.gather(*ends)
        return await self.count_running()

    async def end_session(self, user: dict[str, Any], server: str) -> None:
        """End the session ``server`` of the hub user model ``user``: a temporary user
        is deleted, a logged-in user's server stopped (their home is kept)."""
        await self._forget(identity_of(user), user["name"], server)

    # -- a logged-in user's sessions ------------------------------------------------

    async def sessions_of(self, visitor: Visitor) -> list[dict[str, Any]]:
        """The running (or starting) sessions of a logged-in ``visitor``: ``name`` (the
        server), ``url`` (its path), ``repo_url``, ``binder_request``, ``ready``,
        ``started``, ``last_activity``; [] for an anonymous one or an unknown user."""
        if visitor.name is None:
            return []
        try:
            model = await self.hub.get_user(visitor.name)
        except HubAPIError as err:
            if err.status == 404:
                return []
            raise self._unavailable(err) from err
        sessions = []
        for server, info in sorted((model.get("servers") or {}).items()):
            options = info.get("user_options") or {}
            sessions.append(
                {
                    "name": server,
                    "url": info.get("url"),
                    "ready": bool(info.get("ready")),
                    "repo_url": options.get("repo_url", ""),
                    "binder_request": options.get("binder_request", ""),
                    "started": info.get("started"),
                    "last_activity": info.get("last_activity"),
                }
            )
        return sessions

    async def stop_session(self, visitor: Visitor, server: str) -> None:
        """Stop (and remove from the hub, freeing its slot) the logged-in ``visitor``'s
        session ``server``.  An anonymous visitor has none: LaunchError 403."""
        if visitor.name is None:
            raise LaunchError("Log in to manage your sessions.", status_code=403)
        await self._forget(self.identity(visitor), visitor.name, server)

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
