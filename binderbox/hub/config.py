"""The jupyterhub_config.py binderbox writes for a data directory.

:func:`render_config` turns a :class:`HubParams` into the text of a
JupyterHub config file.  The choices it encodes (and why):

* ``NullAuthenticator`` by default: nobody logs in to the hub.  binderbox
  creates the (temporary) users itself through the REST API with its service
  token, as BinderHub does in anonymous mode.  With logins
  (:mod:`binderbox.hub.logins`) the operator's authenticator instead, and
  binderbox's service is a hub OAuth client (``service-binderbox``, its
  callback ``<base_url>oauth_callback``, no confirmation page) that every
  user may use (``extra_user_scopes``), as BinderHub's is.
* ``hub_routespec = <base_url>hub/``: the hub only owns ``/hub/`` on the
  proxy, so binderbox's web app can own ``/`` (a route without the hub's
  ``jupyterhub`` data marker, which the hub's route check leaves alone).
* ``ConfigurableHTTPProxy.should_start = False``: binderbox starts the Node
  proxy itself (``hub/process.py``) so that the proxy and the sessions
  survive a restart of the hub; ``cleanup_servers = False`` keeps the
  sessions when the hub stops, and the hub re-adds their routes on start.
* the database (SQLite) and the cookie secret live under the data directory;
  secrets (proxy token, service token, a database server's URL with its
  password: :mod:`.database`) travel through environment variables only,
  never through the config file.
* ``slow_spawn_timeout = 0``: ``POST .../server`` answers 202 at once and
  the launcher relays the spawn progress stream as ``launching`` events.
* ``allow_named_servers`` with ``named_server_limit_per_user``: a logged-in
  user runs one named server per repository and ref
  (:mod:`binderbox.sessions.identity`), at most that many at once.
* the idle culler (:mod:`binderbox.hub.culler`, jupyterhub-idle-culler's
  ``cull_idle`` in two passes) removes idle temporary users with their servers,
  and stops idle named servers of logged-in users without ever deleting a user:
  two services, ``idle-culler`` whose scopes are filtered to the temporary users'
  group (it sees no one else), and ``idle-culler-named`` without
  ``admin:users``.  The culler is an external service of the hub (tokens and
  roles here) that ``ManagedHub`` runs next to the hub, not a hub-managed one:
  a hub that dies (or fails to bind its port) leaves its managed services
  orphaned, while binderbox's children die with it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..sessions.identity import TEMPORARY_GROUP
from .database import DB_URL_ENV

#: environment variable carrying binderbox's hub API token (hub and web app)
SERVICE_TOKEN_ENV = "BINDERBOX_HUB_API_TOKEN"
#: environment variable carrying the proxy's REST API token (CHP and hub)
PROXY_TOKEN_ENV = "CONFIGPROXY_AUTH_TOKEN"
#: environment variables carrying the idle culler's hub API tokens (its two passes)
CULLER_TOKEN_ENV = "BINDERBOX_CULLER_API_TOKEN"
NAMED_CULLER_TOKEN_ENV = "BINDERBOX_NAMED_CULLER_API_TOKEN"
#: the name of binderbox's service in the hub
SERVICE_NAME = "binderbox"
#: binderbox's OAuth client id in the hub (when visitors log in)
OAUTH_CLIENT_ID = f"service-{SERVICE_NAME}"
#: what binderbox's service may do: create/delete users, start/stop their
#: servers, put temporary users in their group, issue tokens for them (the
#: launch token), read the hub's state, and make the hub add its routes to a
#: proxy that was started again
SERVICE_SCOPES = (
    "admin:users",
    "admin:servers",
    "admin:groups",
    "tokens",
    "list:users",
    "read:users",
    "read:servers",
    "read:hub",
    "access:servers",
    "proxy",
)
#: what the idle culler's pass over logged-in users' named servers needs: it
#: stops servers, it cannot delete users
NAMED_CULLER_SCOPES = (
    "list:users",
    "read:users:activity",
    "read:servers",
    "delete:servers",
)
#: what the pass over temporary users needs (plus deleting them: ``cull_users``),
#: each scope filtered to the temporary users' group
CULLER_SCOPES = tuple(
    f"{scope}!group={TEMPORARY_GROUP}" for scope in (*NAMED_CULLER_SCOPES, "admin:users")
)


#: the spawner class of each session backend (``ManagedHub.backend``)
SPAWNERS = {
    "local": "binderbox.sessions.spawners.local.SandboxSpawner",
    "kubernetes": "binderbox.sessions.spawners.kube.BinderKubeSpawner",
}


def normalise_base_url(value: str) -> str:
    """``value`` as a base URL: one leading and one trailing ``/`` (``binder`` ->
    ``/binder/``, ``''`` -> ``/``).  The one place the service's base URL is
    normalised (``WebApp.base_url``, ``ManagedHub.base_url``)."""
    inner = value.strip("/")
    return f"/{inner}/" if inner else "/"


@dataclass(frozen=True)
class HubParams:
    """Everything the generated config depends on (no secrets); ``base_url`` is
    normalised (:func:`normalise_base_url`)."""

    data_dir: Path
    public_ip: str
    public_port: int
    hub_port: int
    proxy_api_port: int
    hub_ip: str = "127.0.0.1"
    base_url: str = "/"
    #: the service's public URL when it is not the proxy's (HTTPS): JupyterHub.public_url
    external_url: str = ""
    cull_timeout: int = 600
    cull_max_age: int = 0
    cull_every: int = 0
    #: logged-in users' named servers: at most this many each; culled after
    #: these idle seconds / this age (0: never)
    named_server_limit: int = 5
    named_cull_timeout: int = 0
    named_cull_max_age: int = 0
    python: str = sys.executable
    spawner_config: dict[str, object] = field(default_factory=dict)
    #: {class name: {trait: value}} of the sandbox classes the spawner uses
    sandbox_config: dict[str, dict[str, object]] = field(default_factory=dict)
    log_level: str = "INFO"
    extra_config: str = ""
    #: where sessions run: ``local`` (bubblewrap sandboxes on this machine) or
    #: ``kubernetes`` (pods, through KubeSpawner); see :data:`SPAWNERS`
    backend: str = "local"
    #: the authenticator's lines (:meth:`binderbox.hub.logins.Logins.hub_config`);
    #: empty: ``NullAuthenticator``
    login_config: tuple[str, ...] = ()
    #: the hub's database is a server whose URL (a secret) is in ``DB_URL_ENV``;
    #: False: SQLite in :attr:`hub_dir`
    db_from_env: bool = False

    @property
    def hub_dir(self) -> Path:
        """Where the hub keeps its database, cookie secret and config."""
        return self.data_dir / "hub"


def culler_command(params: HubParams, api_url: str) -> list[str]:
    """The idle culler's command line (its tokens go in the environment variables of
    :mod:`binderbox.hub.culler`)."""
    return [
        params.python,
        "-m",
        "binderbox.hub.culler",
        f"--url={api_url}",
        f"--every={params.cull_every}",
        f"--temporary-timeout={params.cull_timeout}",
        f"--temporary-max-age={params.cull_max_age}",
        f"--named-timeout={params.named_cull_timeout}",
        f"--named-max-age={params.named_cull_max_age}",
    ]


def render_config(params: HubParams) -> str:
    """The text of ``jupyterhub_config.py`` for ``params`` (see module docstring)."""
    hub_dir = params.hub_dir
    base = params.base_url
    binderbox: dict[str, object] = {"name": SERVICE_NAME, "display": False}
    if params.login_config:
        binderbox.update(
            oauth_client_id=OAUTH_CLIENT_ID,
            oauth_redirect_uri=f"{base}oauth_callback",
            oauth_no_confirm=True,
        )
    sqlite = "sqlite:///" + str(hub_dir / "jupyterhub.sqlite")
    db_url = f"os.environ[{DB_URL_ENV!r}]" if params.db_from_env else repr(sqlite)
    services = [
        binderbox,
        {"name": "idle-culler", "display": False},
        {"name": "idle-culler-named", "display": False},
    ]
    roles = [
        {"name": SERVICE_NAME, "scopes": list(SERVICE_SCOPES), "services": [SERVICE_NAME]},
        {"name": "idle-culler", "scopes": list(CULLER_SCOPES), "services": ["idle-culler"]},
        {
            "name": "idle-culler-named",
            "scopes": list(NAMED_CULLER_SCOPES),
            "services": ["idle-culler-named"],
        },
    ]
    lines = [
        "# Generated by binderbox (binderbox/hub/config.py): edits are overwritten.",
        "import os",
        "c = get_config()  # noqa: F821",
        f"c.JupyterHub.base_url = {base!r}",
        f"c.JupyterHub.ip = {params.public_ip!r}",
        f"c.JupyterHub.port = {params.public_port!r}",
        f"c.JupyterHub.hub_ip = {params.hub_ip!r}",
        f"c.JupyterHub.hub_port = {params.hub_port!r}",
        f"c.JupyterHub.hub_routespec = {base + 'hub/'!r}",
        f"c.JupyterHub.public_url = {params.external_url!r}",
        "c.JupyterHub.cleanup_servers = False",
        "c.JupyterHub.cleanup_proxy = False",
        "# answer POST .../server at once (202) so launches relay the spawn progress",
        "c.JupyterHub.tornado_settings = {'slow_spawn_timeout': 0}",
        "c.JupyterHub.allow_named_servers = True",
        f"c.JupyterHub.named_server_limit_per_user = {params.named_server_limit!r}",
        f"c.JupyterHub.db_url = {db_url}",
        f"c.JupyterHub.cookie_secret_file = {str(hub_dir / 'jupyterhub_cookie_secret')!r}",
        f"c.JupyterHub.pid_file = {str(hub_dir / 'jupyterhub.pid')!r}",
        f"c.JupyterHub.log_level = {params.log_level!r}",
        f"c.JupyterHub.spawner_class = {SPAWNERS[params.backend]!r}",
        "c.ConfigurableHTTPProxy.should_start = False",
        f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{params.proxy_api_port}'",
        f"c.ConfigurableHTTPProxy.auth_token = os.environ[{PROXY_TOKEN_ENV!r}]",
        f"services = json.loads({json.dumps(services)!r})",
        f"services[0]['api_token'] = os.environ[{SERVICE_TOKEN_ENV!r}]",
        f"services[1]['api_token'] = os.environ[{CULLER_TOKEN_ENV!r}]",
        f"services[2]['api_token'] = os.environ[{NAMED_CULLER_TOKEN_ENV!r}]",
        "c.JupyterHub.services = services",
        f"c.JupyterHub.load_roles = json.loads({json.dumps(roles)!r})",
    ]
    lines.insert(1, "import json")
    if params.external_url.startswith("https://"):  # every hub cookie Secure, _xsrf too
        lines.append("c.JupyterHub.cookie_options = {'secure': True}")
        lines.append("c.JupyterHub.tornado_settings['xsrf_cookie_kwargs'] = {'secure': True}")
    if params.login_config:
        access = f"access:services!service={SERVICE_NAME}"
        lines.append(f"c.JupyterHub.extra_user_scopes = {{{access!r}}}")
        lines += params.login_config
    else:
        lines.append("c.JupyterHub.authenticator_class = 'jupyterhub.auth.NullAuthenticator'")
    spawner = SPAWNERS[params.backend].rsplit(".", 1)[1]
    if params.backend == "local":
        lines.append(f"c.SandboxSpawner.data_dir = {str(params.data_dir)!r}")
    for name, value in sorted(params.spawner_config.items()):
        lines.append(f"c.{spawner}.{name} = json.loads({json.dumps(value)!r})")
    for section, traits in sorted(params.sandbox_config.items()):
        for name, value in sorted(traits.items()):
            lines.append(f"c.{section}.{name} = json.loads({json.dumps(value)!r})")
    if params.extra_config:
        lines += ["", "# extra config from ManagedHub.extra_config", params.extra_config]
    return "\n".join(lines) + "\n"
