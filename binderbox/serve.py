"""``binderbox serve``: the whole service as one process tree.

One process owns everything: the web app (pages, ``/build``, ``/health``...)
on a loopback port, and as managed children the Node configurable-http-proxy
(the public port) and JupyterHub (sessions), with the idle culler beside
them.  The proxy routes ``/`` to the web app, ``/hub/`` to the hub and
``/user/<name>/`` to running sessions.

Before anything starts, the sandbox network is set up (the hub then listens on
the bridge's gateway, the one host address sessions may reach) and the service
takes ``<data>/service.lock``: one service per data directory, and every
session's supervisor sees while it is held (:mod:`binderbox.runtime.supervise`).

Signals (see the README):

* **SIGTERM, SIGINT** (Ctrl-C): stop every session, then the web app, the hub
  and the proxy.  Nothing is left running.
* **SIGHUP**: stop the web app, the hub and the proxy but keep the sessions, for
  a restart (an upgrade) on the same data directory: the next start finds them
  and their links keep working.  A session whose service does not come back
  ends itself after ``ManagedHub.cull_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from tornado.web import Application
from traitlets import Float
from traitlets.config import LoggingConfigurable

from .errors import BinderboxError
from .events import Event
from .hub import ManagedHub
from .hub.children import free_port
from .hub.external import ExternalHub
from .launchlog import logged
from .operator import ServiceState, wait_answering
from .pipeline import LaunchPipeline, LaunchRequest
from .prebuilt import Prebuilt
from .providers import offered_providers
from .runtime.host import SandboxHost
from .sessions import SessionLauncher
from .sessions.persistent import homes_status
from .sessions.spawners.kubespec import KubernetesSessions
from .sessions.untracked import UntrackedSessions
from .tls import HTTPS
from .web import SessionIndex, WebApp, make_app
from .web.login import make_hub_auth
from .web.menu import OptionsMenu


class Service:
    """What the web layer serves: launches, versions, and the health of every part."""

    def __init__(
        self,
        pipeline: LaunchPipeline,
        hub: ManagedHub | ExternalHub,
        launcher: SessionLauncher,
        host: SandboxHost,
        prebuilt: Prebuilt | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.hub = hub
        self.launcher = launcher
        self.host = host
        self.prebuilt = prebuilt or Prebuilt()

    def launch(self, request: LaunchRequest) -> AsyncIterator[Event]:
        """The pipeline's launch, with its record in the log at the end (:mod:`.launchlog`)."""
        return logged(self.pipeline.launch(request), request, self.pipeline.log)

    def versions(self) -> dict[str, Any]:
        return self.pipeline.versions()

    async def health(self) -> list[dict[str, Any]]:
        """Store, builds, hub API, proxy, culler, the hub's database (its kind), sandboxes,
        and the limits of builds and sessions with how each is enforced here (cgroups,
        measured, or advisory)."""
        checks = await self.pipeline.health()
        status = self.hub.status()
        hub_checks = {
            "hub": await self.launcher.health(),
            "proxy": {"service": "Proxy", "ok": status.get("proxy", False)},
        }
        if not isinstance(self.hub, ManagedHub):  # the cluster's hub, proxy and culler
            return [*checks, *hub_checks.values()]
        hub_checks["culler"] = {"service": "Idle culler", "ok": status.get("culler", False)}
        hub_checks["database"] = await self.hub.database.health()
        for name, reason in self.hub.given_up().items():  # kept exiting: not started again
            hub_checks[name]["error"] = reason
        checks += hub_checks.values()
        limits = self.hub.session_limits()
        checks += self.host.status(sessions=limits)
        checks.append(homes_status(self.hub.root, limits.home_bytes))
        prebuilt = self.prebuilt.health()
        if prebuilt is not None:
            checks.append(prebuilt)
        return checks


