"""JupyterHub and the Node proxy as managed child processes.

:class:`ManagedHub` owns, for one data directory, the three long-running
children of ``binderbox serve``:

* the Node ``configurable-http-proxy`` (public ip/port; REST API on
  127.0.0.1), started by us so it is independent of the hub, with the guard
  that answers undecodable paths 400 instead of 500 (:mod:`.proxy`);
* JupyterHub (``python -m jupyterhub -f <data>/hub/jupyterhub_config.py``),
  which talks to that proxy and spawns sessions with
  :class:`~binderbox.sessions.spawners.local.SandboxSpawner`;
* ``jupyterhub-idle-culler`` (an external service of the hub, see
  :mod:`binderbox.hub.config` for why it is not hub-managed).

Contract:

* :meth:`ManagedHub.start` writes the config, starts the proxy, registers
  the web app's route (``/`` -> ``http://127.0.0.1:<web_port>``, when
  ``web_port`` is set), starts the hub and returns once ``/hub/api``
  answers.  Failures raise :class:`~binderbox.errors.BinderboxError` with the
  tail of the child's log in ``log_message``; nothing is left running.
* :meth:`ManagedHub.stop` stops the culler, the hub, then the proxy.  Sessions are
  never stopped: they run under their own supervisors (see
  ``binderbox/sessions/spawners/local.py``), and starting again with the same data
  directory finds them (the hub re-adds their routes to the new proxy).
* :meth:`ManagedHub.watch` runs forever and starts again the children that
  exit (proxy, hub, culler; with a backoff, see :mod:`binderbox.hub.watcher`);
  :meth:`ManagedHub.restart_child` is how one child is started again.
* :meth:`ManagedHub.stop_on_signals` installs SIGTERM/SIGINT handlers that
  do a clean :meth:`stop`.  The children also get SIGTERM if binderbox
  dies without stopping them (``PR_SET_PDEATHSIG``).

Secrets (the proxy's token, binderbox's hub API token, the key that encrypts
the logins' tokens, the web app's cookie secret) are generated once per data
directory, kept in mode-0600 files under ``<data>/hub`` and passed to the
children through environment variables.  The hub's database is SQLite under
``<data>/hub`` or the PostgreSQL server ``db_url`` names, checked before the
hub starts; its password travels the same way (:mod:`.database`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from traitlets import (
    CaselessStrEnum,
    Dict,
    Float,
    Instance,
    Int,
    Unicode,
    default,
    observe,
    validate,
)
from traitlets.config import LoggingConfigurable

from ..errors import BinderboxError
from ..logs import tail
from ..runtime.limits import SessionLimits, limits_status
from ..runtime.network import SandboxNetwork
from ..sessions.hubclient import HubAPIError, HubClient
from ..sessions.sizes import SessionSizes
from .children import Child, die_with_parent, free_port, port_in_use
from .config import (
    CULLER_TOKEN_ENV,
    NAMED_CULLER_TOKEN_ENV,
    PROXY_TOKEN_ENV,
    SERVICE_TOKEN_ENV,
    HubParams,
    culler_command,
    normalise_base_url,
    render_config,
)
from .culler import NAMED_TOKEN_ENV, TEMPORARY_TOKEN_ENV
from .database import DB_URL_ENV, DatabaseSettings, HubDatabase
from .logins import CRYPT_KEY_ENV, Logins
from .proxy import ProxyRoutes, guarded_node_options
from .secrets import HubSecrets
from .watcher import ORDER, ChildWatcher

#: how often readiness is polled while a child starts
POLL = 0.1


class HubError(BinderboxError):
    """The hub or the proxy cannot be started."""

    reason = "hub"


class ManagedHub(HubSecrets, ProxyRoutes, DatabaseSettings, LoggingConfigurable):
    """JupyterHub + configurable-http-proxy for one data dir.  See the module docstring."""

    children: dict[str, Child]

    data_dir = Unicode(
        help="The service's data directory; the hub's files go to <data_dir>/hub, "
        "session homes to <data_dir>/homes, logs to <data_dir>/logs."
    ).tag(config=True)
    public_ip = Unicode("", help="Address the proxy listens on ('' = all interfaces).").tag(
        config=True
    )
    public_port = Int(8000, help="Public port of the proxy (the service's URL).").tag(config=True)
    external_url = Unicode(
        "",
        help="""The service's public URL when visitors do not reach the proxy directly
        (``serve`` sets it to the HTTPS origin behind its TLS front): the hub's
        ``JupyterHub.public_url``, so its links and cookies (``Secure``) follow it.""",
    ).tag(config=True)
    hub_port = Int(
        8081,
        help="Port of the hub on hub_ip.  Keep it stable: running sessions know it "
        "(0 = pick a free one at start, only for throw-away hubs).",
    ).tag(config=True)
    hub_ip = Unicode(
        help="""Address the hub listens on.  Default: the sandbox bridge's gateway when
        sessions have networks of their own (the only host address they may reach, and
        only that port), else 127.0.0.1.""",
    ).tag(config=True)
    network = Instance(SandboxNetwork, help="The sandboxes' network (hub_ip's default).")
    logins = Instance(Logins, help="Who logs in to the hub, and how (c.Logins.*).")
    sandbox_config = Dict(
        help="""Settings of the classes the hub's sessions use (SandboxSpawner, SandboxHost,
        SandboxNetwork, Destinations): {class name: {trait: JSON value}}; binderbox serve
        passes what its own config file sets for them."""
    ).tag(config=True)
    proxy_api_port = Int(
        8001, help="Port of the proxy's REST API on 127.0.0.1 (0 = pick a free one at start)."
    ).tag(config=True)
    web_port = Int(
        0, help="Port of binderbox's web app on 127.0.0.1; routed at '/' when non-zero."
    ).tag(config=True)
    base_url = Unicode("/", help="Base URL of the whole service (hub under <base_url>hub/).").tag(
        config=True
    )
    proxy_command = Unicode(
        help="The configurable-http-proxy executable (default: node_modules/.bin in the "
        "source tree, then PATH)."
    ).tag(config=True)
    cull_timeout = Int(600, help="Idle seconds after which a session is culled.").tag(config=True)
    cull_max_age = Int(0, help="Maximum age of a session in seconds (0 = unlimited).").tag(
        config=True
    )
    cull_every = Int(
        0, help="Seconds between culler runs (0 = half the shortest idle timeout)."
    ).tag(config=True)
    named_server_limit = Int(
        5,
        help="""Sessions (named servers, one per repository and ref) a logged-in user may
        run at once; the next is refused with a plain message (0 = no limit).  The hub's
        named_server_limit_per_user.""",
    ).tag(config=True)
    named_cull_timeout = Int(
        3600,
        help="""Idle seconds after which a logged-in user's session is stopped (0 = never).
        The user and their persistent home are never removed by culling.  A busy
        kernel counts as activity.""",
    ).tag(config=True)
    named_cull_max_age = Int(
        0, help="Maximum age of a logged-in user's session in seconds (0 = unlimited)."
    ).tag(config=True)
    session_mem_limit = Unicode(
        "2G",
        help="Memory limit of each session (e.g. '2G'; '' = none).  Enforced where "
        "cgroups allow it (see binderbox.runtime.limits), advisory otherwise.",
    ).tag(config=True)
    session_cpu_limit = Float(
        1.0, help="CPU limit of each session in cores (0 = none); enforced like memory."
    ).tag(config=True)
    backend = CaselessStrEnum(
        ["local", "kubernetes"],
        "local",
        help="""Where sessions run: local (bubblewrap sandboxes on this machine,
        SandboxSpawner) or kubernetes (pods through KubeSpawner, BinderKubeSpawner; the
        hub needs a kubeconfig or an in-cluster service account, and c.KubernetesSessions
        / c.KubeSpawner settings in sandbox_config).  The web app and the launch pipeline
        are the same with both.""",
    ).tag(config=True)
    spawner_config = Dict(
        help="Extra traits of the backend's spawner (SandboxSpawner, BinderKubeSpawner) for "
        "the hub's config (JSON-serialisable values)."
    ).tag(config=True)
    hub_log_level = Unicode("INFO", help="The hub's log level.").tag(config=True)
    extra_config = Unicode("", help="Python appended to the generated jupyterhub_config.py.").tag(
        config=True
    )
    start_timeout = Int(60, help="Seconds to wait for the proxy and the hub to answer.").tag(
        config=True
    )

    @default("network")
    def _default_network(self) -> SandboxNetwork:
        return SandboxNetwork(parent=self)

    @default("logins")
    def _default_logins(self) -> Logins:
        return Logins(parent=self)

    @default("hub_ip")
    def _default_hub_ip(self) -> str:
        return self.network.gateway if self.network.enabled else "127.0.0.1"

    @default("proxy_command")
    def _default_proxy_command(self) -> str:
        tree = Path(__file__).resolve().parents[2] / "node_modules" / ".bin"
        found = tree / "configurable-http-proxy"
        if found.exists():
            return str(found)
        import shutil

        return shutil.which("configurable-http-proxy") or ""

    @validate("base_url")
    def _valid_base_url(self, proposal: Any) -> str:
        return normalise_base_url(str(proposal["value"]))

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: the children by name, in the order they start (watcher.ORDER)
        self.children = {name: Child(name) for name in ORDER}
        #: set by :meth:`stop`: the watcher starts nothing again from then on
        self.stopping = False
        self.watcher = ChildWatcher(parent=self)
        self._database: HubDatabase | None = None

    @observe("db_url", "db_password_file", "data_dir")
    def _database_changed(self, change: Any) -> None:
        self._database = None

    # -- paths and secrets ------------------------------------------------------

    @property
    def root(self) -> Path:
        """The data directory as a Path (must be set)."""
        if not self.data_dir:
            raise HubError("ManagedHub.data_dir is not set.")
        return Path(self.data_dir).resolve()

    @property
    def hub_dir(self) -> Path:
        """Where the hub's database, cookie secret and config live."""
        return self.root / "hub"

    @property
    def database(self) -> HubDatabase:
        """The hub's database (:mod:`.database`; read once: its password file too)."""
        if self._database is None:
            self._database = self.hub_database(self.hub_dir)
        return self._database

    @property
    def hub_api_url(self) -> str:
        """The hub's REST API, e.g. ``http://127.0.0.1:8081/hub/api/``."""
        return f"http://{self.hub_ip}:{self.hub_port}{self.base_url}hub/api/"

    @property
    def proxy_api_url(self) -> str:
        """The proxy's REST API root."""
        return f"http://127.0.0.1:{self.proxy_api_port}/api/"

    @property
    def public_url(self) -> str:
        """The proxy's public URL as seen from this machine."""
        host = self.public_ip if self.public_ip not in ("", "0.0.0.0") else "127.0.0.1"
        return f"http://{host}:{self.public_port}{self.base_url}"

    def _spawner_config(self) -> dict[str, object]:
        config: dict[str, object] = {}
        if self.session_mem_limit:
            config["mem_limit"] = self.session_mem_limit
        if self.session_cpu_limit:
            config["cpu_limit"] = self.session_cpu_limit
        if self.backend == "local":  # a session whose service is gone ends itself too
            config["orphan_timeout"] = self.cull_timeout
        if self.logins.oauth and self.logins.token_env:
            config["auth_state_env"] = dict(self.logins.token_env)
        sizes = SessionSizes(parent=self)
        if sizes.sizes:  # the spawner enforces them (binderbox.sessions.sizes)
            config.update(sizes=sizes.sizes, default_size=sizes.default)
        config.update(self.spawner_config)
        return config

    def session_limits(self) -> SessionLimits:
        """What each session may use with this hub's spawner settings (for /health)."""
        from ..sessions.spawners.local import SandboxSpawner  # the hub's side: loaded late

        return SandboxSpawner.limits_of(self._spawner_config())

    def write_config(self) -> Path:
        """Write ``<data>/hub/jupyterhub_config.py`` (ports chosen first) and return it."""
        params = self.params()
        self.hub_dir.mkdir(parents=True, exist_ok=True)
        self.hub_dir.chmod(0o700)  # the database holds sessions' launch tokens
        path = self.hub_dir / "jupyterhub_config.py"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(render_config(params))
        tmp.rename(path)
        return path

    def params(self) -> HubParams:
        """The generated config's parameters (free ports are chosen here when 0)."""
        if not self.hub_port:
            self.hub_port = free_port()
        if not self.proxy_api_port:
            self.proxy_api_port = free_port()
        return HubParams(
            data_dir=self.root,
            public_ip=self.public_ip,
            public_port=self.public_port,
            external_url=self.external_url,
            hub_port=self.hub_port,
            hub_ip=self.hub_ip,
            proxy_api_port=self.proxy_api_port,
            base_url=self.base_url,
            cull_timeout=self.cull_timeout,
            cull_max_age=self.cull_max_age,
            cull_every=self.cull_every,
            named_server_limit=self.named_server_limit,
            named_cull_timeout=self.named_cull_timeout,
            named_cull_max_age=self.named_cull_max_age,
            spawner_config=self._spawner_config(),
            sandbox_config=dict(self.sandbox_config),
            log_level=self.hub_log_level,
            extra_config=self.extra_config,
            login_config=tuple(self.logins.hub_config()) if self.logins.enabled else (),
            db_from_env=self.database.is_server,
            backend=self.backend,
        )

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Start proxy and hub; return when the hub API answers.  See the module docstring."""
        self.stopping = False
        if self.hub_ip == self.network.gateway:
            await asyncio.to_thread(self.network.ensure)  # the hub listens on the bridge
        self.logins.check()
        await self.logins.discover()
        config = self.write_config()
        self._check_ports_free("public", "hub", "proxy API")
        # a server that cannot be used is a plain error here, not a traceback in the hub's log
        await asyncio.to_thread(self.database.check, min(10, self.start_timeout))
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        try:
            await self._start_proxy()
            await self._add_web_route()
            await self._start_hub(config)
            await self._start_culler()
        except BaseException:
            await self.stop()
            raise
        self.log.info("hub ready at %s, proxy at %s", self.hub_api_url, self.public_url)
        self.log.info("hub database: %s", self.database.shown)
        status = limits_status()
        self.log.info(
            "session limits %s (%s): %s", status["mode"], status["backend"], status["reason"]
        )

    def _check_ports_free(self, *which: str) -> None:
        """Refuse to start on ports something else holds (the proxy would only log it).

        ``which``: some of ``public``, ``hub``, ``proxy API``."""
        ports = (
            ("public", self.public_ip, self.public_port, "--port"),
            ("hub", self.hub_ip, self.hub_port, "--hub-port"),
            ("proxy API", "127.0.0.1", self.proxy_api_port, "--proxy-api-port"),
        )
        for what, ip, port, flag in ports:
            if what in which and port_in_use(ip, port):
                raise HubError(
                    f"Port {port} (the {what} port) is already in use.",
                    hint=f"Is another binderbox running? Choose another with {flag}.",
                )

    def _check_proxy_command(self) -> None:
        if not self.proxy_command or not Path(self.proxy_command).exists():
            raise HubError(
                "The Node configurable-http-proxy is not installed.",
                hint="Run scripts/setup or `npm install configurable-http-proxy`.",
            )

    async def _start_proxy(self) -> None:
        self._check_proxy_command()
        cmd = [
            self.proxy_command,
            "--ip",
            self.public_ip,
            "--port",
            str(self.public_port),
            "--api-ip",
            "127.0.0.1",
            "--api-port",
            str(self.proxy_api_port),
            "--error-target",
            self._error_target(),
            "--log-level",
            "warn",
        ]
        # the guard: a path the proxy cannot decode gets 400, not 500 (see .proxy)
        env = {PROXY_TOKEN_ENV: self.proxy_token, "NODE_OPTIONS": guarded_node_options(os.environ)}
        await self._wait_ready(await self._spawn("proxy", cmd, env=env), self._proxy_answers)

    def _error_target(self) -> str:
        """Where the proxy gets its error pages: the web app's (a session that does not
        answer gets "this session ended"), else the hub's."""
        if self.web_port:
            return f"http://127.0.0.1:{self.web_port}{self.base_url}_proxy-error/"
        return f"http://{self.hub_ip}:{self.hub_port}{self.base_url}hub/error"

    async def _start_hub(self, config: Path) -> None:
        cmd = [sys.executable, "-m", "jupyterhub", "-f", str(config)]
        env = {
            PROXY_TOKEN_ENV: self.proxy_token,
            SERVICE_TOKEN_ENV: self.api_token,
            CULLER_TOKEN_ENV: self.culler_token,
            NAMED_CULLER_TOKEN_ENV: self.named_culler_token,
        }
        if self.logins.oauth:
            env[CRYPT_KEY_ENV] = self.crypt_key
        if self.database.is_server:
            env[DB_URL_ENV] = self.database.secret_url()
        hub = await self._spawn("hub", cmd, cwd=self.hub_dir, env=env)
        await self._wait_ready(hub, self._hub_answers)

    async def _start_culler(self) -> None:
        cmd = culler_command(self.params(), self.hub_api_url.rstrip("/"))
        env = {TEMPORARY_TOKEN_ENV: self.culler_token, NAMED_TOKEN_ENV: self.named_culler_token}
        await self._spawn("culler", cmd, env=env)

    def _log(self, child: Child) -> Path:
        return self.root / "logs" / f"{child.name}.log"

    async def _spawn(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        cwd: Path | None = None,
    ) -> Child:
        """Start child ``name`` with ``cmd`` and ``env`` added to this process's
        environment (output to its log); returns its record."""
        child = self.children[name]
        env = {**os.environ, **env}
        with self._log(child).open("ab") as out:
            child.proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        return child

    async def _wait_ready(self, child: Child, answers: Callable[[], Any]) -> None:
        """Return once ``answers()`` is true; HubError if ``child`` exits or times out."""
        what, log = child.name, self._log(child)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while loop.time() < deadline:
            status = child.exit_status
            if status is not None:
                raise HubError(
                    f"The session {what} could not be started.",
                    hint=f"See {log}.",
                    log_message=f"{what} exited with {status}:\n{tail(log, 20)}",
                )
            if await answers():
                return
            await asyncio.sleep(POLL)
        raise HubError(
            f"The session {what} did not start in {self.start_timeout} s.",
            hint=f"See {log}.",
            log_message=f"{what} not answering:\n{tail(log, 20)}",
        )

    async def _proxy_answers(self) -> bool:
        try:
            await self.routes()
        except HubAPIError:
            return False
        return True

    async def _hub_answers(self) -> bool:
        try:
            await HubClient(self.hub_api_url, self.api_token, timeout=2).info()
        except HubAPIError:
            return False
        return True

    async def stop(self) -> None:
        """Stop the culler, the hub, then the proxy (never the sessions)."""
        self.stopping = True
        for child in reversed(self.children.values()):
            if child.proc is not None:
                await _terminate(child.proc)
                child.proc = None

    def status(self) -> dict[str, bool]:
        """Which managed children are running (for /health and the log)."""
        return {name: child.running for name, child in self.children.items()}

    def given_up(self) -> dict[str, str]:
        """The children (``proxy``, ``hub``, ``culler``) that kept exiting and are no
        longer started again, each with a one-line reason (for /health)."""
        return self.watcher.given_up()

    async def watch(self, interval: float = 1.0) -> None:
        """Forever: every ``interval`` seconds, start again the proxy, the hub or
        the idle culler if it exited (see :mod:`binderbox.hub.watcher`)."""
        while True:
            await asyncio.sleep(interval)
            if not self.stopping:
                await self.watcher.check(self._exited(), self.restart_child)

    def _exited(self) -> dict[str, int | None]:
        """The exit status of each child that exited (None: running or not started).

        The culler counts only while the hub runs: it is a client of the hub."""
        exited = {name: child.exit_status for name, child in self.children.items()}
        if not self.children["hub"].running:
            exited["culler"] = None
        return exited

    async def restart_child(self, name: str) -> None:
        """Start ``name`` (``proxy``, ``hub`` or ``culler``) again, as :meth:`start` did.

        The proxy comes back with binderbox's route and the hub's routes (the
        hub is asked to sync them when it runs; otherwise it adds them when it
        starts).  Raises :class:`HubError` when the child does not come up; what
        was started of it is stopped again."""
        if self.stopping:
            return
        try:
            if name == "proxy":
                self._check_ports_free("public", "proxy API")
                await self._start_proxy()
                await self._add_web_route()
                await self._sync_hub_routes()
            elif name == "hub":
                self._check_ports_free("hub")
                await self._start_hub(self.hub_dir / "jupyterhub_config.py")
            else:
                await self._start_culler()
        except HubError:
            proc = self.children[name].proc
            if proc is not None:  # kept: its exit status makes the watcher try again
                await _terminate(proc)
            raise

    def stop_on_signals(self, then: Callable[[], None] | None = None) -> None:
        """On SIGTERM/SIGINT: :meth:`stop`, then call ``then`` (e.g. stop the loop)."""
        loop = asyncio.get_running_loop()

        async def _stop() -> None:
            await self.stop()
            if then is not None:
                then()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(_stop()))


async def _terminate(proc: asyncio.subprocess.Process, grace: float = 10) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
