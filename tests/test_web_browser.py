"""The launch and home pages in a real (headless) Chromium."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from browser import NEEDS_CHROMIUM, SHOTS, chromium
from playwright.async_api import Browser, expect
from tornado.web import Application, RequestHandler
from web_helpers import PROVIDERS, ScriptedPipeline, failing, launch_events, serve

from binderbox.events import Event
from binderbox.pipeline import LaunchRequest
from binderbox.web import WebApp, make_app

pytestmark = NEEDS_CHROMIUM


@dataclass
class GatedPipeline(ScriptedPipeline):
    """Yields everything but the last event, then waits for ``gate``."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def launch(self, request: LaunchRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        for event in self.events[:-1]:
            yield event
        await self.gate.wait()
        yield self.events[-1]


class SessionPage(RequestHandler):
    """Stands in for a Jupyter server: shows the path and query it was opened with."""

    def get(self, rest: str) -> None:
        self.finish(f"<html><body><h1 id='where'>session {rest}</h1></body></html>")


@pytest.fixture
def shots() -> Path:
    """Where the screenshots go (for a person to look at)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as started:
        yield started


async def test_launch_page_shows_the_log_then_opens_the_session(
    browser: Browser, shots: Path
) -> None:
    session_app = Application([(r"/user/alice/(.*)", SessionPage)])
    async with serve(session_app) as session_base:
        pipeline = GatedPipeline(launch_events(f"{session_base}/user/alice/"))
        app = make_app(pipeline, config=WebApp(), providers=PROVIDERS)
        async with serve(app) as base:
            page = await browser.new_page(viewport={"width": 1100, "height": 800})
            await page.goto(f"{base}/v2/gh/o/r/HEAD?urlpath=lab/tree/x.ipynb")
            log = page.locator("#log")
            await expect(log).to_contain_text("Installed 3 packages")
            await expect(log).to_contain_text("starting server")
            await expect(page.locator("#status")).to_contain_text("starting server")
            await page.screenshot(path=str(shots / "launch.png"), full_page=True)
            pipeline.gate.set()
            await page.wait_for_url(f"{session_base}/user/alice/lab/tree/x.ipynb?token=s3cret")
            await expect(page.locator("#where")).to_have_text("session lab/tree/x.ipynb")
    request = pipeline.requests[0]
    assert (request.provider, request.spec) == ("gh", "o/r/HEAD")


async def test_session_paths_from_the_query(browser: Browser) -> None:
    session_app = Application([(r"/user/alice/(.*)", SessionPage)])
    async with serve(session_app) as session_base:
        pipeline = ScriptedPipeline(launch_events(f"{session_base}/user/alice/"))
        app = make_app(pipeline, config=WebApp(), providers=PROVIDERS)
        async with serve(app) as base:
            page = await browser.new_page()
            await page.goto(f"{base}/v2/gh/o/r/HEAD?filepath=docs/a%20b.ipynb")
            await page.wait_for_url(f"{session_base}/user/alice/tree/docs/a%20b.ipynb?token=s3cret")
            await page.goto(f"{base}/v2/gh/o/r/HEAD?labpath=a.ipynb")
            await page.wait_for_url(f"{session_base}/user/alice/lab/tree/a.ipynb?token=s3cret")
            # an urlpath with its own query (nbgitpuller links) keeps it
            await page.goto(f"{base}/v2/gh/o/r/HEAD?urlpath=%2Fgit-pull%3Frepo%3Dx")
            await page.wait_for_url(f"{session_base}/user/alice/git-pull?repo=x&token=s3cret")
            await page.goto(f"{base}/v2/gh/o/r/HEAD")
            await page.wait_for_url(f"{session_base}/user/alice/?token=s3cret")


async def test_launch_page_shows_the_failure(browser: Browser, shots: Path) -> None:
    pipeline = failing("Could not resolve ref nope in o/r: check the URL.", 404)
    app = make_app(pipeline, config=WebApp(), providers=PROVIDERS)
    async with serve(app) as base:
        page = await browser.new_page(viewport={"width": 1100, "height": 700})
        await page.goto(f"{base}/v2/gh/o/r/nope")
        error = page.locator("#error")
        await expect(error).to_be_visible()
        await expect(error).to_have_text("Could not resolve ref nope in o/r: check the URL.")
        await expect(page.locator("#status")).to_have_text("Launch failed")
        await page.screenshot(path=str(shots / "launch-failed.png"), full_page=True)
    assert len(pipeline.requests) == 1


async def test_home_page_makes_links_and_badges(browser: Browser, shots: Path) -> None:
    app = make_app(ScriptedPipeline(), config=WebApp(), providers=PROVIDERS)
    async with serve(app) as base:
        page = await browser.new_page(viewport={"width": 1100, "height": 900})
        await page.goto(f"{base}/")
        await expect(page.locator("#provider option")).to_have_count(3)
        await page.fill("#repo", "https://github.com/o/r")
        await page.fill("#path", "index.ipynb")
        url = f"{base}/v2/gh/o/r/HEAD?labpath=index.ipynb"
        await expect(page.locator("#launch-url")).to_have_value(url)
        markdown = f"[![Binder]({base}/badge_logo.svg)]({url})"
        await expect(page.locator("#badge-md")).to_have_value(markdown)
        rst = f".. image:: {base}/badge_logo.svg\n   :target: {url}"
        await expect(page.locator("#badge-rst")).to_have_value(rst)
        await page.screenshot(path=str(shots / "home.png"), full_page=True)
        await page.select_option("#provider", "gl")
        await page.fill("#repo", "group/project")
        await page.fill("#ref", "main")
        await page.fill("#path", "")
        await expect(page.locator("#launch-url")).to_have_value(
            f"{base}/v2/gl/group%2Fproject/main"
        )
        await page.select_option("#provider", "zenodo")
        await expect(page.locator("#ref")).to_be_disabled()
        await page.fill("#repo", "10.5281/zenodo.3242074")
        await page.click("#launch-button")
        await page.wait_for_url(f"{base}/v2/zenodo/10.5281/zenodo.3242074")
