"""OpenID Connect logins, end to end: a real provider, ``binderbox serve``, a real browser.

The provider is npm's ``oidc-provider`` on loopback (tests/oidc_provider.mjs),
found by binderbox through its ``.well-known/openid-configuration``.  The
service runs with ``Logins.mode = 'required'`` and an allow-list of groups
from the provider's ``groups`` claim:

* a member of an allowed group signs in at the provider from a launch link,
  comes back to the launch page and the launch reaches ``ready``; being in the
  admin group, the page header offers the hub's admin page, which opens;
* a user outside the allowed groups is refused with the hub's plain 403 page;
* a server of the logged-in user, started through the hub API, has the
  login's access token in its environment under the configured name, and after
  the provider expired that token, the next start has the refreshed one.

Screenshots go to /tmp/binderbox-shots/.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import SCREEN, served_browser_marks, shot
from kernels import run_code
from login_helpers import (
    OIDC_INSTALLED,
    OidcProvider,
    hub_oidc_provider,
    oidc_serve,
    sign_in_at_provider,
)
from playwright.async_api import Browser, expect
from repos import make_repo
from serve_helpers import ServeProcess, build_events, git_spec
from session_helpers import resolved, session_env
from testcache import CACHE as TEST_CACHE

from binderbox.hub.children import free_port
from binderbox.sessions import SessionLauncher, SessionRequest
from binderbox.sessions.credentials import with_git_tokens
from binderbox.sessions.hubclient import HubClient
from binderbox.sessions.identity import Visitor

pytestmark = [
    *served_browser_marks(900),
    pytest.mark.skipif(not OIDC_INSTALLED, reason="needs oidc-provider (scripts/setup --test)"),
]
module_loop = pytest.mark.asyncio(loop_scope="module")

CLIENT_ID = "binderbox-hub"
CLIENT_SECRET = "oidc-test-client-secret"
CLIENT = (CLIENT_ID, CLIENT_SECRET)
#: seconds an access token of the provider lives (the refresh test waits it out); longer
#: than a server start on a loaded 2-core machine, so the token refreshed before a start is
#: still valid when the test reads it from the session
TOKEN_TTL = 45
ACCOUNTS = {
    "alice": {"groups": ["scientists", "admins"]},
    "mallory": {"groups": ["visitors"]},
}


#: a git host that takes the provider's access tokens (private repositories)
GIT_HOST = "git.example.org"


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"public": free_port(), "hub": free_port(), "api": free_port()}


@pytest.fixture(scope="module")
def provider(
    tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int]
) -> Iterator[OidcProvider]:
    workdir = tmp_path_factory.mktemp("oidc")
    with hub_oidc_provider(workdir, ports, CLIENT, ACCOUNTS, TOKEN_TTL) as running:
        yield running


@pytest.fixture(scope="module")
def serve(
    tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int], provider: OidcProvider
) -> Iterator[ServeProcess]:
    config = [
        "c.Logins.allowed_groups = ['scientists']",
        "c.Logins.admin_groups = ['admins']",
        "c.Logins.token_env = {'access_token': 'KC_ACCESS_TOKEN',"
        " 'refresh_token': 'KC_REFRESH_TOKEN'}",
        f"c.Logins.git_tokens = {{{GIT_HOST!r}: 'access_token'}}",
        # the refresh test starts a server of the test's own session environment
        f"c.ManagedHub.spawner_config = {{'allowed_roots': [{str(TEST_CACHE)!r}]}}",
    ]
    workdir = tmp_path_factory.mktemp("serve-oidc")
    with oidc_serve(workdir, ports, provider, CLIENT, "required", config) as served:
        yield served


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("repos") / "oidc-demo", {"README.md": "# demo\n"})


@module_loop
async def test_oidc_login_from_a_launch_link_then_the_launch_reaches_ready(
    serve: ServeProcess, repo: Path, browser: Browser
) -> None:
    context = await browser.new_context(viewport=SCREEN)
    page = await context.new_page()
    await page.goto(f"{serve.url}v2/git/{git_spec(repo)}")
    await sign_in_at_provider(page, "alice")
    # back on binderbox's launch page, logged in: the launch runs to the session
    try:
        await page.wait_for_url(re.compile(r"/user/[a-z0-9-]+/"), timeout=60_000)
    except Exception:
        await page.screenshot(path=shot("oidc-launch-failure.png"), full_page=True)
        print(page.url, await page.content(), serve.output(), sep="\n")
        raise
    await expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=90_000)
    await page.screenshot(path=shot("oidc-launched.png"))

    await page.goto(serve.url)
    header = page.locator("header.topbar nav")
    await expect(header).to_contain_text("alice")
    await expect(header.locator("a", has_text="Log out")).to_be_visible()
    await page.screenshot(path=shot("oidc-home-logged-in.png"))
    # alice is in the admin group: the header offers the hub's admin page, which opens
    await header.locator("a", has_text="Admin").click()
    await page.wait_for_url(re.compile(r"/hub/admin"), timeout=30_000)
    await expect(page.locator("body")).not_to_contain_text("403")
    await page.screenshot(path=shot("oidc-hub-admin.png"))
    await context.close()


@module_loop
async def test_a_logged_in_visitor_fetches_with_the_git_token_of_their_own_login(
    serve: ServeProcess, provider: OidcProvider
) -> None:
    """The launch of a private repository gets the visitor's own token from their login
    (tests/test_private_repos.py shows git using it); anonymous visitors get none."""
    hub = HubClient(serve.hub_api_url, serve.api_token)
    visitor = await with_git_tokens(hub, Visitor(name="alice"), {GIT_HOST: "access_token"})
    token = visitor.tokens.get(GIT_HOST, "")
    status, info = await provider.userinfo(token)
    assert (status, info.get("sub")) == (200, "alice"), (status, info)
    assert token not in repr(visitor)
    anonymous = await with_git_tokens(hub, Visitor(), {GIT_HOST: "access_token"})
    assert anonymous.tokens == {}


@module_loop
async def test_a_user_outside_the_allowed_groups_gets_a_plain_refusal(
    serve: ServeProcess, browser: Browser
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{serve.url}login")
    await sign_in_at_provider(page, "mallory")
    body = page.locator("body")
    await expect(body).to_contain_text("403", timeout=60_000)
    await expect(body).to_contain_text("not currently authorized")
    await expect(body).not_to_contain_text("Traceback")
    await page.screenshot(path=shot("oidc-refused.png"))
    await context.close()
    users = await HubClient(serve.hub_api_url, serve.api_token).request("GET", "users")
    assert "mallory" not in [user["name"] for user in users]


@module_loop
async def test_an_anonymous_build_request_is_refused_pointing_to_the_login(
    serve: ServeProcess, repo: Path
) -> None:
    stream = await build_events(serve.url, "git", git_spec(repo))
    assert stream.last["phase"] == "failed", stream.events
    assert stream.last["status_code"] == 403
    assert "Log in to launch" in stream.last["message"]
    assert f"{serve.url}login?next=" in stream.last["message"]


async def start_own_server(serve: ServeProcess, name: str) -> str:
    """Start ``name``'s default server through the hub API with valid launch options
    (the session environment of the tests); its launch token once it is ready."""
    hub = HubClient(serve.hub_api_url, serve.api_token)
    token = await hub.create_token(name, [f"access:servers!user={name}"], "test")
    launcher = SessionLauncher(hub_api_url=serve.hub_api_url, api_token=serve.api_token)
    content = serve.data_dir / "test-content"  # the data directory is always allowed
    content.mkdir(exist_ok=True)
    request = SessionRequest("env-test", session_env(), content, resolved("logins"))
    await hub.start_server(name, launcher.user_options(request, token))
    for _ in range(600):  # 120 s at most
        server = (await hub.get_user(name)).get("servers", {}).get("", {})
        if server.get("ready"):
            return token
        if not server:  # the start failed
            break
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name}'s server did not become ready:\n{serve.logs()['hub'][-3000:]}")


async def stop_own_server(serve: ServeProcess, name: str) -> None:
    hub = HubClient(serve.hub_api_url, serve.api_token)
    await hub.stop_server(name)
    for _ in range(300):  # 60 s at most (the user's named servers, if any, run on)
        if "" not in ((await hub.get_user(name)).get("servers") or {}):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name}'s server did not stop")


async def session_variable(serve: ServeProcess, name: str, token: str, variable: str) -> str:
    code = f"import os; print(os.environ.get({variable!r}, ''))"
    return (await run_code(f"{serve.url}user/{name}/", token, code)).strip()


@module_loop
async def test_the_session_has_the_login_token_and_the_refreshed_one_after_a_refresh(
    serve: ServeProcess, provider: OidcProvider
) -> None:
    # alice logged in above: the hub keeps her tokens (encrypted auth_state)
    token = await start_own_server(serve, "alice")
    first = await session_variable(serve, "alice", token, "KC_ACCESS_TOKEN")
    assert first, "no KC_ACCESS_TOKEN in the session"
    assert await session_variable(serve, "alice", token, "KC_REFRESH_TOKEN")
    status, info = await provider.userinfo(first)
    assert (status, info.get("sub")) == (200, "alice"), (status, info)
    await stop_own_server(serve, "alice")

    # the provider expires the token; the next start refreshes it first
    for _ in range(4 * TOKEN_TTL + 40):  # bounded: TTL plus slack, 0.5 s a try
        if (await provider.userinfo(first))[0] != 200:
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError("the provider never expired the access token")
    token = await start_own_server(serve, "alice")
    second = await session_variable(serve, "alice", token, "KC_ACCESS_TOKEN")
    assert second and second != first
    status, info = await provider.userinfo(second)
    assert (status, info.get("sub")) == (200, "alice"), (status, info)
    await stop_own_server(serve, "alice")


def test_the_crypt_key_is_kept_private_in_the_data_directory(serve: ServeProcess) -> None:
    key = serve.data_dir / "hub" / "crypt_key"
    assert key.stat().st_mode & 0o777 == 0o600
    config = (serve.data_dir / "hub" / "jupyterhub_config.py").read_text()
    assert key.read_text().strip() not in config
    assert CLIENT_SECRET not in config
    assert CLIENT_SECRET not in "\n".join(serve.logs().values())
