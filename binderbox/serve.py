"""``binderbox serve``: the whole service as one process tree.

One process owns everything: the web app (pages, ``/build``, ``/health``...)
on a loopback port, and as managed children the Node configurable-http-proxy
(the public port) and JupyterHub (sessions), with the idle culler beside
them.  The proxy routes ``/`` to the web app, ``/hub/`` to the hub and
``/user/<name>/`` to running sessions.  SIGINT/SIGTERM stop the web app,
the hub and the proxy; sessions keep running and are found again by the
next start (their links keep working).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

from traitlets import Float
from traitlets.config import LoggingConfigurable

from .events import Event
from .hub import ManagedHub
from .hub.process import free_port
from .pipeline import LaunchPipeline, LaunchRequest
from .providers import offered_providers
from .runtime.limits import limits_status
from .sessions import SessionLauncher
from .web import SessionIndex, WebApp, make_app


class Service:
    """What the web layer serves: launches, versions, and the health of every part."""

    def __init__(self, pipeline: LaunchPipeline, hub: ManagedHub, launcher: SessionLauncher):
        self.pipeline = pipeline
        self.hub = hub
        self.launcher = launcher

    def launch(self, request: LaunchRequest) -> AsyncIterator[Event]:
        return self.pipeline.launch(request)

    def versions(self) -> dict[str, Any]:
        return self.pipeline.versions()

    async def health(self) -> list[dict[str, Any]]:
        """Store, hub API, proxy, culler and session limits (advisory or enforced)."""
        checks = await self.pipeline.health()
        status = self.hub.status()
        hub_checks = {
            "hub": await self.launcher.health(),
            "proxy": {"service": "Proxy", "ok": status.get("proxy", False)},
            "culler": {"service": "Idle culler", "ok": status.get("culler", False)},
        }
        for name, reason in self.hub.given_up().items():  # kept exiting: not started again
            hub_checks[name]["error"] = reason
        checks += hub_checks.values()
        limits = limits_status()
        checks.append({"service": "Session limits", "ok": True, **limits})
        return checks


class Maintenance(LoggingConfigurable):
    """Periodic clean-up of caches while the service runs."""

    interval = Float(3600.0, help="Seconds between clean-up rounds.").tag(config=True)
    content_max_age = Float(
        7 * 86400.0, help="Fetched repository content unused this many seconds is deleted."
    ).tag(config=True)

    async def run(self, pipeline: LaunchPipeline) -> None:
        """Forever: evict environments and datasets over budget, delete old content.

        First, finish the environments a stop left unfinished (their bytecode).
        """
        try:
            await pipeline.finisher.resume()
        except Exception:
            self.log.exception("resuming unfinished environments failed")
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


async def serve(app: Any, pipeline: LaunchPipeline) -> None:
    """Run the service until SIGINT/SIGTERM.  ``app`` is the configuring application."""
    data = app.data_path
    web_config = WebApp(parent=app)
    web_port = free_port()
    hub = ManagedHub(parent=app, data_dir=str(data), web_port=web_port)
    hub.base_url = web_config.base_url
    pipeline.data = app.make_data_cache()
    roots = [pipeline.store.root, pipeline.content.root, pipeline.data.root]
    hub.spawner_config = {"allowed_roots": roots, **hub.spawner_config}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    hub.params()  # fixes the ports, so the hub's API URL is known before it starts
    pipeline.launcher = SessionLauncher(
        parent=app, hub_api_url=hub.hub_api_url, api_token=hub.api_token
    )
    # the public service offers only what it launches: no local folders unless allowed
    offered = offered_providers(pipeline.allow_local)
    # remembered across restarts: the page of a session that ended offers its relaunch
    index = SessionIndex(web_config.recent_sessions, path=app.data_path / "sessions.sqlite")
    service = Service(pipeline, hub, pipeline.launcher)
    web = make_app(service, config=web_config, providers=offered, sessions=index)
    server = web.listen(web_port, address="127.0.0.1")
    background: list[asyncio.Task[None]] = []
    try:
        await hub.start()
        background = [
            asyncio.create_task(Maintenance(parent=app).run(pipeline)),
            asyncio.create_task(hub.watch()),
        ]
        app.log.info("binderbox is running at %s", hub.public_url)
        print(f"binderbox is running at {hub.public_url}", flush=True)
        await stop.wait()
        app.log.info("stopping (sessions keep running)")
    finally:
        for task in background:
            task.cancel()
        server.stop()
        await pipeline.launcher.aclose()  # abandoned launches: their users go first
        await hub.stop()
        with contextlib.suppress(Exception):
            await pipeline.finisher.aclose()
            await pipeline.store.aclose()
            await pipeline.data.aclose()
