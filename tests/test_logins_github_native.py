"""GitHub OAuth with an organisation allow-list, and local accounts, in a real browser.

GitHub (STAND-IN): GitHub's OAuth endpoints and REST API cannot be reached from
here, so oauthenticator's ``GitHubOAuthenticator`` is pointed (``github_url``,
``github_api``) at :class:`login_helpers.GitHubStandIn`, which serves GitHub's
recorded answers on loopback.  A member of the allowed organisation, or of the
allowed ``org:team``, gets in; someone else gets the hub's plain 403 page.

Local accounts: ``jupyterhub-nativeauthenticator``'s sign-up page, then its
login; binderbox's pages then know the visitor (optional login: anonymous
launches stay possible).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from browser import served_browser_marks, shot
from login_helpers import GitHubStandIn
from playwright.async_api import Browser, Page, expect
from serve_helpers import ServeProcess, running_serve
from tornado.httpserver import HTTPServer

from binderbox.hub.logins import CLIENT_SECRET_ENV
from binderbox.sessions.hubclient import HubClient

pytestmark = served_browser_marks(600)
module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def github() -> GitHubStandIn:
    return GitHubStandIn(
        users={"vera": 1001, "sam": 1002, "eve": 1003},
        members={"lsst-sqre": {"vera"}, "rubin:square": {"sam"}, "other-org": {"eve"}},
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def github_served(github: GitHubStandIn) -> AsyncIterator[GitHubStandIn]:
    server = HTTPServer(github.app())
    server.listen(github.port, address="127.0.0.1")
    try:
        yield github
    finally:
        server.stop()


@pytest.fixture(scope="module")
def github_serve(
    tmp_path_factory: pytest.TempPathFactory, github_served: GitHubStandIn
) -> Iterator[ServeProcess]:
    config = "\n".join(
        [
            "c.Logins.mode = 'optional'",
            "c.Logins.authenticator = 'github'",
            "c.Logins.client_id = 'binderbox-test-app'",
            f"c.Logins.github_url = {github_served.url!r}",
            f"c.Logins.github_api = {github_served.url + '/api'!r}",
            "c.Logins.allowed_organizations = ['lsst-sqre', 'rubin:square']",
        ]
    )
    workdir = tmp_path_factory.mktemp("serve-github")
    env = {CLIENT_SECRET_ENV: "github-stand-in-secret"}
    with running_serve(workdir, extra_config=config, env=env) as served:
        yield served


async def github_login(serve: ServeProcess, browser: Browser, login: str) -> Page:
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{serve.url}login")
    await page.fill("input[name=login]", login)
    await page.click("button[type=submit]")
    return page


@module_loop
@pytest.mark.parametrize("login", ["vera", "sam"])
async def test_github_stand_in_member_of_an_allowed_org_or_team_gets_in(
    github_serve: ServeProcess, browser: Browser, login: str
) -> None:
    page = await github_login(github_serve, browser, login)
    await page.wait_for_url(github_serve.url, timeout=60_000)
    header = page.locator("header.topbar nav")
    await expect(header).to_contain_text(login)
    await expect(header.locator("a", has_text="Log out")).to_be_visible()
    await expect(header.locator("a", has_text="Admin")).to_have_count(0)
    await page.screenshot(path=shot(f"github-stand-in-{login}.png"))
    await page.context.close()


@module_loop
async def test_github_stand_in_non_member_is_refused_with_a_plain_page(
    github_serve: ServeProcess, browser: Browser
) -> None:
    page = await github_login(github_serve, browser, "eve")
    body = page.locator("body")
    await expect(body).to_contain_text("403", timeout=60_000)
    await expect(body).to_contain_text("not currently authorized")
    await expect(body).not_to_contain_text("Traceback")
    await page.screenshot(path=shot("github-stand-in-refused.png"))
    await page.context.close()
    users = await HubClient(github_serve.hub_api_url, github_serve.api_token).request(
        "GET", "users"
    )
    assert "eve" not in [user["name"] for user in users]


@module_loop
async def test_optional_login_shows_log_in_to_anonymous_visitors(
    github_serve: ServeProcess, browser: Browser
) -> None:
    page = await (await browser.new_context()).new_page()
    await page.goto(github_serve.url)
    header = page.locator("header.topbar nav")
    await expect(header.locator("a", has_text="Log in")).to_be_visible()
    await expect(header.locator("a", has_text="Hub")).to_have_count(0)
    await page.context.close()


# -- local accounts -------------------------------------------------------------------


@pytest.fixture(scope="module")
def native_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    config = "\n".join(
        [
            "c.Logins.mode = 'optional'",
            "c.Logins.authenticator = 'native'",
            "c.Logins.open_signup = True",
        ]
    )
    with running_serve(tmp_path_factory.mktemp("serve-native"), extra_config=config) as served:
        yield served


@module_loop
async def test_native_accounts_sign_up_then_log_in(
    native_serve: ServeProcess, browser: Browser
) -> None:
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{native_serve.url}hub/signup")
    await page.fill("#username_input", "nadia")
    await page.fill("#password_input", "a long enough passphrase 42")
    await page.fill("#password_confirmation_input", "a long enough passphrase 42")
    await page.click("#signup_submit")
    await expect(page.locator("body")).to_contain_text("signup was successful", timeout=30_000)
    await page.screenshot(path=shot("native-signed-up.png"))

    await page.goto(f"{native_serve.url}login")  # binderbox's login: the hub's form
    await page.wait_for_url(re.compile(r"/hub/login"), timeout=30_000)
    await page.fill("#username_input", "nadia")
    await page.fill("#password_input", "a long enough passphrase 42")
    await page.click("#login_submit")
    await page.wait_for_url(native_serve.url, timeout=60_000)
    await expect(page.locator("header.topbar nav")).to_contain_text("nadia")
    await page.screenshot(path=shot("native-logged-in.png"))
    await page.context.close()


@module_loop
async def test_native_accounts_wrong_password_is_refused(
    native_serve: ServeProcess, browser: Browser
) -> None:
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{native_serve.url}hub/login")
    await page.fill("#username_input", "nadia")
    await page.fill("#password_input", "not the passphrase")
    await page.click("#login_submit")
    await expect(page.locator("body")).to_contain_text("Invalid", timeout=30_000)
    await page.goto(native_serve.url)
    await expect(page.locator("header.topbar nav a", has_text="Log in")).to_be_visible()
    await page.context.close()


@module_loop
async def test_github_stand_in_log_out_forgets_the_login_here_and_in_the_hub(
    github_serve: ServeProcess, browser: Browser
) -> None:
    page = await github_login(github_serve, browser, "vera")
    await page.wait_for_url(github_serve.url, timeout=60_000)
    await page.locator("header.topbar nav a", has_text="Log out").click()
    await page.wait_for_url(re.compile(r"/hub/"), timeout=30_000)
    await page.goto(github_serve.url)
    header = page.locator("header.topbar nav")
    await expect(header.locator("a", has_text="Log in")).to_be_visible()
    await expect(header).not_to_contain_text("vera")
    await page.context.close()
