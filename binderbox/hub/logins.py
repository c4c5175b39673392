"""Who may log in to the service, and how: the operator's choice of login.

:class:`Logins` (``c.Logins.*``) holds the login mode and the authenticator's
settings; :meth:`Logins.hub_config` turns them into the lines of the generated
``jupyterhub_config.py`` (:mod:`binderbox.hub.config`).  Everything goes
through the field's own authenticators:

``mode``
    ``none`` (the default): nobody logs in, every launch is anonymous (a
    temporary hub user, ``NullAuthenticator``).  ``optional``: anonymous
    launches as before, and a visitor who logs in launches as their hub user.
    ``required``: only logged-in visitors launch.
``authenticator``
    ``github`` (oauthenticator's ``GitHubOAuthenticator``: organisations or
    ``org:team`` in ``allowed_organizations``, ``allowed_users``), ``generic``
    (``GenericOAuthenticator``: any OAuth2 / OpenID Connect provider, its URLs
    read from ``oidc_discovery_url`` when given; ``allowed_groups`` and
    ``admin_groups`` from the ``groups_claim`` of the user info, which also
    become the user's hub groups), ``native`` (``jupyterhub-nativeauthenticator``:
    local accounts with sign-up, approved by an admin unless ``open_signup``).

Secrets never reach the config file: the OAuth client secret is read by the
hub from :data:`CLIENT_SECRET_ENV` (set it in the environment of ``binderbox
serve``); the key that encrypts the logins' tokens in the hub database
(``auth_state``) is generated once, kept in ``<data>/hub/crypt_key`` (mode
0600) and passed to the hub as ``JUPYTERHUB_CRYPT_KEY``.  The tokens reach the
sessions under the names of ``token_env`` (see
:class:`~binderbox.sessions.spawners.mixin.BinderSpawnerMixin`), refreshed
before each start (oauthenticator's ``refresh_user``, ``refresh_pre_spawn``).
"""

from __future__ import annotations

import json
import os

from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Bool, CaselessStrEnum, Dict, Int, List, Unicode
from traitlets.config import LoggingConfigurable

from ..errors import BinderboxError
from .config import SERVICE_NAME

#: environment variable the hub reads the OAuth client secret from
CLIENT_SECRET_ENV = "BINDERBOX_OAUTH_CLIENT_SECRET"
#: JupyterHub's environment variable for the auth_state encryption key
CRYPT_KEY_ENV = "JUPYTERHUB_CRYPT_KEY"

#: authenticator name -> (class path, config section)
AUTHENTICATORS = {
    "github": ("oauthenticator.github.GitHubOAuthenticator", "GitHubOAuthenticator"),
    "generic": ("oauthenticator.generic.GenericOAuthenticator", "GenericOAuthenticator"),
    # nativeauthenticator's own, fitted to JupyterHub 6 (see binderbox/hub/native.py)
    "native": ("binderbox.hub.native.NativeAuthenticator", "NativeAuthenticator"),
}


def refresh_user_hook(_authenticator: object, _user: object, auth_state: object) -> bool | None:
    """oauthenticator's ``refresh_user_hook``: a user without auth_state is one of
    binderbox's temporary users (made through the API, never logged in): nothing to
    refresh, their auth is what it is (True).  Everyone else: the usual refresh (None).
    """
    return True if not auth_state else None


class LoginError(BinderboxError):
    """The login settings cannot work (a missing secret, an unreachable provider)."""

    reason = "login"


