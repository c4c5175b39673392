"""Identity providers on loopback for the login tests.

:func:`oidc_provider` runs a real OpenID Connect provider: npm's
``oidc-provider`` (installed by ``scripts/setup --test``) started by node with
tests/oidc_provider.mjs.  Its login page accepts any password for the logins of
``accounts``; access tokens expire after ``access_token_ttl`` seconds.
:func:`hub_oidc_provider` runs one whose one client is a hub on ``ports``, and
:func:`oidc_serve` a ``binderbox serve`` on those ports logging in through it (the
OpenID Connect login tests and the options menu's); :func:`sign_in_at_provider` signs
in on the provider's own pages in a browser.

:class:`GitHubStandIn` is NOT GitHub: GitHub's OAuth endpoints and REST API
cannot be reached from here, so this tornado app serves, on loopback, the
responses GitHub gives (recorded from its documented API: ``/user``, the
organisation membership check answering 204 for a member and 404 otherwise)
to oauthenticator's ``GitHubOAuthenticator`` pointed at it (``github_url``,
``github_api``).  Its authorize page is a one-field form: the GitHub login
who signs in and approves (GitHub's own login and consent pages, reduced).
"""

from __future__ import annotations

import contextlib
import html
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from browser import shot
from playwright.async_api import Page, expect
from serve_helpers import ServeProcess, running_serve
from tornado.httpclient import AsyncHTTPClient
from tornado.web import Application, HTTPError, RequestHandler

from binderbox.hub.children import free_port
from binderbox.hub.logins import CLIENT_SECRET_ENV

ROOT = Path(__file__).resolve().parents[1]
OIDC_SCRIPT = Path(__file__).with_name("oidc_provider.mjs")
OIDC_INSTALLED = (ROOT / "node_modules" / "oidc-provider" / "package.json").exists()


@dataclass
class OidcProvider:
    """A running provider: its issuer URL and the process."""

    issuer: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    async def userinfo(self, access_token: str) -> tuple[int, dict[str, Any]]:
        """(status, body) of the provider's user info endpoint for ``access_token``."""
        response = await AsyncHTTPClient().fetch(
            f"{self.issuer}/me",
            headers={"Authorization": f"Bearer {access_token}"},
            raise_error=False,
            request_timeout=10,
        )
        body = json.loads(response.body) if response.body else {}
        return response.code, body


