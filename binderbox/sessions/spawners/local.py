"""SandboxSpawner: binder sessions as bubblewrap sandboxes on this machine.

The hub loads this class (``c.JupyterHub.spawner_class``).  What to launch is the
server's :class:`~binderbox.runtime.options.LaunchOptions` (read and checked by
:class:`~binderbox.sessions.spawners.mixin.BinderSpawnerMixin`); every host path
must lie under the data directory or ``allowed_roots``, so a user who can start
their own server cannot mount arbitrary host directories.  The content is
copied (``cp -a --reflink=auto``, never hard links: the home is writable) into
a fresh private home; ``hold_files`` are taken as shared ``flock`` use-locks
and handed to the session's supervisor (``pass_fds``): the locks live exactly
as long as the session, across hub restarts, so eviction (which needs the lock
exclusively) never removes what a session uses.  The launch token is a hub API
token of the user (scope ``access:servers!user=<name>``); the server gets
``JUPYTERHUB_ALLOW_TOKEN_IN_URL=1`` so ``?token=<token>`` links work, like
BinderHub's launch links.

Process layout and why:

* ``start`` runs ``python -m binderbox.runtime.supervise`` in a new session
  (setsid).  The supervisor joins the session's cgroups
  (:mod:`binderbox.runtime.limits`) and is the parent of ``bwrap``, so
  ``--die-with-parent`` refers to it, not to the hub: sessions survive a
  restart of the hub (``cleanup_servers = False``).  The supervisor's pid
  and start time are the spawner state; ``poll`` checks that process (a
  zombie or a reused pid counts as gone), ``stop`` signals its process group
  (SIGTERM, then SIGKILL).  Output goes to ``<data>/logs/sessions/``.
* The sandbox (:class:`binderbox.runtime.sandbox.Sandbox`): own user, pid, ipc and
  uts namespaces, uid 1000 ``jovyan`` inside, the host network namespace
  (the hub and the proxy reach the server on 127.0.0.1:<port>), the system
  directories, the environment and its interpreter (``.binderbox/build.json``)
  read-only, the home ``<data>/homes/<user>-<server>`` writable at
  ``/home/jovyan``, data read-only.
* Host uid: the sandbox runs as the service's own uid (root here) mapped to
  uid 1000 in a fresh user namespace, with no capabilities outside it.  A
  dedicated unprivileged host uid was not used: the environments' interpreters
  live under ``/root/.pyenv`` (``/root`` is mode 0700) and the store is owned
  by the service, so that uid could not read them without loosening those
  permissions; the namespaces plus the bind list are the isolation.  The
  network namespace is shared, so a session can reach services on
  127.0.0.1 (the hub and proxy APIs need tokens it does not have).
* Readiness: JupyterHub waits for ``/api`` in ``User._wait_up`` ->
  ``Server.wait_up`` -> ``jupyterhub.utils.wait_for_http_server``, which
  retries with ``exponential_backoff`` (random sleeps up to 0.2, 0.4, 0.8...
  s): about a second lost per launch, and no hook on the spawner.  So
  ``start`` polls the server itself every ``ready_poll_interval`` (50 ms)
  and returns only once it answers; the hub's first check then succeeds at
  once (measured: the hub marks the server ready ~10 ms after it answers).
  ``progress`` relays the steps of ``start`` to the hub's progress stream.
* When the server stops (deleted, culled, crashed) its home and cgroups are
  removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.utils import maybe_future, random_port
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Unicode, default

from ...builders.overlay import apply_home_overlay
from ...environments.spec import HOME
from ...logs import tail
from ...runtime.layout import env_sandbox
from ...runtime.limits import default_limits
from ...runtime.options import LaunchOptions
from ...runtime.sandbox import Sandbox
from ...store.files import remove_tree
from ...store.locks import FileLock
from .mixin import BinderSpawnerMixin


def process_start_time(pid: int) -> int | None:
    """The start time (clock ticks) of ``pid``; None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