class Logins(LoggingConfigurable):
    """The login mode and its authenticator.  See the module docstring."""

    mode = CaselessStrEnum(
        ["none", "optional", "required"],
        "none",
        help="""Who launches: 'none' (anonymous only, no login), 'optional' (anonymous
        launches, and logged-in visitors launch as their hub user), 'required' (only
        logged-in visitors; anonymous launches are refused, pointing to the login).""",
    ).tag(config=True)
    authenticator = CaselessStrEnum(
        list(AUTHENTICATORS),
        "generic",
        help="""How visitors log in when mode is not 'none': 'github' (GitHub OAuth),
        'generic' (OAuth2 / OpenID Connect), 'native' (local accounts with sign-up).""",
    ).tag(config=True)
    client_id = Unicode(
        "", help="The OAuth client id registered with the provider (github, generic)."
    ).tag(config=True)
    oauth_callback_url = Unicode(
        "",
        help="""The hub's OAuth callback as registered with the provider
        (``https://binder.example.org/hub/oauth_callback``).  Empty: derived from each
        login request's host.""",
    ).tag(config=True)
    allowed_users = List(
        Unicode(), help="User names allowed to log in (besides the allowed groups/organisations)."
    ).tag(config=True)
    admin_users = List(Unicode(), help="User names that are hub admins.").tag(config=True)
    allow_all = Bool(
        False,
        help="""Let everyone the provider authenticates log in (no allow-list).  Native
        accounts are always allowed once approved.""",
    ).tag(config=True)
    allowed_organizations = List(
        Unicode(),
        help="GitHub organisations (``org``) or teams (``org:team``) whose members may log in.",
    ).tag(config=True)
    github_url = Unicode(
        "", help="GitHub's web URL (GitHub Enterprise; empty: https://github.com)."
    ).tag(config=True)
    github_api = Unicode(
        "", help="GitHub's REST API URL (empty: derived from github_url by oauthenticator)."
    ).tag(config=True)
    oidc_discovery_url = Unicode(
        "",
        help="""The provider's ``.well-known/openid-configuration`` URL (Keycloak:
        ``https://kc.example.org/realms/R/.well-known/openid-configuration``); the
        authorize, token and user info URLs are read from it when the hub config is
        written.  Empty: give authorize_url, token_url and userdata_url.""",
    ).tag(config=True)
    authorize_url = Unicode("", help="The provider's authorization endpoint (generic).").tag(
        config=True
    )
    token_url = Unicode("", help="The provider's token endpoint (generic).").tag(config=True)
    userdata_url = Unicode("", help="The provider's user info endpoint (generic).").tag(config=True)
    scope = List(
        Unicode(),
        ["openid", "profile", "email"],
        help="OAuth scopes asked of the provider (generic; add the one that carries groups).",
    ).tag(config=True)
    username_claim = Unicode(
        "preferred_username", help="The user info field that is the hub user name (generic)."
    ).tag(config=True)
    groups_claim = Unicode(
        "groups",
        help="""The user info field listing the user's groups (generic): the allowed_groups
        and admin_groups are checked against it, and it becomes the user's hub groups.""",
    ).tag(config=True)
    allowed_groups = List(
        Unicode(), help="Groups (groups_claim) whose members may log in (generic)."
    ).tag(config=True)
    admin_groups = List(Unicode(), help="Groups (groups_claim) whose members are admins.").tag(
        config=True
    )
    open_signup = Bool(
        False,
        help="Native accounts: a sign-up may log in at once (else an admin approves it first).",
    ).tag(config=True)
    auto_login = Bool(
        True,
        help="""OAuth logins go straight to the provider (no hub page with a "Sign in
        with ..." button in between).""",
    ).tag(config=True)
    token_env = Dict(
        Unicode(),
        help="""Tokens of the login passed into each session of the user:
        {auth_state key: variable name}, e.g. {"access_token": "KC_ACCESS_TOKEN",
        "refresh_token": "KC_REFRESH_TOKEN"}.  Refreshed before each start.""",
    ).tag(config=True)
    git_tokens = Dict(
        Unicode(),
        help="""Which token of a login fetches private repositories from which git host:
        {host[:port]: auth_state key}, e.g. {"github.com": "access_token"} (the GitHub
        OAuth app then needs the 'repo' scope in Logins.scope).  Each visitor's own token,
        never one of the service; binderbox's service may then read users' auth_state.""",
    ).tag(config=True)
    auth_refresh_age = Int(
        300,
        help="Seconds after which the hub checks a login's tokens again (and refreshes them).",
    ).tag(config=True)
    discovery_timeout = Int(
        20, help="Seconds to wait for the provider's openid-configuration."
    ).tag(config=True)

    @property
    def enabled(self) -> bool:
        """Whether visitors can log in at all."""
        return str(self.mode) != "none"

    @property
    def oauth(self) -> bool:
        """Whether logins go through an OAuth provider (tokens to keep and pass on)."""
        return self.enabled and self.authenticator != "native"

    def check(self) -> None:
        """Refuse settings that cannot work, before anything starts."""
        if not self.oauth:
            return
        if not self.client_id:
            raise LoginError(
                f"Logins.authenticator = {self.authenticator!r} needs Logins.client_id.",
                hint="Register binderbox's hub as an OAuth client with the provider.",
            )
        if not os.environ.get(CLIENT_SECRET_ENV):
            raise LoginError(
                f"Logins.authenticator = {self.authenticator!r} needs the client secret "
                f"in the environment variable {CLIENT_SECRET_ENV}.",
                hint="It is never written to a config file.",
            )
        if self.authenticator == "generic" and not self.oidc_discovery_url:
            urls = ("authorize_url", "token_url", "userdata_url")
            missing = [name for name in urls if not getattr(self, name)]
            if missing:
                raise LoginError(
                    f"Generic OAuth needs Logins.oidc_discovery_url or {', '.join(missing)}."
                )

    async def discover(self) -> None:
        """Read the endpoints from ``oidc_discovery_url`` (when set) into the URL traits
        left empty.  :class:`LoginError` when the provider does not answer properly."""
        if not (self.oauth and self.authenticator == "generic" and self.oidc_discovery_url):
            return
        try:
            response = await AsyncHTTPClient().fetch(
                self.oidc_discovery_url, request_timeout=self.discovery_timeout
            )
            found = json.loads(response.body)
        except (HTTPClientError, OSError, ValueError) as err:
            raise LoginError(
                f"The OpenID provider's configuration {self.oidc_discovery_url} could not be read.",
                log_message=f"{type(err).__name__}: {err}",
            ) from None
        keys = {
            "authorize_url": "authorization_endpoint",
            "token_url": "token_endpoint",
            "userdata_url": "userinfo_endpoint",
        }
        for trait, key in keys.items():
            if not getattr(self, trait):
                value = found.get(key) if isinstance(found, dict) else None
                if not isinstance(value, str) or not value:
                    raise LoginError(
                        f"The OpenID provider's configuration has no {key}.",
                        log_message=f"{self.oidc_discovery_url}: {key} missing",
                    )
                setattr(self, trait, value)

    def hub_config(self) -> list[str]:
        """The lines of ``jupyterhub_config.py`` for these settings (no secrets)."""
        if not self.enabled:
            return ["c.JupyterHub.authenticator_class = 'jupyterhub.auth.NullAuthenticator'"]
        path, section = AUTHENTICATORS[self.authenticator]
        lines = [f"c.JupyterHub.authenticator_class = {path!r}"]
        traits: dict[str, object] = {
            "admin_users": sorted(self.admin_users),
            "allowed_users": sorted(self.allowed_users),
        }
        if self.authenticator == "native":
            traits.update(open_signup=self.open_signup, allow_all=True)
            lines.append(
                "import nativeauthenticator, pathlib\n"
                "c.JupyterHub.template_paths = "
                "[str(pathlib.Path(nativeauthenticator.__file__).parent / 'templates')]"
            )
        else:
            traits.update(self._oauth_traits())
            lines += [
                f"c.{section}.client_secret = os.environ[{CLIENT_SECRET_ENV!r}]",
                "c.Authenticator.enable_auth_state = True",
                "c.Authenticator.refresh_pre_spawn = True",
                "from binderbox.hub.logins import refresh_user_hook",
                f"c.{section}.refresh_user_hook = refresh_user_hook",
            ]
            if self.git_tokens:  # binderbox reads the visitor's git tokens (private repos)
                lines.append(
                    "for role in c.JupyterHub.load_roles:\n"
                    f"    if role['name'] == {SERVICE_NAME!r}:\n"
                    "        role['scopes'].append('admin:auth_state')"
                )
        for name, value in sorted(traits.items()):
            lines.append(f"c.{section}.{name} = json.loads({json.dumps(value)!r})")
        return lines

    def _oauth_traits(self) -> dict[str, object]:
        traits: dict[str, object] = {
            "client_id": self.client_id,
            "allow_all": self.allow_all,
            "auth_refresh_age": self.auth_refresh_age,
            "auto_login": self.auto_login,
        }
        if self.oauth_callback_url:
            traits["oauth_callback_url"] = self.oauth_callback_url
        if self.authenticator == "github":
            traits["allowed_organizations"] = sorted(self.allowed_organizations)
            traits["scope"] = ["read:org"] if self.allowed_organizations else []
            if self.github_url:
                traits["github_url"] = self.github_url.rstrip("/")
            if self.github_api:
                traits["github_api"] = self.github_api.rstrip("/")
            return traits
        traits.update(
            authorize_url=self.authorize_url,
            token_url=self.token_url,
            userdata_url=self.userdata_url,
            scope=list(self.scope),
            username_claim=self.username_claim,
            auth_state_groups_key=f"oauth_user.{self.groups_claim}",
            allowed_groups=sorted(self.allowed_groups),
            admin_groups=sorted(self.admin_groups),
            manage_groups=True,
        )
        return traits