class Maintenance(LoggingConfigurable):
    """Periodic clean-up of caches while the service runs."""

    interval = Float(3600.0, help="Seconds between clean-up rounds.").tag(config=True)
    content_max_age = Float(
        7 * 86400.0, help="Fetched repository content unused this many seconds is deleted."
    ).tag(config=True)

    async def run(self, pipeline: LaunchPipeline) -> None:
        """Forever: evict environments and datasets over budget, delete old content.

        First, finish the environments a stop left unfinished (their bytecode), and
        remove builds an earlier run left running (build Jobs nobody follows).
        """
        try:
            await pipeline.finisher.resume()
        except Exception:
            self.log.exception("resuming unfinished environments failed")
        try:
            left = await pipeline.builder.recover()
        except Exception:
            self.log.exception("looking for builds an earlier run left failed")
        else:
            if left:
                self.log.info("removed builds an earlier run left: %s", ", ".join(left))
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(pipeline.store.gc)
                await asyncio.to_thread(pipeline.builder.gc)
                if pipeline.data is not None:
                    await asyncio.to_thread(pipeline.data.gc)
                await asyncio.to_thread(pipeline.content.gc, self.content_max_age)
            except Exception:
                self.log.exception("clean-up round failed")


#: the signals that stop the service, and whether each stops the sessions too
STOP_SIGNALS = {signal.SIGTERM: True, signal.SIGINT: True, signal.SIGHUP: False}


@contextlib.contextmanager
def service_lock(data: Path) -> Iterator[None]:
    """Hold ``<data>/service.lock`` (one service per data directory)."""
    path = data / "service.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        if not _lock_within(fd, seconds=3.0):
            raise BinderboxError(
                f"Another binderbox serve is running with the data directory {data}.",
                hint="Stop it first, or choose another --data-dir.",
            )
        yield
    finally:
        os.close(fd)


def _lock_within(fd: int, seconds: float) -> bool:
    """``flock(fd, LOCK_EX)`` within ``seconds`` (sessions' supervisors probe the lock
    with a shared lock for an instant: one probe must not look like another service)."""
    for _ in range(int(seconds / 0.05)):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.05)
    return False


def _hub_for(
    app: Any, pipeline: LaunchPipeline, host: SandboxHost, web: WebApp, https: HTTPS
) -> ManagedHub:
    """The managed hub, its sessions placed like the builds (sandbox network, uids).
    With HTTPS the proxy listens on loopback only, behind the TLS front."""
    hub = ManagedHub(
        parent=app, data_dir=str(app.data_path), web_port=free_port(), network=host.network
    )
    if https.enabled:
        hub.public_ip = "127.0.0.1"
        hub.external_url = https.origin + web.base_url  # https: the hub's cookies are Secure
    hub.base_url = web.base_url
    assert pipeline.data is not None
    roots = [pipeline.store.root, pipeline.content.root, pipeline.data.root]
    hub.spawner_config = {"allowed_roots": roots, **hub.spawner_config}
    # the operator's settings of the classes the hub's sessions use, passed on
    sections = (
        *("SandboxHost", "SandboxNetwork", "Destinations", "SandboxSpawner"),
        *("KubernetesSessions", "KubeSpawner", "BinderKubeSpawner"),  # the kubernetes backend
    )
    hub.sandbox_config = {name: dict(app.config[name]) for name in sections if name in app.config}
    hub.params()  # fixes the ports, so the hub's API URL is known before it starts
    return hub