class SandboxSpawner(BinderSpawnerMixin, LocalProcessSpawner):  # type: ignore[misc]
    """Sandboxed single-user servers for binder launches.  See the module docstring."""

    data_dir = Unicode(
        help="binderbox's data directory (homes under <data_dir>/homes, logs under "
        "<data_dir>/logs/sessions)."
    ).tag(config=True)

    @default("ip")
    def _default_ip(self) -> str:
        return "127.0.0.1"

    @default("term_timeout")
    def _default_term_timeout(self) -> int:
        return 5

    # -- state ------------------------------------------------------------------

    start_ticks: int = 0
    _messages: list[dict[str, Any]]
    proc: subprocess.Popen[bytes] | None  # the trait of LocalProcessSpawner, typed

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore the supervisor's pid and start time after a hub restart."""
        super().load_state(state)
        self.start_ticks = int(state.get("start_ticks", 0))

    def get_state(self) -> dict[str, Any]:
        """The supervisor's pid and start time."""
        state: dict[str, Any] = super().get_state()
        if self.pid:
            state["start_ticks"] = self.start_ticks
        return state

    def clear_state(self) -> None:
        """Forget the supervisor."""
        super().clear_state()
        self.start_ticks = 0

    # -- paths ------------------------------------------------------------------

    @property
    def session_name(self) -> str:
        """``<user>-<server>`` (``default`` for the unnamed server)."""
        return f"{self.user.name}-{self.name or 'default'}"

    @property
    def home_path(self) -> Path:
        """The session's private home on the host."""
        return Path(self.data_dir) / "homes" / self.session_name

    def option_roots(self) -> list[Path]:
        """The data directory and ``allowed_roots``."""
        return [Path(self.data_dir), *super().option_roots()]

    # -- lifecycle ----------------------------------------------------------------

    def _prepare_home(self, env_path: Path, content: Path | None, start_script: str | None) -> None:
        home = self.home_path
        remove_tree(home)
        home.parent.mkdir(parents=True, exist_ok=True)
        if content is not None:
            subprocess.run(
                ["cp", "-a", "--reflink=auto", "--no-target-directory", str(content), str(home)],
                check=True,
                capture_output=True,
            )
        else:
            home.mkdir()
        apply_home_overlay(env_path, home)
        home.chmod(0o700)
        if start_script:
            script = home / start_script
            if script.is_file():
                script.chmod(script.stat().st_mode | 0o111)

    def _sandbox(self, options: LaunchOptions) -> Sandbox:
        box = env_sandbox(options.env_path, self.home_path)  # the layout run_in_env uses too
        for name, host in sorted(options.data_mounts.items()):
            box.ro_bind(host, f"{HOME}/data/{name}")
        box.setenv(self.get_env())
        return box

    def _command(self, start_script: str | None) -> list[str]:
        cmd = [*self.cmd, *self.get_args()]
        if start_script:
            cmd = [f"{HOME}/{start_script}", *cmd]
        return cmd

    @staticmethod
    def _take_holds(paths: list[Path]) -> list[FileLock]:
        """Shared use-locks on ``paths`` (blocks briefly while an eviction finishes)."""
        holds: list[FileLock] = []
        try:
            for path in paths:
                holds.append(FileLock.acquire(path, shared=True))
        except BaseException:
            for hold in holds:
                hold.release()
            raise
        return holds

    async def start(self) -> tuple[str, int]:
        """Start the sandboxed server; return (ip, port) once it answers HTTP."""
        self._messages = []
        options = self.launch_options
        holds = await asyncio.to_thread(self._take_holds, list(options.hold_files))
        try:
            return await self._start_holding(options, holds)
        finally:
            for hold in holds:  # the supervisor has its own copies of the descriptors
                hold.release()

    async def _start_holding(
        self, options: LaunchOptions, holds: list[FileLock]
    ) -> tuple[str, int]:
        if not (options.env_path / "bin" / "jupyterhub-singleuser").exists():
            raise web.HTTPError(400, "the environment has no jupyterhub-singleuser")
        if self.port == 0:  # type: ignore[has-type]
            self.port = random_port()
        self.report(10, "Copying the repository into a private home")
        start_script = options.start_script
        await asyncio.to_thread(
            self._prepare_home, options.env_path, options.content_path, start_script
        )
        if start_script and not (self.home_path / start_script).is_file():
            start_script = None
        limits = default_limits()
        cgroups = limits.create(self.session_name, int(self.mem_limit or 0), self.cpu_limit or 0)
        argv = self._sandbox(options).argv(self._command(start_script))
        supervise = [sys.executable, "-m", "binderbox.runtime.supervise"]
        for group in cgroups:
            supervise += ["--cgroup", str(group)]
        self.report(30, "Starting the sandboxed Jupyter server")
        self.proc = self._spawn([*supervise, "--", *argv], [h.fileno() for h in holds])
        self.pid = self.proc.pid
        self.start_ticks = process_start_time(self.pid) or 0
        self.log.info("Started session %s (supervisor pid %d)", self.session_name, self.pid)
        await self._wait_ready()
        return (self.ip, self.port)

    @property
    def log_path(self) -> Path:
        """Where the session's output goes."""
        return Path(self.data_dir) / "logs" / "sessions" / f"{self.session_name}.log"

    def _spawn(self, argv: list[str], pass_fds: list[int]) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=pass_fds,
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
        ticks = process_start_time(self.pid)
        return ticks is not None and (not self.start_ticks or ticks == self.start_ticks)

    async def stop(self, now: bool = False) -> None:
        """Stop the session (its supervisor's process group) and remove its home."""
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
        """Remove the home and cgroups on every way a server ends.

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
        remove_tree(self.home_path)
        default_limits().remove(self.session_name)
