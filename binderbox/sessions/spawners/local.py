"""SandboxSpawner: binder sessions as bubblewrap sandboxes on this machine.

The hub loads this class (``c.JupyterHub.spawner_class``).  What to launch is the
server's :class:`~binderbox.runtime.options.LaunchOptions` (read and checked by
:class:`~binderbox.sessions.spawners.mixin.BinderSpawnerMixin`); every host path
must lie under the data directory or ``allowed_roots``, so a user who can start
their own server cannot mount arbitrary host directories.  The home is the
launch's :class:`~binderbox.sessions.homes.HomePolicy` (``LaunchOptions.home``):
an ephemeral one is a fresh private copy of the content (``cp -a
--reflink=auto``, never hard links: the home is writable), a persistent one the
user's own home with the content placed in a folder of it; ``hold_files`` are
taken as shared ``flock`` use-locks and handed to the session's supervisor
(``pass_fds``): the locks live exactly as long as the session, across hub
restarts, so eviction (which needs the lock exclusively) never removes what a
session uses.  The launch token is a hub API token of the user (scope
``access:servers!user=<name>``); the server gets
``JUPYTERHUB_ALLOW_TOKEN_IN_URL=1`` so ``?token=<token>`` links work, like
BinderHub's launch links.

Process layout and why:

* ``start`` runs ``python -m binderbox.runtime.supervise`` in a new session
  (setsid).  The supervisor puts ``bwrap`` into the session's cgroups
  (:mod:`binderbox.runtime.limits`) and is its parent, so
  ``--die-with-parent`` refers to it, not to the hub: sessions survive a
  restart of the hub (``cleanup_servers = False``).  The supervisor's pid
  and start time are the spawner state; ``poll`` checks that process (a
  zombie or a reused pid counts as gone), ``stop`` signals its process group
  (SIGTERM, then SIGKILL).  Output goes to ``<data>/logs/sessions/``.
* The sandbox (:class:`binderbox.runtime.sandbox.Sandbox`): own user, pid, ipc and
  uts namespaces, uid 1000 ``jovyan`` inside, the system directories, the
  environment and its interpreter (``.binderbox/build.json``) read-only, the
  home ``<data>/homes/<user>-<server>`` writable at ``/home/jovyan``, data
  read-only.  Its bubblewrap arguments (the environment, with the tokens) go
  through a memory file descriptor, never a command line.
* Host uid and network (:class:`~binderbox.runtime.host.SandboxHost`): when
  binderbox runs as root the session runs as a host uid leased for it alone
  (the home is handed to it; a persistent home has a uid of its own for good,
  which all sessions of its user run as), in a network namespace of its own on the sandbox
  bridge, at an address leased for it: the hub and the proxy reach the server
  at ``<address>:8888``; the session reaches nothing on the host but its hub's
  API port (an nftables element added here and removed at the end).  The
  leases' descriptors go to the supervisor, so they last as long as the session.
  Not root: the service's uid mapped to 1000, the host network, 127.0.0.1.
* Limits: memory, CPU and pids in the session's cgroups; the supervisor stops
  the session when its home grows past ``home_limit`` (measured, there is no
  filesystem quota here; a persistent home is kept, the session stopped) or
  when ``binderbox serve`` has been gone for ``orphan_timeout`` seconds (it
  holds ``<data>/service.lock`` while it runs).
* Readiness: JupyterHub waits for ``/api`` in ``User._wait_up`` ->
  ``Server.wait_up`` -> ``jupyterhub.utils.wait_for_http_server``, which
  retries with ``exponential_backoff`` (random sleeps up to 0.2, 0.4, 0.8...
  s): about a second lost per launch, and no hook on the spawner.  So
  ``start`` polls the server itself every ``ready_poll_interval`` (50 ms)
  and returns only once it answers; the hub's first check then succeeds at
  once (measured: the hub marks the server ready ~10 ms after it answers).
  ``progress`` relays the steps of ``start`` to the hub's progress stream.
* When the server stops (deleted, culled, crashed) its cgroups and hub element
  are removed, and its home when the policy says so (ephemeral homes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.utils import maybe_future, random_port
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Float, Instance, Int, Unicode, default, validate

from ...environments.spec import HOME
from ...logs import tail
from ...runtime.host import Prepared, SandboxHost, tree_options
from ...runtime.layout import env_sandbox
from ...runtime.leases import Lease
from ...runtime.limits import Limits, SessionLimits, default_limits
from ...runtime.netns import SandboxNet
from ...runtime.options import LaunchOptions
from ...runtime.sandbox import Sandbox
from ...runtime.treewatch import WatchedTree
from ...store.locks import FileLock
from ...util.procs import start_ticks
from ...util.sizes import parse_size, valid_size
from .. import serverext
from ..homes import HomePolicy, HomeSetup, home_policy
from .mixin import BinderSpawnerMixin

_T = TypeVar("_T")

#: the port of every session's server inside its own network namespace
SESSION_PORT = 8888


class SandboxSpawner(BinderSpawnerMixin, LocalProcessSpawner):  # type: ignore[misc]
    """Sandboxed single-user servers for binder launches.  See the module docstring."""

    data_dir = Unicode(
        help="binderbox's data directory (homes under <data_dir>/homes, logs under "
        "<data_dir>/logs/sessions)."
    ).tag(config=True)

    pids_limit = Int(
        512,
        help="Processes and threads a session may have at once (0 = no limit); enforced "
        "where the pids cgroup controller is writable.",
    ).tag(config=True)
    home_limit = Unicode(
        "2G",
        help="""Disk a session's home may take ('' = no limit).  There is no filesystem
        quota: the session's supervisor measures the home (every home_check_interval
        seconds, and sooner when the free space of its filesystem drops enough for it to
        be over) and stops a session over it; its home is then removed.  One file alone
        is held to it by the kernel (RLIMIT_FSIZE).""",
    ).tag(config=True)
    home_check_interval = Int(
        15, help="Seconds between two full measurements of a home (see home_limit)."
    ).tag(config=True)

    log_limit = Unicode(
        "10M",
        help="""Bytes of a session's output (its server's and kernels' log lines) kept in
        <data>/logs/sessions/ ('' = no limit); the rest is dropped.""",
    ).tag(config=True)

    @validate("home_limit", "log_limit")
    def _valid_sizes(self, proposal: dict[str, Any]) -> str:
        return valid_size(proposal)

    busy_interval = Float(
        10.0,
        help="""Seconds between two looks of a session's server at its kernels: while one
        is busy (a long cell that prints nothing) the server counts as active for the
        idle culler (binderbox/sessions/serverext).""",
    ).tag(config=True)
    orphan_timeout = Int(
        600,
        help="Seconds a session keeps running after binderbox serve is gone (then it ends "
        "itself; 0 = never).",
    ).tag(config=True)
    host = Instance(SandboxHost, help="Where sessions run (uids, network).")

    @default("host")
    def _default_host(self) -> SandboxHost:
        return SandboxHost(parent=self)

    @classmethod
    def limits_of(cls, config: dict[str, Any]) -> SessionLimits:
        """The limits sessions get from the hub's ``c.SandboxSpawner`` settings
        ``config`` (the others at their defaults), for /health in binderbox serve."""
        traits = cls.class_traits()

        def setting(name: str) -> Any:
            return config[name] if name in config else traits[name].default()

        mem = setting("mem_limit")
        limits = Limits(
            parse_size(str(mem or "")), float(setting("cpu_limit") or 0), setting("pids_limit")
        )
        home = parse_size(str(setting("home_limit")))
        return SessionLimits(limits, home, float(setting("home_check_interval")))

    @default("ip")
    def _default_ip(self) -> str:
        return "127.0.0.1"

    @default("term_timeout")
    def _default_term_timeout(self) -> int:
        return 5

    # -- state ------------------------------------------------------------------

    start_ticks: int = 0
    #: the session's host uid and address (None: the service's uid, the host network)
    sandbox_uid: int | None = None
    sandbox_ip: str | None = None
    _messages: list[dict[str, Any]]
    proc: subprocess.Popen[bytes] | None  # the trait of LocalProcessSpawner, typed

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore the supervisor's pid and start time after a hub restart."""
        super().load_state(state)
        self.start_ticks = int(state.get("start_ticks", 0))
        self.sandbox_uid = state.get("sandbox_uid")
        self.sandbox_ip = state.get("sandbox_ip")

    def get_state(self) -> dict[str, Any]:
        """The supervisor's pid and start time."""
        state: dict[str, Any] = super().get_state()
        if self.pid:
            state.update(
                start_ticks=self.start_ticks,
                sandbox_uid=self.sandbox_uid,
                sandbox_ip=self.sandbox_ip,
            )
        return state

    def clear_state(self) -> None:
        """Forget the supervisor."""
        super().clear_state()
        self.start_ticks = 0

    # -- paths ------------------------------------------------------------------

    @property
    def session_name(self) -> str:
        """``<user>-default`` for the default server, ``<user>-<server>-<hash>`` for a
        named one (the hash of both names keeps ``alice``'s server ``x-default`` apart
        from user ``alice-x``'s default server)."""
        if not self.name:
            return f"{self.user.name}-default"
        digest = hashlib.sha256(f"{self.user.name}/{self.name}".encode()).hexdigest()[:8]
        return f"{self.user.name}-{self.name}-{digest}"

    @property
    def home_policy(self) -> HomePolicy:
        """The launch's home policy (ephemeral unless the options ask for persistent;
        read without the other checks, so a clean-up after bad options still works)."""
        persistent = (self.user_options or {}).get("home") == "persistent"
        return home_policy("persistent" if persistent else "ephemeral")

    @property
    def home_path(self) -> Path:
        """The session's home on the host."""
        return self.home_policy.path(Path(self.data_dir), self.user.name, self.session_name)

    def option_roots(self) -> list[Path]:
        """The data directory and ``allowed_roots``."""
        return [Path(self.data_dir), *super().option_roots()]

    # -- lifecycle ----------------------------------------------------------------

    def _sandbox(self, options: LaunchOptions, setup: HomeSetup) -> Sandbox:
        box = env_sandbox(options.env_dir, self.home_path)  # the layout run_in_env uses too
        for name, host in sorted(options.data_mounts.items()):
            box.ro_bind(host, f"{HOME}/data/{name}")
        box.ro_bind(serverext.install(Path(self.data_dir)), serverext.INSIDE)
        box.setenv(
            {**self.get_env(), **serverext.environment(self.busy_interval), **setup.environment}
        )
        return box

    def _command(self, setup: HomeSetup) -> list[str]:
        return [*setup.command_prefix, *self.cmd, *self.get_args()]

    @staticmethod
    def _take_holds(paths: list[Path], holds: list[FileLock]) -> None:
        """Shared use-locks on ``paths`` into ``holds`` (blocks briefly while an eviction
        finishes)."""
        for path in paths:
            holds.append(FileLock.acquire(path, shared=True))

    @staticmethod
    async def _in_thread(fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` in a thread; cancelled, it waits for the thread to end, so what
        the thread took (locks, leases, a home) is known to the clean-up."""
        work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await work
            raise

    async def start(self) -> tuple[str, int]:
        """Start the sandboxed server; return (ip, port) once it answers HTTP.

        A start that fails or is interrupted (the hub stops a pending spawn when its
        visitor left) before the supervisor runs undoes what it made."""
        self._messages = []
        options = self.launch_options
        self.apply_size(options)
        if not (options.env_dir / "bin" / "jupyterhub-singleuser").exists():
            raise web.HTTPError(400, "the environment has no jupyterhub-singleuser")
        holds: list[FileLock] = []
        leases: list[Lease] = []
        try:  # the supervisor has its own copies of every descriptor
            held = [*options.hold_files, *filter(None, [self.home_policy.use_lock(self.home_path)])]
            await self._in_thread(self._take_holds, held, holds)
            return await self._start_holding(options, [h.fileno() for h in holds], leases)
        except BaseException:
            if self.proc is None:
                await asyncio.shield(asyncio.to_thread(self._cleanup))
            raise
        finally:
            for hold in holds:
                hold.release()
            for lease in leases:
                lease.release()

    def _place(self, leases: list[Lease]) -> SandboxNet | None:
        """Lease the session's uid and address (blocking); sets ip, port and state."""
        self.sandbox_uid, lease = self.home_policy.uid(self.host, self.home_path)
        if lease is not None:
            leases.append(lease)
        net = None
        if self.host.network.enabled:
            self.host.network.ensure_current()
            net, address = self.host.network.claim("session")
            leases.append(address)
            self.host.network.allow_hub(net.address, self.hub_port)
            self.ip, self.port = net.address, SESSION_PORT
        elif self.port == 0:
            self.port = random_port()
        self.sandbox_ip = net.address if net else None
        return net

    @property
    def hub_port(self) -> int:
        """The port of the hub's API, as sessions reach it."""
        return int(urlsplit(self.hub.api_url).port or 80)

    async def _start_holding(
        self, options: LaunchOptions, holds: list[int], leases: list[Lease]
    ) -> tuple[str, int]:
        net = await self._in_thread(self._place, leases)
        self.report(10, "Preparing the home")
        setup = await self._in_thread(
            self.home_policy.prepare, self.home_path, options, self.sandbox_uid
        )
        configured = str(getattr(self, "_configured_url", "") or self.default_url or "")
        self._configured_url = configured
        self.default_url = setup.default_url or configured
        limits = Limits(int(self.mem_limit or 0), self.cpu_limit or 0.0, self.pids_limit)
        cgroups = default_limits().create(self.session_name, limits)
        prepared = self.host.prepare(
            self._sandbox(options, setup),
            self._command(setup),
            uid=self.sandbox_uid,
            net=net,
            cgroups=cgroups,
            options=self._watchdogs(),
            keep_fds=[*holds, *(lease.fd for lease in leases)],
        )
        self.report(30, "Starting the sandboxed Jupyter server")
        try:
            self.proc = self._spawn(prepared)
        finally:
            prepared.close()
        self.pid = self.proc.pid
        self.start_ticks = start_ticks(self.pid) or 0
        self.log.info("Started session %s (supervisor pid %d)", self.session_name, self.pid)
        await self._wait_ready()
        return (self.ip, self.port)

    def _watchdogs(self) -> list[str]:
        """The supervisor's options: the service lock, the home limit."""
        options = []
        log_limit = parse_size(self.log_limit)
        if log_limit:
            options += ["--output-limit", str(log_limit)]
        if self.orphan_timeout:
            lock = Path(self.data_dir) / "service.lock"
            options += ["--service-lock", str(lock), "--orphan-timeout", str(self.orphan_timeout)]
        limit = parse_size(self.home_limit)
        if limit:
            home = WatchedTree(self.home_path, limit, self.host.files_limit)
            options += tree_options([home], float(self.home_check_interval))
        return options

    @property
    def log_path(self) -> Path:
        """Where the session's output goes."""
        return Path(self.data_dir) / "logs" / "sessions" / f"{self.session_name}.log"

    def _spawn(self, prepared: Prepared) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                prepared.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=prepared.pass_fds,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )

    async def _wait_ready(self) -> None:
        url = f"http://{self.ip}:{self.port}{self.server.base_url}api"
        client = AsyncHTTPClient()
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                self.log.error("Session %s exited:\n%s", self.session_name, tail(self.log_path, 15))
                await self.stop(now=True)
                raise web.HTTPError(500, "the session's server exited before it was ready")
            try:
                response = await client.fetch(url, request_timeout=2, raise_error=False)
            except (OSError, HTTPClientError):
                response = None
            if response is not None and 0 < response.code < 500:
                elapsed = loop.time() - started
                self.log.info("Session %s answered after %.2f s", self.session_name, elapsed)
                return
            await asyncio.sleep(self.ready_poll_interval)

    async def poll(self) -> int | None:
        """None while the supervisor runs; its exit status (or 0) once gone."""
        if self.proc is not None:
            status = self.proc.poll()
            if status is None:
                return None
            with self.proc:
                pass
            self.proc = None
            self.clear_state()
            return int(status)
        if not self.pid or not self._alive():
            self.clear_state()
            return 0
        return None

    def _alive(self) -> bool:
        ticks = start_ticks(self.pid)
        return ticks is not None and (not self.start_ticks or ticks == self.start_ticks)

    async def stop(self, now: bool = False) -> None:
        """Stop the session (its supervisor's process group); an ephemeral home goes."""
        pid = self.pid
        if pid and self._alive():
            for sig, wait in (
                (signal.SIGTERM, 0 if now else self.term_timeout),
                (signal.SIGKILL, 5),
            ):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)
                if await self._wait_gone(wait):
                    break
        await self.poll()
        self.clear_state()
        await asyncio.to_thread(self._cleanup)

    async def run_post_stop_hook(self) -> None:
        """Release the home (remove an ephemeral one) and cgroups on every way a server
        ends.

        The hub calls this after each stop, but calls :meth:`stop` only while
        the server still runs: a server that crashed, or was found dead after a
        hub restart, would otherwise leave its home behind."""
        await maybe_future(super().run_post_stop_hook())
        await asyncio.to_thread(self._cleanup)

    async def _wait_gone(self, grace: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                return True
            if self.proc is None and not self._alive():
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)

    def _cleanup(self) -> None:
        self.home_policy.release(self.home_path)
        default_limits().remove(self.session_name)
        if self.sandbox_ip and self.host.network.enabled:
            self.host.network.forget_hub(self.sandbox_ip, self.hub_port)
        self.sandbox_ip = None
