"""The web layer over real HTTP: event streams, the JSON API, pages, badges."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from traitlets.config import Config
from web_helpers import (
    PROVIDERS,
    BrokenPipeline,
    NeverPipeline,
    ScriptedPipeline,
    SSEClient,
    failing,
    launch_events,
    serve,
)

from binderbox.events import Built, Phase
from binderbox.prebuilt import Entry
from binderbox.providers import offered_providers, repoprovider_configs
from binderbox.sessions.identity import Visitor
from binderbox.sessions.sizes import SessionSizes
from binderbox.web import SessionIndex, WebApp, make_app
from binderbox.web.base import LaunchPipelineProtocol
from binderbox.web.menu import OptionsMenu

GIT_URL = "https%3A%2F%2Fexample.org%2Fr.git"


def web(pipeline: LaunchPipelineProtocol, **settings: Any) -> Any:
    """An app for ``pipeline`` with test settings (short linger, fast keepalive)."""
    settings.setdefault("ready_linger_seconds", 0.2)
    settings.setdefault("sse_keepalive_interval", 5.0)
    return make_app(pipeline, config=WebApp(**settings), providers=PROVIDERS)


async def get(base: str, path: str, **kwargs: Any) -> HTTPResponse:
    kwargs.setdefault("raise_error", False)
    kwargs.setdefault("follow_redirects", False)
    return await AsyncHTTPClient().fetch(base + path, **kwargs)


# --- /build: the event stream -------------------------------------------------------


async def test_build_streams_events_in_order_as_sse_frames() -> None:
    pipeline = ScriptedPipeline(launch_events())
    async with serve(web(pipeline)) as base:
        client = await SSEClient.open(base, "/build/gh/o/r/HEAD")
        assert client.status == 200
        assert client.headers["content-type"] == "text/event-stream"
        assert client.headers["cache-control"] == "no-cache"
        raw = (await client.body()).decode()
    frames = [f for f in raw.split("\n\n") if f]
    assert all(f.startswith("data: ") and "\n" not in f for f in frames[:-1]), frames
    _data_line, id_line = frames[-1].split("\n")  # the final event names the stream's end
    assert id_line == "id: binderbox-launch-ended"
    events = [json.loads(f.split("\n")[0][len("data: ") :]) for f in frames]
    assert [e["phase"] for e in events] == [
        "waiting", "fetching", "building", "building", "built", "launching", "ready",
    ]  # fmt: skip
    assert events[2]["message"] == "Resolved 3 packages\n"
    assert events[4]["imageName"] == "env-abc"
    assert events[-1] == launch_events()[-1].to_wire()
    assert pipeline.closed.is_set()


async def test_build_request_carries_spec_launch_host_and_client() -> None:
    pipeline = ScriptedPipeline(launch_events())
    async with serve(web(pipeline)) as base:
        headers = {"X-Forwarded-For": "203.0.113.9, 10.0.0.7", "X-Forwarded-Proto": "https"}
        client = await SSEClient.open(base, "/build/gh/o/r/feature/x", headers)
        await client.events()
    request = pipeline.requests[0]
    assert (request.provider, request.spec, request.build_only) == ("gh", "o/r/feature/x", False)
    host = base.removeprefix("http://")
    assert request.launch_host == f"https://{host}/"
    # the proxy appends the address it saw: the last entry is the one to trust
    assert request.client_ip == "10.0.0.7"


async def test_client_address_behind_two_proxies() -> None:
    """Behind serve's TLS front and the proxy: the entry two from the end (the front's)."""
    pipeline = ScriptedPipeline(launch_events())
    async with serve(web(pipeline, forwarded_hops=2)) as base:
        headers = {"X-Forwarded-For": "198.51.100.4, 203.0.113.9, 10.0.0.7"}
        await (await SSEClient.open(base, "/build/gh/o/r/HEAD", headers)).events()
    assert pipeline.requests[0].client_ip == "203.0.113.9"


@pytest.mark.parametrize(
    ("path", "provider", "spec"),
    [
        ("/build/gl/group%2Fproject/main", "gl", "group%2Fproject/main"),
        ("/build/git/" + GIT_URL + "/v1.0", "git", GIT_URL + "/v1.0"),
        ("/build/zenodo/10.5281/zenodo.3242074", "zenodo", "10.5281/zenodo.3242074"),
    ],
)  # fmt: skip
async def test_build_keeps_the_spec_escaping(path: str, provider: str, spec: str) -> None:
    pipeline = ScriptedPipeline(launch_events())
    async with serve(web(pipeline)) as base:
        await (await SSEClient.open(base, path)).events()
    assert (pipeline.requests[0].provider, pipeline.requests[0].spec) == (provider, spec)


async def test_public_url_and_untrusted_xheaders() -> None:
    pipeline = ScriptedPipeline(launch_events())
    app = web(pipeline, public_url="https://binder.example.org", trust_xheaders=False)
    async with serve(app) as base:
        client = await SSEClient.open(base, "/build/gh/o/r/HEAD", {"X-Forwarded-For": "1.2.3.4"})
        await client.events()
    assert pipeline.requests[0].launch_host == "https://binder.example.org/"
    assert pipeline.requests[0].client_ip == "127.0.0.1"


async def test_build_without_event_stream_accept_is_400() -> None:
    pipeline = ScriptedPipeline(launch_events())
    async with serve(web(pipeline)) as base:
        response = await get(base, "/build/gh/o/r/HEAD", headers={"Accept": "text/html"})
    assert response.code == 400
    assert "text/event-stream" in json.loads(response.body)["message"]
    assert pipeline.requests == []


async def test_failed_event_carries_status_code_and_ends_the_stream() -> None:
    pipeline = failing("Could not resolve ref HEADX: check the URL.", 404)
    async with serve(web(pipeline, ready_linger_seconds=600)) as base:
        events = await (await SSEClient.open(base, "/build/gh/o/r/HEADX")).events()
    assert events[-1] == {
        "phase": "failed",
        "message": "Could not resolve ref HEADX: check the URL.",
        "status_code": 404,
    }


async def test_stream_stays_open_after_ready_with_keepalives_then_ends() -> None:
    pipeline = ScriptedPipeline(launch_events())
    app = web(pipeline, ready_linger_seconds=600, sse_keepalive_interval=0.05)
    async with serve(app) as base:
        client = await SSEClient.open(base, "/build/gh/o/r/HEAD")
        while (frame := await client.frame()) is not None:
            if not frame.is_comment and frame.data["phase"] == "ready":
                break
        # still open after ready: the keepalives keep coming
        after = [await client.frame(), await client.frame()]
        assert all(f is not None and f.raw == ":keepalive" for f in after)
        await client.close()
    # a short linger ends the stream by itself
    async with serve(web(ScriptedPipeline(launch_events()), ready_linger_seconds=0.1)) as base:
        events = await (await SSEClient.open(base, "/build/gh/o/r/HEAD")).events()
    assert events[-1]["phase"] == "ready"


async def test_stream_ends_after_ready_and_a_reconnect_does_not_launch_again() -> None:
    pipeline = ScriptedPipeline(launch_events())
    async with serve(web(pipeline, ready_linger_seconds=0)) as base:  # the default
        client = await SSEClient.open(base, "/build/gh/o/r/HEAD")
        frames = []
        while (frame := await client.frame()) is not None:  # None: the server ended it
            frames.append(frame)
        assert frames[-1].data["phase"] == "ready"
        assert [f.id for f in frames] == [""] * (len(frames) - 1) + ["binderbox-launch-ended"]
        # what an EventSource does when the stream ends: reconnect with Last-Event-ID
        again = await SSEClient.open(
            base, "/build/gh/o/r/HEAD", {"Last-Event-ID": "binderbox-launch-ended"}
        )
        assert again.status == 204
        assert await again.body() == b""
    assert len(pipeline.requests) == 1


async def test_keepalive_comments_while_waiting() -> None:
    pipeline = NeverPipeline()
    async with serve(web(pipeline, sse_keepalive_interval=0.05)) as base:
        client = await SSEClient.open(base, "/build/gh/o/r/HEAD")
        frames = [await client.frame() for _ in range(4)]
        await client.close()
    assert frames[0] is not None and frames[0].data["phase"] == "waiting"
    assert [f.raw for f in frames[1:] if f is not None] == [":keepalive"] * 3


async def test_client_disconnect_closes_the_launch() -> None:
    pipeline = NeverPipeline()
    async with serve(web(pipeline)) as base:
        client = await SSEClient.open(base, "/build/gh/o/r/HEAD")
        first = await client.frame()
        assert first is not None and first.data["phase"] == "waiting"
        assert not pipeline.closed.is_set()
        await client.close()
        await asyncio.wait_for(pipeline.closed.wait(), timeout=10)


async def test_a_sent_ready_hands_the_session_over() -> None:
    # the stream reads the launch to its end once ready is out: the session is the visitor's
    pipeline = ScriptedPipeline(launch_events())
    async with serve(web(pipeline, ready_linger_seconds=600)) as base:
        client = await SSEClient.open(base, "/build/gh/o/r/HEAD")
        while (frame := await client.frame()) is not None:
            if not frame.is_comment and frame.data["phase"] == "ready":
                break
        await asyncio.wait_for(pipeline.finished.wait(), timeout=10)
        await client.close()


async def test_a_client_that_leaves_before_ready_abandons_the_launch() -> None:
    pipeline = ScriptedPipeline(launch_events(), delay=0.2)
    async with serve(web(pipeline)) as base:
        client = await SSEClient.open(base, "/build/gh/o/r/HEAD")
        first = await client.frame()
        assert first is not None and first.data["phase"] != "ready"
        await client.close()
        await asyncio.wait_for(pipeline.closed.wait(), timeout=10)
    assert not pipeline.finished.is_set()


async def test_pipeline_bug_becomes_a_failed_event() -> None:
    async with serve(web(BrokenPipeline())) as base:
        events = await (await SSEClient.open(base, "/build/gh/o/r/HEAD")).events()
    assert [e["phase"] for e in events] == ["fetching", "failed"]
    assert events[-1]["status_code"] == 500
    assert "a bug" not in events[-1]["message"]


async def test_stream_without_an_outcome_ends_failed() -> None:
    pipeline = ScriptedPipeline(launch_events()[:3])
    async with serve(web(pipeline)) as base:
        events = await (await SSEClient.open(base, "/build/gh/o/r/HEAD")).events()
    assert events[-1]["phase"] == "failed"
    assert events[-1]["status_code"] == 500


async def test_build_only_in_api_only_mode() -> None:
    built = Built(message="built", image_name="env-abc", path="/srv/env")
    pipeline = ScriptedPipeline([built])
    async with serve(web(pipeline, api_only=True)) as base:
        events = await (await SSEClient.open(base, "/build/gh/o/r/HEAD?build_only=true")).events()
    assert pipeline.requests[0].build_only is True
    assert [e["phase"] for e in events] == ["built"]


async def test_build_only_refused_outside_api_only_mode() -> None:
    pipeline = ScriptedPipeline(launch_events())
    async with serve(web(pipeline)) as base:
        events = await (await SSEClient.open(base, "/build/gh/o/r/HEAD?build_only=true")).events()
    assert pipeline.requests == []
    assert events == [
        {
            "phase": "failed",
            "message": "Building without launching is only allowed in API-only mode.",
            "status_code": 400,
            "reason": "build_only",
        }
    ]


async def test_rate_limit_per_address_skipped_with_a_launch_token() -> None:
    pipeline = ScriptedPipeline(launch_events())
    async with serve(web(pipeline, rate_limit=2, rate_limit_period=3600)) as base:

        async def build(ip: str, query: str = "") -> SSEClient:
            path = "/build/gh/o/r/HEAD" + query
            return await SSEClient.open(base, path, {"X-Forwarded-For": ip})

        for _ in range(2):
            client = await build("198.51.100.1")
            assert client.status == 200
            await client.events()
        refused = await build("198.51.100.1")
        assert refused.status == 429
        assert int(refused.headers["retry-after"]) > 0
        assert "Rate limit" in json.loads(await refused.body())["message"]
        # another address has its own budget
        other = await build("198.51.100.2")
        assert other.status == 200
        await other.events()
        # the launch page's token lets the browser through
        page = await get(base, "/v2/gh/o/r/HEAD")
        token = re.search(r'data-build-token="([^"]+)"', page.body.decode())
        assert token is not None
        allowed = await build("198.51.100.1", f"?build_token={token.group(1)}")
        assert allowed.status == 200
        await allowed.events()
        # ...but only for the spec it was issued for
        other_spec = await SSEClient.open(
            base, f"/build/gh/o/other/HEAD?build_token={token.group(1)}",
            {"X-Forwarded-For": "198.51.100.1"},
        )  # fmt: skip
        assert other_spec.status == 429
    assert len(pipeline.requests) == 4


# --- JSON endpoints ---------------------------------------------------------------


async def test_health_ok_and_503() -> None:
    pipeline = ScriptedPipeline(checks=[{"service": "Hub", "ok": True}])
    async with serve(web(pipeline)) as base:
        response = await get(base, "/health")
        assert response.code == 200
        assert json.loads(response.body) == {"ok": True, "checks": [{"service": "Hub", "ok": True}]}
        pipeline.checks = [{"service": "Hub", "ok": True}, {"service": "Store", "ok": False}]
        response = await get(base, "/health")
    assert response.code == 503
    body = json.loads(response.body)
    assert body["ok"] is False
    assert {"service": "Store", "ok": False} in body["checks"]


async def test_versions_keeps_binderhub_keys() -> None:
    async with serve(web(ScriptedPipeline())) as base:
        response = await get(base, "/versions")
    body = json.loads(response.body)
    assert response.code == 200
    assert {"binderhub", "binderbox", "builder", "builder_info"} <= body.keys()
    assert body["builder"] == "uv 0.5"
    assert body["builder_info"] == {"uv": "0.5"}


async def test_metrics_prometheus_text() -> None:
    async with serve(web(ScriptedPipeline())) as base:
        response = await get(base, "/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.body.decode()
    assert "# TYPE binderhub_build_time_seconds histogram" in text
    assert "binderhub_inprogress_launches" in text


async def test_repoproviders_lists_display_configs() -> None:
    async with serve(web(ScriptedPipeline())) as base:
        response = await get(base, "/api/repoproviders")
    body = json.loads(response.body)
    assert [p["id"] for p in body] == ["gh", "gl", "zenodo"]
    assert body[0]["displayName"] == "GitHub"
    assert body[0]["repo"]["label"] == "GitHub repository name or URL"
    assert body[2]["ref"]["enabled"] is False


async def test_repoproviders_default_to_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    import binderbox.providers

    monkeypatch.setattr(binderbox.providers, "PROVIDERS", {"gh": PROVIDERS["gh"]}, raising=False)
    app = make_app(ScriptedPipeline(), config=WebApp())
    async with serve(app) as base:
        response = await get(base, "/api/repoproviders")
    assert [p["id"] for p in json.loads(response.body)] == ["gh"]


async def test_repoproviders_of_the_public_service() -> None:
    """What ``binderbox serve`` offers without allow_local: the registry minus
    ``local``, each entry the provider's own config in BinderHub's shape; the
    launch page knows the same providers."""
    offered = offered_providers(allow_local=False)
    app = make_app(ScriptedPipeline(), config=WebApp(), providers=offered)
    async with serve(app) as base:
        response = await get(base, "/api/repoproviders")
        local_page = await get(base, "/v2/local/%2Fsrv%2Frepo/HEAD")
        git_page = await get(base, "/v2/git/https%3A%2F%2Fexample.org%2Fr.git/HEAD")
    body = json.loads(response.body)
    assert body == repoprovider_configs(allow_local=False)
    assert [p["id"] for p in body] == ["gh", "gl", "gist", "git"]
    assert body[0] == {
        "id": "gh",
        "displayName": "GitHub",
        "spec": {"validateRegex": ".+"},
        "repo": {"label": "GitHub repository name or URL", "placeholder": "owner/repository"},
        "ref": {"enabled": True, "default": "HEAD"},
    }
    assert local_page.code == 404
    assert git_page.code == 200


async def test_cors_header_and_preflight() -> None:
    async with serve(web(ScriptedPipeline(launch_events()), cors_allow_origin="*")) as base:
        for path in ("/versions", "/health", "/api/repoproviders", "/badge_logo.svg"):
            response = await get(base, path)
            assert response.headers["Access-Control-Allow-Origin"] == "*", path
        preflight = await get(
            base, "/build/gh/o/r/HEAD", method="OPTIONS",
            headers={"Origin": "https://thebe.example", "Access-Control-Request-Method": "GET"},
        )  # fmt: skip
        assert preflight.code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
        assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
        client = await SSEClient.open(base, "/build/gh/o/r/HEAD")
        assert client.headers["access-control-allow-origin"] == "*"
        await client.events()
        page = await get(base, "/")
        assert "Access-Control-Allow-Origin" not in page.headers
    async with serve(web(ScriptedPipeline())) as base:
        response = await get(base, "/versions")
    assert "Access-Control-Allow-Origin" not in response.headers


# --- pages, redirects, badges ----------------------------------------------------


async def test_badges_are_svg() -> None:
    async with serve(web(ScriptedPipeline())) as base:
        for name in ("badge_logo.svg", "badge.svg"):
            response = await get(base, "/" + name)
            assert response.code == 200
            assert response.headers["Content-Type"] == "image/svg+xml"
            assert response.body.startswith(b"<svg") and b"binder" in response.body


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/repo/alice/demo", "/v2/gh/alice/demo/master"),
        ("/repo/alice/demo/", "/v2/gh/alice/demo/master"),
        ("/repo/alice/demo/nb/a.ipynb", "/v2/gh/alice/demo/master?urlpath=%2Fnb%2Fa.ipynb"),
        # escapes that are unsafe in a header stay escapes in the Location
        ("/repo/a%0d%0a/demo%00", "/v2/gh/a%0D%0A/demo%00/master"),
        ("/repo/a%2Fb/demo%7f", "/v2/gh/a%2Fb/demo%7F/master"),
        ("/repo/alice/demo/%0d%0aSet-Cookie:x",
         "/v2/gh/alice/demo/master?urlpath=%2F%0D%0ASet-Cookie%3Ax"),
    ],
)  # fmt: skip
async def test_legacy_repo_redirect(path: str, target: str) -> None:
    async with serve(web(ScriptedPipeline())) as base:
        response = await get(base, path)
    assert response.code == 302
    assert response.headers["Location"] == target


async def test_ended_session_offers_to_launch_again() -> None:
    pipeline = ScriptedPipeline(launch_events("http://127.0.0.1:9/user/o-r-x1y2/"))
    html = {"Accept": "text/html,application/xhtml+xml"}
    async with serve(web(pipeline)) as base:
        await (await SSEClient.open(base, "/build/gh/o/r/HEAD")).events()
        known = await get(base, "/user/o-r-x1y2/lab/tree/x.ipynb", headers=html)
        unknown = await get(base, "/user/someone-else/", headers=html)
        api = await get(base, "/user/o-r-x1y2/api/kernels", headers={"Accept": "application/json"})
    assert known.code == 404
    page = known.body.decode()
    assert "This session has ended" in page
    assert 'href="/v2/gh/o/r/HEAD"' in page
    assert unknown.code == 404
    assert "This session has ended" in unknown.body.decode()
    assert "/v2/" not in unknown.body.decode()
    assert 'href="/"' in unknown.body.decode()
    assert api.code == 404
    assert json.loads(api.body)["relaunch"] == "/v2/gh/o/r/HEAD"


async def test_ended_session_page_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite"
    pipeline = ScriptedPipeline(launch_events("http://127.0.0.1:9/user/o-r-x1y2/"))
    html = {"Accept": "text/html,application/xhtml+xml"}
    config = WebApp(ready_linger_seconds=0.2, sse_keepalive_interval=5.0)
    before = make_app(
        pipeline, config=config, providers=PROVIDERS, sessions=SessionIndex(path=path)
    )
    async with serve(before) as base:
        await (await SSEClient.open(base, "/build/gh/o/r/HEAD")).events()
    after = make_app(pipeline, config=config, providers=PROVIDERS, sessions=SessionIndex(path=path))
    async with serve(after) as base:  # binderbox restarted: a new process, the same file
        page = await get(base, "/user/o-r-x1y2/lab", headers=html)
    assert page.code == 404 and 'href="/v2/gh/o/r/HEAD"' in page.body.decode()


def test_session_index_keeps_the_newest(tmp_path: Path) -> None:
    index = SessionIndex(limit=3, path=tmp_path / "sessions.sqlite")
    for n in range(5):
        index.record(f"http://h/user/u{n}/", f"v2/gh/o/r{n}/HEAD")
    index.record("http://h/user/u2/", "v2/gh/o/again/HEAD")  # relaunched: newest now
    assert [index.lookup(f"u{n}") for n in range(5)] == [
        None,
        None,
        "v2/gh/o/again/HEAD",
        "v2/gh/o/r3/HEAD",
        "v2/gh/o/r4/HEAD",
    ]
    index.record("http://h/user/u5/", "v2/gh/o/r5/HEAD")
    assert index.lookup("u3") is None and index.lookup("u2") is not None


async def test_home_page_has_the_form_and_its_assets() -> None:
    app = web(
        ScriptedPipeline(), banner_html="<b>Maintenance at noon</b>", about_text="Run by <us>"
    )
    async with serve(app) as base:
        response = await get(base, "/")
        page = response.body.decode()
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
        fetched = [await get(base, asset) for asset in assets]
    assert response.code == 200
    for element in ('id="provider"', 'id="repo"', 'id="ref"', 'id="path"', 'id="badge-md"'):
        assert element in page
    assert "<b>Maintenance at noon</b>" in page
    assert "Run by &lt;us&gt;" in page
    assert {a.split("?")[0] for a in assets} >= {"/static/style.css", "/static/home.js"}
    assert all(r.code == 200 for r in fetched)
    assert "http" not in "".join(assets)  # no CDN


async def test_without_logins_the_menu_offers_environments_at_the_default_size() -> None:
    """Nobody logs in here: everyone is anonymous and gets the default size, so the menu
    lists the environments (a failed one with its reason, no button) and no size."""
    ready, broken = (
        Entry("stack", "Science stack", "gh/o/stack/v1"),
        Entry("old", "Old", "gh/o/x/1"),
    )
    ready.state, broken.state, broken.message = "ready", "failed", "Could not build it."
    sizes = SessionSizes(
        config=Config(
            {
                "SessionSizes": {
                    "sizes": [
                        {"name": "small", "mem_limit": "1G"},
                        {"name": "big", "mem_limit": "4G"},
                    ]
                }
            }
        )
    )
    config = WebApp(ready_linger_seconds=0.2)
    menu = OptionsMenu([ready, broken], sizes, login_mode="none")
    app = make_app(ScriptedPipeline(), config=config, providers=PROVIDERS, menu=menu)
    async with serve(app) as base:
        page = (await get(base, "/")).body.decode()
    assert 'id="options-menu"' in page and 'id="menu-size"' not in page
    assert 'formaction="/v2/gh/o/stack/v1"' in page and "Science stack" in page
    assert "Could not build it." in page and 'formaction="/v2/gh/o/x/1"' not in page
    assert menu.offered(Visitor(name="ann")).sizes == tuple(sizes.parsed())  # type: ignore[union-attr]
    assert OptionsMenu([ready], sizes, login_mode="optional").offered(Visitor()) is None


async def test_launch_page_points_at_the_build_stream() -> None:
    async with serve(web(ScriptedPipeline())) as base:
        response = await get(base, "/v2/gl/group%2Fproject/main?urlpath=lab")
        unknown = await get(base, "/v2/nope/o/r/HEAD")
    page = response.body.decode()
    assert response.code == 200
    assert 'data-build-url="/build/gl/group%2Fproject/main"' in page
    assert "group/project/main" in page
    assert unknown.code == 404
    assert "nope" in unknown.body.decode()


async def test_api_only_mode_serves_no_launch_pages() -> None:
    async with serve(web(ScriptedPipeline(), api_only=True)) as base:
        home = await get(base, "/")
        launch = await get(base, "/v2/gh/o/r/HEAD")
        legacy = await get(base, "/repo/o/r")
        versions = await get(base, "/versions")
    assert home.code == 200 and "build/" in home.body.decode()
    assert launch.code == 404 and legacy.code == 404
    assert versions.code == 200


async def test_base_url_prefixes_every_route() -> None:
    pipeline = ScriptedPipeline(launch_events())
    async with serve(web(pipeline, base_url="/binder")) as base:
        events = await (await SSEClient.open(base, "/binder/build/gh/o/r/HEAD")).events()
        page = await get(base, "/binder/v2/gh/o/r/HEAD")
        legacy = await get(base, "/binder/repo/o/r")
        outside = await get(base, "/versions")
    assert events[-1]["phase"] == Phase.READY
    assert pipeline.requests[0].spec == "o/r/HEAD"
    assert pipeline.requests[0].launch_host.endswith("/binder/")
    assert 'data-build-url="/binder/build/gh/o/r/HEAD"' in page.body.decode()
    assert "/binder/static/launch.js" in page.body.decode()
    assert legacy.headers["Location"] == "/binder/v2/gh/o/r/master"
    assert outside.code == 404


async def test_credentials_in_a_spec_stay_out_of_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    pipeline = ScriptedPipeline(launch_events())
    caplog.set_level("INFO")
    spec = "https%3A%2F%2Fbob%3Ahunter2%40example.org%2Fr.git/main"
    async with serve(web(pipeline)) as base:
        await (await SSEClient.open(base, f"/build/git/{spec}")).events()
        refused = await get(base, f"/build/git/{spec}")  # no Accept: an error Tornado logs
        assert refused.code == 400
    assert pipeline.requests[0].spec == spec  # the pipeline gets it as sent
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "/build/git/" in logged
    assert "hunter2" not in logged


@pytest.mark.parametrize(
    ("path", "code", "kind"),
    [
        ("/static/x%00.css", 404, ""),
        ("/static/%00/../logo.svg", 404, ""),
        ("/v2/gh/%ff/r/HEAD", 400, "page"),
        ("/v2/gh/o/r/HEAD?labpath=%ff", 200, "page"),
        ("/user/%C0%AE/", 400, "page"),
        ("/nothing%zz%00", 404, "page"),
        ("/about?x=%zz", 200, "page"),
        ("/build/gh/%ff/r", 400, "json"),
        ("/build/gh/o/r?build_only=%ff", 400, "json"),
        ("/api/repoproviders%00", 404, "page"),
    ],
)  # fmt: skip
async def test_malformed_requests_get_a_plain_answer(path: str, code: int, kind: str) -> None:
    """Bad escapes, invalid UTF-8 and NUL bytes: a 4xx page or JSON, never a 500."""
    async with serve(web(ScriptedPipeline())) as base:
        response = await get(base, path)
    assert response.code == code
    body = response.body.decode()
    if kind == "page":  # one of ours, an error page when the answer is one
        assert response.headers["Content-Type"].startswith("text/html")
        assert "Powered by binderbox" in body
        assert code < 400 or f"<h1>{code}</h1>" in body
    elif kind == "json":
        assert json.loads(body)["status_code"] == code


async def test_build_query_argument_of_invalid_utf8_is_json_400() -> None:
    async with serve(web(ScriptedPipeline())) as base:
        response = await get(
            base, "/build/gh/o/r?build_only=%ff", headers={"Accept": "text/event-stream"}
        )
    assert response.code == 400
    assert json.loads(response.body)["status_code"] == 400