@contextlib.contextmanager
def oidc_provider(
    workdir: Path,
    clients: list[dict[str, Any]],
    accounts: dict[str, dict[str, Any]],
    access_token_ttl: int = 3600,
) -> Iterator[OidcProvider]:
    """Run tests/oidc_provider.mjs on a free loopback port until the block ends."""
    port = free_port()
    settings = {
        "port": port,
        "clients": clients,
        "accounts": accounts,
        "access_token_ttl": access_token_ttl,
    }
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "oidc-provider.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["node", str(OIDC_SCRIPT), json.dumps(settings)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(300):  # 30 s at most
            if "oidc-provider listening" in log.read_text(errors="replace"):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"oidc-provider exited:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        else:
            raise RuntimeError(f"oidc-provider did not start:\n{log.read_text()[-3000:]}")
        yield OidcProvider(f"http://127.0.0.1:{port}", proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def hub_oidc_provider(
    workdir: Path,
    ports: dict[str, int],
    client: tuple[str, str],
    accounts: dict[str, dict[str, Any]],
    access_token_ttl: int = 3600,
) -> Iterator[OidcProvider]:
    """:func:`oidc_provider` with one client, ``client`` (id, secret): the hub whose
    public port is ``ports["public"]`` (its OAuth callback)."""
    client_id, secret = client
    redirect = f"http://127.0.0.1:{ports['public']}/hub/oauth_callback"
    clients = [{"client_id": client_id, "client_secret": secret, "redirect_uris": [redirect]}]
    with oidc_provider(workdir, clients, accounts, access_token_ttl) as running:
        yield running


@contextlib.contextmanager
def oidc_serve(
    workdir: Path,
    ports: dict[str, int],
    provider: OidcProvider,
    client: tuple[str, str],
    mode: str,
    config: list[str],
) -> Iterator[ServeProcess]:
    """:func:`~serve_helpers.running_serve` on ``ports`` with ``c.Logins.mode = mode``
    through ``provider`` as OAuth client ``client`` (id, secret; the secret passed in
    the environment), scopes ``openid profile groups``, plus the lines of ``config``."""
    client_id, secret = client
    logins = [
        f"c.Logins.mode = {mode!r}",
        "c.Logins.authenticator = 'generic'",
        f"c.Logins.client_id = {client_id!r}",
        f"c.Logins.oidc_discovery_url = {provider.discovery_url!r}",
        "c.Logins.scope = ['openid', 'profile', 'groups']",
    ]
    extra = "\n".join([*logins, *config])
    env = {CLIENT_SECRET_ENV: secret}
    with running_serve(workdir, extra_config=extra, env=env, ports=ports) as served:
        yield served


async def sign_in_at_provider(page: Page, login: str) -> None:
    """oidc-provider's own pages: the login form, then the consent."""
    await expect(page.locator("input[name=login]")).to_be_visible(timeout=60_000)
    await page.fill("input[name=login]", login)
    await page.fill("input[name=password]", "any password")
    await page.screenshot(path=shot(f"oidc-provider-login-{login}.png"))
    await page.click("button[type=submit]")
    consent = page.locator("button:has-text('Continue')")
    await expect(consent).to_be_visible(timeout=30_000)
    await consent.click()


# -- the GitHub stand-in (recorded responses, not GitHub) -------------------------


@dataclass
class GitHubStandIn:
    """What the stand-in knows: users (login -> id) and the members of organisations
    (``org``) and of teams (``org:team``)."""

    users: dict[str, int]
    members: dict[str, set[str]]
    codes: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Application:
        kwargs = {"stand_in": self}
        return Application(
            [
                (r"/login/oauth/authorize", _Authorize, kwargs),
                (r"/login/oauth/access_token", _AccessToken, kwargs),
                (r"/api/user", _User, kwargs),
                (r"/api/orgs/([^/]+)/members/([^/]+)", _Membership, kwargs),
                (r"/api/orgs/([^/]+)/teams/([^/]+)/members/([^/]+)", _TeamMembership, kwargs),
            ]
        )


class _StandInHandler(RequestHandler):
    def initialize(self, stand_in: GitHubStandIn) -> None:
        self.stand_in = stand_in

    def login_of_token(self) -> str:
        header = self.request.headers.get("Authorization", "")
        token = header.split(" ", 1)[-1]
        if token not in self.stand_in.tokens:
            raise HTTPError(401)
        return self.stand_in.tokens[token]


AUTHORIZE_FORM = """<!doctype html><title>Sign in to GitHub (stand-in)</title>
<form method="post"><input name="login" placeholder="GitHub login">
<input type="hidden" name="redirect_uri" value="{redirect_uri}">
<input type="hidden" name="state" value="{state}">
<button type="submit">Authorize</button></form>"""


class _Authorize(_StandInHandler):
    """GitHub's sign-in and authorize pages, as one form."""

    def get(self) -> None:
        self.finish(
            AUTHORIZE_FORM.format(
                redirect_uri=html.escape(self.get_argument("redirect_uri")),
                state=html.escape(self.get_argument("state")),
            )
        )

    def post(self) -> None:
        login = self.get_argument("login")
        code = secrets.token_hex(8)
        self.stand_in.codes[code] = login
        query = urlencode({"code": code, "state": self.get_argument("state")})
        self.redirect(f"{self.get_argument('redirect_uri')}?{query}")


class _AccessToken(_StandInHandler):
    """``POST /login/oauth/access_token``: GitHub's token response (JSON when asked)."""

    def post(self) -> None:
        login = self.stand_in.codes.pop(self.get_argument("code"), None)
        if login is None:
            self.finish({"error": "bad_verification_code"})
            return
        token = f"gho_{secrets.token_hex(16)}"
        self.stand_in.tokens[token] = login
        self.finish({"access_token": token, "token_type": "bearer", "scope": "read:org"})


class _User(_StandInHandler):
    """``GET /user``: the recorded shape of GitHub's answer."""

    def get(self) -> None:
        login = self.login_of_token()
        self.finish(
            {
                "login": login,
                "id": self.stand_in.users[login],
                "node_id": "MDQ6VXNlcjE=",
                "type": "User",
                "site_admin": False,
                "name": login.title(),
                "email": None,
            }
        )


class _Membership(_StandInHandler):
    """``GET /orgs/<org>/members/<user>``: 204 for a member, 404 with GitHub's body else."""

    def get(self, org: str, user: str) -> None:
        self.answer(org, user)

    def answer(self, group: str, user: str) -> None:
        self.login_of_token()
        if user in self.stand_in.members.get(group, set()):
            self.set_status(204)
            self.finish()
            return
        self.set_status(404)
        self.finish(
            {
                "message": "User does not exist or is not a member of the organization",
                "documentation_url": "https://docs.github.com/rest/orgs/members",
            }
        )


class _TeamMembership(_Membership):
    """``GET /orgs/<org>/teams/<team>/members/<user>`` (the legacy team check)."""

    def get(self, org: str, team: str, user: str) -> None:  # type: ignore[override]
        self.answer(f"{org}:{team}", user)