def _image_sessions(app: Any, pipeline: LaunchPipeline, hub: ManagedHub | ExternalHub) -> None:
    """Sessions from environments' images (``c.KubernetesSessions.mode = 'image'``): the
    pipeline launches the registry's images, and a managed hub's spawner accepts
    images from that registry repository only.  Refused where nothing runs images."""
    if KubernetesSessions(parent=app).mode != "image":
        return
    if isinstance(hub, ManagedHub) and hub.backend != "kubernetes":
        raise BinderboxError(
            "Sessions from images (c.KubernetesSessions.mode = 'image') run as pods.",
            hint="Set c.ManagedHub.backend = 'kubernetes', or mode = 'store'.",
        )
    images = pipeline.images
    if images is None or not images.enabled:
        raise BinderboxError(
            "Sessions from images (c.KubernetesSessions.mode = 'image') need a registry.",
            hint="Set c.ImageRegistry.url and c.ImageRegistry.prefix.",
        )
    pipeline.image_sessions = True
    if isinstance(hub, ManagedHub):
        section = hub.sandbox_config.setdefault("KubernetesSessions", {})
        section.setdefault("image_prefix", images.repository)


async def serve(app: Any, pipeline: LaunchPipeline) -> None:
    """Run the service until a signal of :data:`STOP_SIGNALS`.  ``app`` is the
    configuring application; its ``hub`` is ``managed`` (started here) or ``external``
    (:mod:`binderbox.hub.external`: no sandbox network, no sessions here)."""
    data = app.data_path
    host = SandboxHost(parent=app)
    if app.hub == "external":
        with service_lock(data):
            await _serve(app, pipeline, host)
        return
    await asyncio.to_thread(host.network.ensure)
    why = host.network.unavailable()
    if why:
        app.log.warning(
            "sandboxes share this host's network (%s): sessions can reach services on this "
            "machine and its network; set SandboxNetwork.isolation = 'required' to refuse "
            "to start like this",
            why,
        )
    with service_lock(data):
        await _serve(app, pipeline, host)


async def _serve(app: Any, pipeline: LaunchPipeline, host: SandboxHost) -> None:
    web_config = WebApp(parent=app)
    https = HTTPS(parent=app)
    pipeline.data = app.make_data_cache()
    hub: ManagedHub | ExternalHub
    if app.hub == "external":
        if https.enabled:
            raise BinderboxError(
                "HTTPS settings apply to the managed hub only.",
                hint="With an external hub, its proxy or ingress serves HTTPS.",
            )
        hub = ExternalHub(parent=app)
    else:
        hub = _hub_for(app, pipeline, host, web_config, https)
        if https.enabled:
            https.setup(app.data_path, hub.public_port)
            if not web_config.public_url:  # the proxy sees plain HTTP: links say https
                web_config.public_url = https.origin + web_config.base_url
            web_config.forwarded_hops = 2  # the front's entry, then the proxy's
    _image_sessions(app, pipeline, hub)
    stopping: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_signal(sessions: bool) -> None:
        if not stopping.done():
            stopping.set_result(sessions)

    for sig, sessions in STOP_SIGNALS.items():
        asyncio.get_running_loop().add_signal_handler(sig, on_signal, sessions)
    pipeline.launcher = SessionLauncher(
        parent=app,
        hub_api_url=hub.hub_api_url,
        api_token=hub.api_token,
        named_server_limit=hub.named_server_limit,
    )
    if hub.logins.oauth:
        pipeline.git_tokens = dict(hub.logins.git_tokens)
    prebuilt = Prebuilt(parent=app)
    service = Service(pipeline, hub, pipeline.launcher, host, prebuilt)
    web = _web_app(app, service, web_config)
    if isinstance(hub, ExternalHub):
        server, url = web.listen(hub.port, address=hub.ip), hub.url
    else:
        server, url = web.listen(hub.web_port, address="127.0.0.1"), hub.public_url
    background: list[asyncio.Task[None]] = []
    try:
        if https.enabled:  # a certificate first: without one the service does not start
            await https.start()
            url = https.origin + web_config.base_url
        await hub.start()
        background = _background(app, pipeline, hub, prebuilt)
        if https.enabled:
            background.append(asyncio.create_task(https.renewals()))
        if isinstance(hub, ManagedHub):
            app.notice(f"hub database: {hub.database.shown}")  # never its password
        await _announce(app, hub, url, web_config)
        stop_sessions = await stopping
        server.stop()
        if isinstance(hub, ExternalHub):  # the cluster's sessions: never ended here
            stop_sessions = False
        await _end_sessions(pipeline.launcher, stop_sessions, hub.cull_timeout, app.notice)
    finally:
        for task in background:
            task.cancel()
        server.stop()
        await https.stop()
        ServiceState.remove(app.data_path)
        await pipeline.launcher.aclose()  # abandoned launches: their users go first
        await hub.stop()
        with contextlib.suppress(Exception):
            await pipeline.finisher.aclose()
            await pipeline.store.aclose()
            await pipeline.data.aclose()
        app.notice("binderbox stopped")


