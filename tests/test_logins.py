"""Login settings: what reaches the hub's config, what never does, and the anonymous default.

The browser tests (tests/test_logins_oidc.py, tests/test_logins_github_native.py)
log in for real; these check the rendered config by loading it as JupyterHub
does (a traitlets config file), the refusals of settings that cannot work, the
kept encryption key, and that a site without logins stays as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient
from traitlets.config import Config
from web_helpers import ScriptedPipeline, launch_events, serve

from binderbox.hub.children import free_port
from binderbox.hub.config import HubParams, render_config
from binderbox.hub.logins import CLIENT_SECRET_ENV, LoginError, Logins
from binderbox.hub.process import ManagedHub
from binderbox.sessions.identity import ANONYMOUS
from binderbox.web import WebApp, make_app


def hub_config(tmp_path: Path, logins: Logins, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The generated jupyterhub_config.py for ``logins``, loaded as the hub loads it."""
    params = HubParams(
        data_dir=tmp_path,
        public_ip="127.0.0.1",
        public_port=8000,
        hub_port=8081,
        proxy_api_port=8001,
        login_config=tuple(logins.hub_config()) if logins.enabled else (),
    )
    text = render_config(params)
    tokens = ("CONFIGPROXY_AUTH_TOKEN", "BINDERBOX_HUB_API_TOKEN", "BINDERBOX_CULLER_API_TOKEN")
    for name in (*tokens, "BINDERBOX_NAMED_CULLER_API_TOKEN"):
        monkeypatch.setenv(name, "token")
    config = Config()
    exec(compile(text, "jupyterhub_config.py", "exec"), {"get_config": lambda: config})
    config["_text"] = text
    return config


def test_without_logins_the_hub_has_the_null_authenticator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = hub_config(tmp_path, Logins(), monkeypatch)
    assert config.JupyterHub.authenticator_class == "jupyterhub.auth.NullAuthenticator"
    assert "oauth_client_id" not in config.JupyterHub.services[0]
    assert "enable_auth_state" not in config["_text"]


def test_generic_oauth_config_has_the_allow_lists_and_reads_the_secret_from_the_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLIENT_SECRET_ENV, "the-client-secret")
    logins = Logins(
        mode="optional",
        authenticator="generic",
        client_id="binderbox",
        authorize_url="https://kc.example.org/auth",
        token_url="https://kc.example.org/token",
        userdata_url="https://kc.example.org/userinfo",
        allowed_groups=["scientists"],
        admin_groups=["admins"],
    )
    logins.check()
    config = hub_config(tmp_path, logins, monkeypatch)
    generic = config.GenericOAuthenticator
    assert config.JupyterHub.authenticator_class.endswith("GenericOAuthenticator")
    assert generic.client_secret == "the-client-secret"  # from the environment...
    assert "the-client-secret" not in config["_text"]  # ...never in the file
    assert generic.allowed_groups == ["scientists"]
    assert generic.admin_groups == ["admins"]
    assert generic.auth_state_groups_key == "oauth_user.groups"
    assert generic.manage_groups is True
    assert config.Authenticator.enable_auth_state is True
    assert config.Authenticator.refresh_pre_spawn is True
    service = config.JupyterHub.services[0]
    assert service["oauth_client_id"] == "service-binderbox"
    assert service["oauth_redirect_uri"] == "/oauth_callback"
    assert config.JupyterHub.extra_user_scopes == {"access:services!service=binderbox"}


def test_github_config_has_the_organisations_and_the_api_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLIENT_SECRET_ENV, "s")
    logins = Logins(
        mode="required",
        authenticator="github",
        client_id="app",
        allowed_organizations=["lsst-sqre", "rubin:square"],
        allowed_users=["vera"],
        github_url="https://ghe.example.org/",
    )
    config = hub_config(tmp_path, logins, monkeypatch).GitHubOAuthenticator
    assert config.allowed_organizations == ["lsst-sqre", "rubin:square"]
    assert config.allowed_users == ["vera"]
    assert config.scope == ["read:org"]  # private memberships are checked too
    assert config.github_url == "https://ghe.example.org"


def test_oauth_without_its_secret_or_client_id_is_refused_plainly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(CLIENT_SECRET_ENV, raising=False)
    with pytest.raises(LoginError, match=CLIENT_SECRET_ENV):
        Logins(mode="optional", authenticator="github", client_id="app").check()
    with pytest.raises(LoginError, match="client_id"):
        Logins(mode="optional", authenticator="github").check()
    monkeypatch.setenv(CLIENT_SECRET_ENV, "s")
    with pytest.raises(LoginError, match="oidc_discovery_url or authorize_url"):
        Logins(mode="optional", authenticator="generic", client_id="app").check()
    Logins(mode="optional", authenticator="native").check()  # no secret to give


async def test_an_unreachable_openid_configuration_is_refused_plainly() -> None:
    logins = Logins(
        mode="required",
        authenticator="generic",
        oidc_discovery_url=f"http://127.0.0.1:{free_port()}/.well-known/openid-configuration",
        discovery_timeout=5,
    )
    with pytest.raises(LoginError) as caught:
        await logins.discover()
    assert "could not be read" in str(caught.value)


def test_the_encryption_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    key = ManagedHub(data_dir=str(tmp_path)).crypt_key
    path = tmp_path / "hub" / "crypt_key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert ManagedHub(data_dir=str(tmp_path)).crypt_key == key
    assert len(bytes.fromhex(key)) == 32  # what JupyterHub's CryptKeeper takes


def web(pipeline: ScriptedPipeline, **settings: Any) -> Any:
    return make_app(pipeline, config=WebApp(**settings))


async def test_without_logins_pages_offer_no_login_and_no_bare_hub_link() -> None:
    async with serve(web(ScriptedPipeline())) as base:
        response = await AsyncHTTPClient().fetch(f"{base}/", raise_error=False)
        login = await AsyncHTTPClient().fetch(f"{base}/login", raise_error=False)
    page = response.body.decode()
    assert 'href="/hub/"' not in page and ">Hub<" not in page
    assert "Log in" not in page
    assert login.code == 404


async def test_without_logins_every_launch_is_anonymous() -> None:
    pipeline = ScriptedPipeline(events=launch_events())
    async with serve(web(pipeline, ready_linger_seconds=0)) as base:
        await AsyncHTTPClient().fetch(
            f"{base}/build/gh/o/r/main", headers={"Accept": "text/event-stream"}
        )
    assert [request.visitor for request in pipeline.requests] == [ANONYMOUS]
