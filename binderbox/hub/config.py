"""The jupyterhub_config.py binderbox writes for a data directory.

:func:`render_config` turns a :class:`HubParams` into the text of a
JupyterHub config file.  The choices it encodes (and why):

* ``NullAuthenticator``: nobody logs in to the hub.  binderbox creates the
  (temporary) users itself through the REST API with its service token, as
  BinderHub does in anonymous mode; the hub's login pages are not served.
* ``hub_routespec = <base_url>hub/``: the hub only owns ``/hub/`` on the
  proxy, so binderbox's web app can own ``/`` (a route without the hub's
  ``jupyterhub`` data marker, which the hub's route check leaves alone).
* ``ConfigurableHTTPProxy.should_start = False``: binderbox starts the Node
  proxy itself (``hub/process.py``) so that the proxy and the sessions
  survive a restart of the hub; ``cleanup_servers = False`` keeps the
  sessions when the hub stops, and the hub re-adds their routes on start.
* the database and the cookie secret live under the data directory; secrets
  (proxy token, service token) travel through environment variables only,
  never through the config file.
* ``slow_spawn_timeout = 0``: ``POST .../server`` answers 202 at once and
  the launcher relays the spawn progress stream as ``launching`` events.
* ``jupyterhub-idle-culler`` removes idle servers *and* their temporary
  users (``--cull-users``).  It is an external service of the hub (a token
  and a role here) that ``ManagedHub`` runs next to the hub, not a
  hub-managed one: a hub that dies (or fails to bind its port) leaves its
  managed services orphaned, while binderbox's children die with it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: environment variable carrying binderbox's hub API token (hub and web app)
SERVICE_TOKEN_ENV = "BINDERBOX_HUB_API_TOKEN"
#: environment variable carrying the proxy's REST API token (CHP and hub)
PROXY_TOKEN_ENV = "CONFIGPROXY_AUTH_TOKEN"
#: environment variable carrying the idle culler's hub API token
CULLER_TOKEN_ENV = "BINDERBOX_CULLER_API_TOKEN"
#: the name of binderbox's service in the hub
SERVICE_NAME = "binderbox"
#: what binderbox's service may do: create/delete users, start/stop their
#: servers, issue tokens for them (the launch token), read the hub's state,
#: and make the hub add its routes to a proxy that was started again
SERVICE_SCOPES = (
    "admin:users",
    "admin:servers",
    "tokens",
    "list:users",
    "read:users",
    "read:servers",
    "read:hub",
    "access:servers",
    "proxy",
)
#: what the idle culler needs (plus deleting users: ``--cull-users``)
CULLER_SCOPES = (
    "list:users",
    "read:users:activity",
    "read:servers",
    "delete:servers",
    "admin:users",
)


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
    cull_timeout: int = 600
    cull_max_age: int = 0
    cull_every: int = 0
    python: str = sys.executable
    spawner_config: dict[str, object] = field(default_factory=dict)
    #: {class name: {trait: value}} of the sandbox classes the spawner uses
    sandbox_config: dict[str, dict[str, object]] = field(default_factory=dict)
    log_level: str = "INFO"
    extra_config: str = ""

    @property
    def hub_dir(self) -> Path:
        """Where the hub keeps its database, cookie secret and config."""
        return self.data_dir / "hub"


def culler_command(params: HubParams, api_url: str) -> list[str]:
    """The idle culler's command line (its token goes in ``JUPYTERHUB_API_TOKEN``)."""
    cmd = [
        params.python,
        "-m",
        "jupyterhub_idle_culler",
        f"--url={api_url}",
        f"--timeout={params.cull_timeout}",
        "--cull-users=True",
    ]
    if params.cull_max_age:
        cmd.append(f"--max-age={params.cull_max_age}")
    if params.cull_every:
        cmd.append(f"--cull-every={params.cull_every}")
    return cmd


def render_config(params: HubParams) -> str:
    """The text of ``jupyterhub_config.py`` for ``params`` (see module docstring)."""
    hub_dir = params.hub_dir
    base = params.base_url
    services = [
        {"name": SERVICE_NAME, "display": False},
        {"name": "idle-culler", "display": False},
    ]
    roles = [
        {"name": SERVICE_NAME, "scopes": list(SERVICE_SCOPES), "services": [SERVICE_NAME]},
        {"name": "idle-culler", "scopes": list(CULLER_SCOPES), "services": ["idle-culler"]},
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
        "c.JupyterHub.cleanup_servers = False",
        "c.JupyterHub.cleanup_proxy = False",
        "# answer POST .../server at once (202) so launches relay the spawn progress",
        "c.JupyterHub.tornado_settings = {'slow_spawn_timeout': 0}",
        f"c.JupyterHub.db_url = {'sqlite:///' + str(hub_dir / 'jupyterhub.sqlite')!r}",
        f"c.JupyterHub.cookie_secret_file = {str(hub_dir / 'jupyterhub_cookie_secret')!r}",
        f"c.JupyterHub.pid_file = {str(hub_dir / 'jupyterhub.pid')!r}",
        f"c.JupyterHub.log_level = {params.log_level!r}",
        "c.JupyterHub.authenticator_class = 'jupyterhub.auth.NullAuthenticator'",
        "c.JupyterHub.spawner_class = 'binderbox.sessions.spawners.local.SandboxSpawner'",
        "c.ConfigurableHTTPProxy.should_start = False",
        f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{params.proxy_api_port}'",
        f"c.ConfigurableHTTPProxy.auth_token = os.environ[{PROXY_TOKEN_ENV!r}]",
        f"c.SandboxSpawner.data_dir = {str(params.data_dir)!r}",
        f"services = json.loads({json.dumps(services)!r})",
        f"services[0]['api_token'] = os.environ[{SERVICE_TOKEN_ENV!r}]",
        f"services[1]['api_token'] = os.environ[{CULLER_TOKEN_ENV!r}]",
        "c.JupyterHub.services = services",
        f"c.JupyterHub.load_roles = json.loads({json.dumps(roles)!r})",
    ]
    lines.insert(1, "import json")
    for name, value in sorted(params.spawner_config.items()):
        lines.append(f"c.SandboxSpawner.{name} = json.loads({json.dumps(value)!r})")
    for section, traits in sorted(params.sandbox_config.items()):
        for name, value in sorted(traits.items()):
            lines.append(f"c.{section}.{name} = json.loads({json.dumps(value)!r})")
    if params.extra_config:
        lines += ["", "# extra config from ManagedHub.extra_config", params.extra_config]
    return "\n".join(lines) + "\n"