async def _announce(app: Any, hub: ManagedHub | ExternalHub, url: str, web_config: WebApp) -> None:
    """Once the root URL answers: record where the service is (``<data>/service.json``,
    for ``binderbox status``) and print its URL."""
    if isinstance(hub, ManagedHub):
        local, proxy_api = hub.public_url, hub.proxy_api_url
    else:  # the web app itself, as seen from this machine
        host = hub.ip if hub.ip not in ("", "0.0.0.0") else "127.0.0.1"
        local, proxy_api = f"http://{host}:{hub.port}{web_config.base_url}", ""
    if not await wait_answering(local, within=60):
        app.log.warning("%s does not answer yet", local)
    state = ServiceState(url, hub.hub_api_url, proxy_api, os.getpid(), app.hub)
    state.write(app.data_path)
    app.log.info("binderbox is running at %s", url)
    app.notice(f"binderbox is running at {url}")


def _web_app(app: Any, service: Service, web_config: WebApp) -> Application:
    """The web app of ``service`` (its pages, /build, the API)."""
    pipeline, hub = service.pipeline, service.hub
    # the public service offers only what it launches: no local folders unless allowed
    offered = offered_providers(pipeline.allow_local)
    # remembered across restarts: the page of a session that ended offers its relaunch
    index = SessionIndex(web_config.recent_sessions, path=app.data_path / "sessions.sqlite")
    hub_auth = None
    if hub.logins.enabled:
        hub_auth = make_hub_auth(web_config.base_url, hub.hub_api_url, hub.api_token)
    return make_app(
        service,
        config=web_config,
        providers=offered,
        sessions=index,
        login_mode=hub.logins.mode,
        hub_auth=hub_auth,
        cookie_secret=hub.web_cookie_secret,
        visitor_sessions=service.launcher,
        menu=OptionsMenu(service.prebuilt.entries, pipeline.sizes, hub.logins.mode),
    )


def _background(
    app: Any, pipeline: LaunchPipeline, hub: ManagedHub | ExternalHub, prebuilt: Prebuilt
) -> list[asyncio.Task[None]]:
    """The service's background work: clean-ups, the hub's watch, prebuilt environments,
    and (sessions on this machine) the sessions the hub lost."""
    assert pipeline.launcher is not None
    tasks = [
        asyncio.create_task(Maintenance(parent=app).run(pipeline)),
        asyncio.create_task(hub.watch()),
        asyncio.create_task(prebuilt.build_all(pipeline)),
    ]
    if isinstance(hub, ManagedHub):
        lost = UntrackedSessions(parent=app)
        tasks.append(asyncio.create_task(lost.run(pipeline.launcher.hub, app.data_path)))
    return tasks


async def _end_sessions(
    launcher: SessionLauncher, stop: bool, idle_timeout: int, say: Callable[[str], None]
) -> None:
    """Stop every session, or ``say`` that they are kept (either way, how many)."""
    running = await launcher.count_running()
    if stop:
        say("stopping: ending every session")
        left = await launcher.stop_all() if running else 0
        failed = f"; {left} could not be" if left > 0 else ""
        say(f"stopping: stopped {running - max(left, 0)} session(s){failed}")
        return
    say(
        f"stopping: kept {running} session(s) running for a restart on this data "
        f"directory; without one they end themselves after {idle_timeout} s"
    )
