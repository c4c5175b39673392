"""``binderbox serve`` beside a hub and proxy it does not run (``ServeCommand.hub = "external"``).

The Helm chart's mode: zero-to-jupyterhub runs JupyterHub and configurable-http-proxy,
binderbox is one of the hub's services.  Here "the cluster's" hub and proxy are real
ones the test starts (a ManagedHub in the test process, which routes nothing to '/'),
and a real ``binderbox serve`` subprocess uses them with the chart's settings: its
tokens from the chart's variables, its route '/' added to their proxy, its launch
through that proxy reaching ``ready``; when their proxy restarts, empty, the route
comes back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from repos import make_repo
from serve_helpers import ServeProcess, build_events, git_spec
from session_helpers import fetch, running_hub
from tornado.httpclient import AsyncHTTPClient

from binderbox.hub import ManagedHub
from binderbox.hub.children import free_port
from binderbox.sessions.hubclient import HubClient

pytestmark = pytest.mark.slow


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[ManagedHub]:
    """The cluster's hub and proxy (binderbox is only their service)."""
    async with running_hub(tmp_path / "cluster") as hub:
        yield hub


def external_config(hub: ManagedHub, web_port: int) -> str:
    return "\n".join(
        [
            "c.ServeCommand.hub = 'external'",
            f"c.ExternalHub.api_url = {hub.hub_api_url!r}",
            # as the chart gives it: the proxy API's address, without /api/
            f"c.ExternalHub.proxy_api_url = 'http://127.0.0.1:{hub.proxy_api_port}'",
            f"c.ExternalHub.route_target = 'http://127.0.0.1:{web_port}'",
            "c.ExternalHub.ip = '127.0.0.1'",
            f"c.ExternalHub.port = {web_port}",
            "c.ExternalHub.route_interval = 0.5",
        ]
    )


async def routed_to(hub: ManagedHub, target: str, limit: float = 60) -> bool:
    """Whether the proxy's '/' goes to ``target`` within ``limit`` seconds."""
    proxy = HubClient(hub.proxy_api_url, hub.proxy_token)
    for _ in range(int(limit / 0.25)):
        routes = await proxy.request("GET", "routes")
        if routes.get("/", {}).get("target") == target:
            return True
        await asyncio.sleep(0.25)
    return False


async def test_serve_with_external_hub_launches_and_keeps_its_route(
    cluster: ManagedHub, tmp_path: Path
) -> None:
    web_port = free_port()
    target = f"http://127.0.0.1:{web_port}"
    serve = ServeProcess(
        tmp_path / "serve",
        tmp_path / "binderbox-data",
        external_config(cluster, web_port),
        env={
            "BINDERBOX_HUB_API_TOKEN": cluster.api_token,
            "CONFIGPROXY_AUTH_TOKEN": cluster.proxy_token,
        },
    )
    serve.start()
    try:
        assert serve.url == f"http://127.0.0.1:{web_port}/"
        assert await routed_to(cluster, target)
        # a launch through the cluster's proxy: binderbox's pages, the hub's session
        repo = make_repo(tmp_path / "repo", {"requirements.txt": "six\n"})
        stream = await build_events(cluster.public_url, "git", git_spec(repo))
        ready = stream.events[-1]
        assert ready["phase"] == "ready", stream.events[-3:]
        assert ready["url"].startswith(cluster.public_url + "user/")
        api = await fetch(f"{ready['url']}api/status?token={ready['token']}")
        assert api.code == 200, api.body
        health = json.loads((await fetch(cluster.public_url + "health")).body)
        services = {check["service"]: check["ok"] for check in health["checks"]}
        assert services["Proxy"] is True and health["ok"], health
        # the cluster's proxy restarts with an empty table: binderbox's route comes back
        proc = cluster.children["proxy"].proc
        assert proc is not None
        proc.terminate()
        await proc.wait()
        await cluster.restart_child("proxy")
        assert await routed_to(cluster, target)
        page = await AsyncHTTPClient().fetch(
            cluster.public_url + "versions", raise_error=False, request_timeout=30
        )
        assert page.code == 200 and b"binderbox" in page.body, page.body
        # stopping binderbox leaves the cluster's sessions running
        assert serve.stop() == 0
        users = await HubClient(cluster.hub_api_url, cluster.api_token).request("GET", "users")
        assert any(user["servers"] for user in users), users
    finally:
        serve.kill()
    assert "Traceback" not in serve.output(), serve.output()[-4000:]
