"""BinderSpawner: JupyterHub's LocalProcessSpawner, inside bubblewrap.

The hub loads this class (``c.JupyterHub.spawner_class``).  A launch is
described entirely by ``user_options`` (set by
:class:`~binderbox.sessions.launcher.SessionLauncher`):

``env_path``        host path of the built environment, bound read-only at
                    ``/srv/env`` (it was built *at* that path)
``content_path``    host path of the repository content, copied (``cp -a
                    --reflink=auto``, never hard links: the home is
                    writable) into a fresh private home
``start_script``    the repository's ``start`` script relative to the home,
                    run as ``/home/jovyan/<start> jupyterhub-singleuser ...``
                    (it must end with ``exec "$@"``); or null
``data_mounts``     ``{name: host dir}``, bound read-only at
                    ``/home/jovyan/data/<name>``
``hold_files``      host paths of use-lock files (``<store>/locks/<key>.use``
                    of the environment, ``<datasets>/locks/<key>.use`` of each
                    dataset; see :meth:`Store.hold <binderbox.store.Store.hold>`
                    and :meth:`DataCache.hold <binderbox.data.DataCache.hold>`).
                    ``start`` takes a shared ``flock`` on each and hands the
                    descriptors to the session's supervisor (``pass_fds``), then
                    closes its own copies: the locks live exactly as long as the
                    session, across hub restarts, so eviction (which needs the
                    lock exclusively) never removes what a session uses.
``token``           the launch token.  It is a hub API token of the user
                    (scope ``access:servers!user=<name>``); the server gets
                    ``JUPYTERHUB_ALLOW_TOKEN_IN_URL=1`` so ``?token=<token>``
                    links work, like BinderHub's launch links.  It is also
                    exported as ``JUPYTER_TOKEN``.
``repo_url``, ``binder_ref_url``, ``binder_launch_host``, ``binder_request``,
``binder_persistent_request``  -> ``BINDER_*`` environment variables.

Every host path must lie under one of ``allowed_roots`` (default: the data
directory), so a user who can start their own server cannot mount arbitrary
host directories.

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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.utils import maybe_future, random_port
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Float, List, Unicode, default

from ..builders.overlay import apply_home_overlay
from ..environments.spec import ENV_PREFIX, HOME
from ..logs import tail
from ..runtime.layout import env_sandbox, session_environment
from ..runtime.limits import default_limits
from ..runtime.sandbox import USER, Sandbox
from ..store.files import remove_tree
from ..store.locks import FileLock

#: user_options keys that become BINDER_* variables
BINDER_FIELDS = {
    "repo_url": "BINDER_REPO_URL",
    "binder_ref_url": "BINDER_REF_URL",
    "binder_launch_host": "BINDER_LAUNCH_HOST",
    "binder_request": "BINDER_REQUEST",
    "binder_persistent_request": "BINDER_PERSISTENT_REQUEST",
}


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


class BinderSpawner(LocalProcessSpawner):  # type: ignore[misc]
    """Sandboxed single-user servers for binder launches.  See the module docstring."""

    data_dir = Unicode(
        help="binderbox's data directory (homes under <data_dir>/homes, logs under "
        "<data_dir>/logs/sessions)."
    ).tag(config=True)
    allowed_roots = List(
        Unicode(),
        help="Host directories that env_path, content_path and data_mounts must lie under "
        "(the data directory is always allowed).",
    ).tag(config=True)
    allow_origin = Unicode(
        "",
        help="CORS Access-Control-Allow-Origin of the servers ('*' lets thebe and other "
        "pages on any site use a session; '' = same origin only).",
    ).tag(config=True)
    ready_poll_interval = Float(
        0.05, help="Seconds between readiness checks of a starting server."
    ).tag(config=True)

    @default("ip")
    def _default_ip(self) -> str:
        return "127.0.0.1"

    @default("default_url")
    def _default_default_url(self) -> str:
        return "/lab"

    @default("http_timeout")
    def _default_http_timeout(self) -> int:
        return 30

    @default("start_timeout")
    def _default_start_timeout(self) -> int:
        return 120

    @default("term_timeout")
    def _default_term_timeout(self) -> int:
        return 5

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        return [f"{ENV_PREFIX}/bin/jupyterhub-singleuser"]

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

    def _checked_path(self, value: object, what: str) -> Path:
        if not isinstance(value, str) or not value:
            raise web.HTTPError(400, f"user_options.{what} must be a host path")
        path = Path(value).resolve()
        roots = [Path(self.data_dir).resolve(), *(Path(r).resolve() for r in self.allowed_roots)]
        if not any(path.is_relative_to(root) for root in roots):
            raise web.HTTPError(403, f"user_options.{what} is outside the allowed directories")
        if not path.is_dir():
            raise web.HTTPError(400, f"user_options.{what} {path} is not a directory")
        return path

    # -- environment --------------------------------------------------------------

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        """The session user's variables (no host account is involved)."""
        env["USER"] = USER
        env["HOME"] = HOME
        env["SHELL"] = "/bin/bash"
        return env

    def get_env(self) -> dict[str, str]:
        """Only what the server needs: JUPYTERHUB_*, BINDER_*, NB_*, PATH, limits."""
        hub_env: dict[str, str] = super().get_env()
        env = {
            k: v
            for k, v in hub_env.items()
            if k.startswith(("JUPYTERHUB_", "JPY_", "MEM_", "CPU_")) or k in ("LANG", "LC_ALL")
        }
        options = self.user_options or {}
        # what postBuild saw too (one list), the hub's LANG winning
        env = {**session_environment(), **env}
        env.update({"VIRTUAL_ENV": ENV_PREFIX, "JUPYTERHUB_ALLOW_TOKEN_IN_URL": "1"})
        for key, name in BINDER_FIELDS.items():
            if options.get(key):
                env[name] = str(options[key])
        if options.get("token"):
            env["JUPYTER_TOKEN"] = str(options["token"])
        return env

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

    def _sandbox(self, env_path: Path, mounts: dict[str, Path]) -> Sandbox:
        box = env_sandbox(env_path, self.home_path)  # the layout run_in_env uses too
        for name, host in sorted(mounts.items()):
            box.ro_bind(host, f"{HOME}/data/{name}")
        box.setenv(self.get_env())
        return box

    def get_args(self) -> list[str]:
        """``Spawner.args``, kernels on Unix sockets, and the CORS setting.

        Kernels talk to their server over ``ipc`` (Unix sockets in the
        session's private runtime folder), not TCP: every session shares the
        host's network namespace, and a kernel's iopub port publishes every
        output to whoever subscribes (messages are signed, not encrypted).
        """
        args = [*super().get_args(), "--KernelManager.transport=ipc"]
        if self.allow_origin:
            args.append(f"--ServerApp.allow_origin={self.allow_origin}")
        return args

    def _command(self, start_script: str | None) -> list[str]:
        cmd = [*self.cmd, *self.get_args()]
        if start_script:
            cmd = [f"{HOME}/{start_script}", *cmd]
        return cmd

    def _launch_options(self) -> tuple[Path, Path | None, str | None, dict[str, Path]]:
        options = self.user_options or {}
        env_path = self._checked_path(options.get("env_path"), "env_path")
        content = options.get("content_path")
        content_path = self._checked_path(content, "content_path") if content else None
        start = options.get("start_script") or None
        if start is not None and (
            not isinstance(start, str) or start.startswith("/") or ".." in Path(start).parts
        ):
            raise web.HTTPError(400, "user_options.start_script must be a relative path")
        raw_mounts = options.get("data_mounts") or {}
        mounts: dict[str, Path] = {}
        for name, host in dict(raw_mounts).items():
            if not name or "/" in name or name in (".", ".."):
                raise web.HTTPError(400, f"bad data mount name {name!r}")
            mounts[name] = self._checked_path(host, f"data_mounts.{name}")
        return env_path, content_path, start, mounts

    def _hold_paths(self) -> list[Path]:
        """``user_options.hold_files``, checked: ``locks/*.use`` files in allowed directories."""
        raw = (self.user_options or {}).get("hold_files") or []
        if not isinstance(raw, list):
            raise web.HTTPError(400, "user_options.hold_files must be a list of paths")
        paths = []
        for value in raw:
            if not isinstance(value, str) or not value.endswith(".use"):
                raise web.HTTPError(400, "user_options.hold_files must name *.use lock files")
            path = Path(value)
            folder = self._checked_path(str(path.parent), "hold_files")
            if folder.name != "locks":
                raise web.HTTPError(400, "user_options.hold_files must lie in a locks/ folder")
            paths.append(folder / path.name)
        return paths

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

    def _report(self, progress: int, message: str) -> None:
        if not hasattr(self, "_messages"):
            self._messages = []
        self._messages.append({"progress": progress, "message": message})

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        """Relay the steps of :meth:`start` (the hub stops iterating when it ends)."""
        seen = 0
        while True:
            messages = getattr(self, "_messages", [])
            while seen < len(messages):
                yield messages[seen]
                seen += 1
            await asyncio.sleep(self.ready_poll_interval)

    async def start(self) -> tuple[str, int]:
        """Start the sandboxed server; return (ip, port) once it answers HTTP."""
        self._messages = []
        holds = await asyncio.to_thread(self._take_holds, self._hold_paths())
        try:
            return await self._start_holding(holds)
        finally:
            for hold in holds:  # the supervisor has its own copies of the descriptors
                hold.release()

    async def _start_holding(self, holds: list[FileLock]) -> tuple[str, int]:
        env_path, content_path, start_script, mounts = self._launch_options()
        if not (env_path / "bin" / "jupyterhub-singleuser").exists():
            raise web.HTTPError(400, "the environment has no jupyterhub-singleuser")
        if self.port == 0:  # type: ignore[has-type]
            self.port = random_port()
        self._report(10, "Copying the repository into a private home")
        await asyncio.to_thread(self._prepare_home, env_path, content_path, start_script)
        if start_script and not (self.home_path / start_script).is_file():
            start_script = None
        limits = default_limits()
        cgroups = limits.create(self.session_name, int(self.mem_limit or 0), self.cpu_limit or 0)
        argv = self._sandbox(env_path, mounts).argv(self._command(start_script))
        supervise = [sys.executable, "-m", "binderbox.runtime.supervise"]
        for group in cgroups:
            supervise += ["--cgroup", str(group)]
        self._report(30, "Starting the sandboxed Jupyter server")
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
