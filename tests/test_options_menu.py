"""The options menu of the home page, end to end: a real OpenID provider on loopback
(npm ``oidc-provider``, tests/oidc_provider.mjs), ``binderbox serve`` with prebuilt
environments and sizes, a real browser (headless Chromium), real sandboxed sessions.

* alice (groups ``scientists``, ``staff``) logs in, finds the prebuilt environment
  ready on the home page, picks the staff-only size and launches it in one click; the
  session's memory limit, read from its cgroup where this host enforces it, is that
  size's, and the session is told it (``MEM_LIMIT``);
* bob (``scientists`` only) is not offered that size, and a launch link forcing it
  fails plainly on the launch page; so does it for an anonymous visitor, who is asked
  to log in for the menu instead of getting one.

Screenshots go to /tmp/binderbox-shots/.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from browser import CHROMIUM, chromium, shot
from kernels import run_code
from login_helpers import (
    OIDC_INSTALLED,
    OidcProvider,
    hub_oidc_provider,
    oidc_serve,
    sign_in_at_provider,
)
from playwright.async_api import Browser, Page, expect
from repos import make_repo
from serve_helpers import ServeProcess, git_spec
from tornado.httpclient import AsyncHTTPClient

from binderbox.hub.process import free_port
from binderbox.runtime.limits import limits_status
from binderbox.sessions.hubclient import HubClient

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium"),
    pytest.mark.skipif(not OIDC_INSTALLED, reason="needs oidc-provider (scripts/setup --test)"),
]
module_loop = pytest.mark.asyncio(loop_scope="module")

CLIENT_ID = "binderbox-menu"
CLIENT_SECRET = "menu-test-client-secret"
CLIENT = (CLIENT_ID, CLIENT_SECRET)
ACCOUNTS = {"alice": {"groups": ["scientists", "staff"]}, "bob": {"groups": ["scientists"]}}
SIZES = [
    {"name": "small", "display": "Small: 1 GB", "mem_limit": "1G", "cpu_limit": 1},
    {"name": "big", "display": "Big: 2 GB (staff)", "mem_limit": "2G", "groups": ["staff"]},
]
MEMORY = "/sys/fs/cgroup/memory/binderbox"


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"public": free_port(), "hub": free_port(), "api": free_port()}


@pytest.fixture(scope="module")
def provider(
    tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int]
) -> Iterator[OidcProvider]:
    with hub_oidc_provider(tmp_path_factory.mktemp("oidc"), ports, CLIENT, ACCOUNTS) as running:
        yield running


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("repos") / "stack", {"README.md": "# stack\n"})


@pytest.fixture(scope="module")
def serve(
    tmp_path_factory: pytest.TempPathFactory,
    ports: dict[str, int],
    provider: OidcProvider,
    stack: Path,
) -> Iterator[ServeProcess]:
    environments = [{"name": "stack", "display": "Science stack", "spec": f"git/{git_spec(stack)}"}]
    config = [
        "c.Logins.allowed_groups = ['scientists']",
        f"c.SessionSizes.sizes = {SIZES!r}",
        f"c.Prebuilt.environments = {environments!r}",
    ]
    workdir = tmp_path_factory.mktemp("serve-menu")
    with oidc_serve(workdir, ports, provider, CLIENT, "optional", config) as served:
        yield served


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as started:
        yield started


async def prebuilt_ready(serve: ServeProcess) -> None:
    """Wait (bounded) until /health says the prebuilt environment is built."""
    states: dict[str, str] = {}
    for _ in range(600):  # 300 s at most
        response = await AsyncHTTPClient().fetch(f"{serve.url}health", raise_error=False)
        checks = json.loads(response.body)["checks"]
        found = [c for c in checks if c["service"] == "Prebuilt environments"]
        states = found[0]["environments"] if found else {}
        if states.get("stack") in ("ready", "failed"):
            break
        await asyncio.sleep(0.5)
    assert states.get("stack") == "ready", (states, serve.output()[-3000:])


async def logged_in(serve: ServeProcess, browser: Browser, login: str) -> Page:
    page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
    await page.goto(f"{serve.url}login")
    await sign_in_at_provider(page, login)
    await page.wait_for_url(serve.url, timeout=60_000)
    await expect(page.locator("header.topbar nav")).to_contain_text(login)
    return page


@module_loop
async def test_the_menu_launches_a_prebuilt_environment_at_the_chosen_size(
    serve: ServeProcess, browser: Browser, stack: Path
) -> None:
    await prebuilt_ready(serve)
    page = await logged_in(serve, browser, "alice")
    menu = page.locator("#options-menu")
    entry = menu.locator("li.environment[data-name=stack]")
    await expect(entry).to_contain_text("Science stack")
    await expect(entry.locator(".state")).to_have_text("ready")
    size = menu.locator("select#menu-size")
    assert await size.input_value() == "small"  # the default, preselected
    assert await size.locator("option").all_inner_texts() == ["Small: 1 GB", "Big: 2 GB (staff)"]
    await size.select_option("big")
    await page.screenshot(path=shot("options-menu-alice.png"), full_page=True)
    await entry.locator("button.launch").click()
    await page.wait_for_url(re.compile(r"/user/alice/[a-z0-9-]+/"), timeout=300_000)

    server = urlsplit(page.url).path.split("/")[3]
    hub = HubClient(serve.hub_api_url, serve.api_token)
    token = await hub.create_token("alice", [f"access:servers!server=alice/{server}"], "test")
    code = "import os; print(os.environ.get('MEM_LIMIT'))"
    assert (await run_code(f"{serve.url}user/alice/{server}/", token, code)).strip() == str(2 << 30)
    if limits_status()["backend"] == "cgroup-v1":  # enforced, not only announced
        (group,) = Path(MEMORY).glob(f"alice-{server}-*")
        assert (group / "memory.limit_in_bytes").read_text().strip() == str(2 << 30)

    # the size chosen in the menu goes with a repository launched from the form too
    await page.goto(serve.url)
    await page.locator("select#menu-size").select_option("big")
    await page.select_option("#provider", "git")
    await page.fill("#repo", f"file://{stack}")
    await page.fill("#ref", "HEAD")
    await expect(page.locator("#launch-url")).not_to_have_value(re.compile("size"))  # shared
    await page.click("#launch-button")
    await page.wait_for_url(re.compile(r"/v2/git/[^?]+/HEAD\?size=big$"), timeout=30_000)
    await page.context.close()


@module_loop
async def test_a_size_outside_the_visitors_groups_is_not_offered_and_refused_plainly(
    serve: ServeProcess, browser: Browser, stack: Path
) -> None:
    page = await logged_in(serve, browser, "bob")
    menu = page.locator("#options-menu")
    await expect(menu.locator("li.environment[data-name=stack]")).to_be_visible()
    await expect(menu).not_to_contain_text("Big")
    await expect(menu.locator("select#menu-size")).to_have_count(0)  # one size: no choice
    await page.screenshot(path=shot("options-menu-bob.png"), full_page=True)

    forced = f"{serve.url}v2/git/{git_spec(stack)}?size=big"
    await page.goto(forced)
    error = page.locator("#error")
    await expect(error).to_have_text("Your account may not pick the size 'big'.", timeout=60_000)
    await page.screenshot(path=shot("options-menu-forced-size.png"))
    await page.context.close()

    anonymous = await (await browser.new_context()).new_page()
    await anonymous.goto(serve.url)
    await expect(anonymous.locator("#options-menu")).to_have_count(0)
    await expect(anonymous.locator("#menu-hint")).to_contain_text("Log in")
    await anonymous.goto(forced)
    await expect(anonymous.locator("#error")).to_have_text(
        "Log in to pick the size 'big'.", timeout=60_000
    )
    await anonymous.context.close()
