"""What every binder session needs from its spawner, whatever backend runs it.

:class:`BinderSpawnerMixin` goes before a JupyterHub spawner class in the bases
(``class SandboxSpawner(BinderSpawnerMixin, LocalProcessSpawner)``), as
BinderHub's mixin of the same name does.  It owns the parts that do not depend
on where the server runs:

* :attr:`launch_options` -- the server's ``user_options`` read back as a
  checked :class:`~binderbox.runtime.options.LaunchOptions` (a bad field is an
  HTTP error of the hub's API, never a traceback);
* :meth:`get_env` -- only what the server needs: the hub's ``JUPYTERHUB_*``
  variables, the session layout's variables (what ``postBuild`` saw too), the
  ``BINDER_*`` variables, the launch token, and for a logged-in user the
  login's tokens named by :attr:`auth_state_env` (:meth:`run_auth_state_hook`
  takes them from the user's ``auth_state``, which the hub refreshed just
  before: ``Authenticator.refresh_pre_spawn``);
* :meth:`get_args` -- kernels on Unix sockets, the CORS setting;
* :meth:`progress` -- the steps the backend reports with :meth:`report`;
* :meth:`apply_size` -- the launch's size (by name) as ``mem_limit``/``cpu_limit``,
  from the spawner's own ``sizes`` (:mod:`binderbox.sessions.sizes`), checked
  against the user's groups.

A backend overrides ``start``/``poll``/``stop`` as JupyterHub's ``Spawner``
documents, calling :meth:`report` as it goes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tornado import web
from traitlets import Dict, Float, List, Unicode, default
from traitlets.config import Configurable

from ...environments.spec import ENV_PREFIX, HOME
from ...runtime.layout import session_environment
from ...runtime.options import BadOptions, LaunchOptions
from ...runtime.sandbox import USER
from ..sizes import SizeRefused, choose, read_sizes


class BinderSpawnerMixin(Configurable):
    """Binder sessions over any JupyterHub spawner.  See the module docstring."""

    allowed_roots = List(
        Unicode(),
        help="Host directories that env_path, content_path, data_mounts and hold_files "
        "must lie under (the data directory is always allowed).",
    ).tag(config=True)
    allow_origin = Unicode(
        "",
        help="CORS Access-Control-Allow-Origin of the servers ('*' lets thebe and other "
        "pages on any site use a session; '' = same origin only).",
    ).tag(config=True)
    auth_state_env = Dict(
        Unicode(),
        help="""Tokens of a logged-in user's login passed into their servers: {auth_state
        key: environment variable}, e.g. {"access_token": "KC_ACCESS_TOKEN"}
        (``Logins.token_env``).  Keys missing from the auth_state are left out.""",
    ).tag(config=True)
    ready_poll_interval = Float(
        0.05, help="Seconds between readiness checks of a starting server."
    ).tag(config=True)
    sizes = List(
        Dict(),
        help="The operator's session sizes (binderbox sets them from SessionSizes.sizes).",
    ).tag(config=True)
    default_size = Unicode("", help="The size of a launch that names none.").tag(config=True)

    _messages: list[dict[str, Any]]
    #: the login's tokens for this start (from :meth:`run_auth_state_hook`)
    _login_env: dict[str, str]
    user_options: dict[str, Any]  #: JupyterHub's Spawner trait
    user: Any  #: JupyterHub's Spawner trait
    mem_limit: int | None  #: JupyterHub's Spawner trait
    cpu_limit: float | None  #: JupyterHub's Spawner trait
    default_url: str  #: JupyterHub's Spawner trait

    @default("default_url")
    def _default_default_url(self) -> str:
        return "/lab"

    @default("http_timeout")
    def _default_http_timeout(self) -> int:
        return 30

    @default("start_timeout")
    def _default_start_timeout(self) -> int:
        return 120

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        return [f"{ENV_PREFIX}/bin/jupyterhub-singleuser"]

    #: whether the launch options' host paths are on this process's filesystem (they are
    #: checked to exist), or on shared volumes only the session sees (a cluster's)
    options_on_this_host = True

    def option_roots(self) -> list[Path]:
        """Where host paths of the launch options may lie (backends add theirs)."""
        return [Path(root) for root in self.allowed_roots]

    @property
    def runs_images(self) -> bool:
        """Whether this backend's sessions run environments' images (image mode), not
        folders of the store: launch options must name one or the other."""
        return False

    @property
    def launch_options(self) -> LaunchOptions:
        """``user_options`` as checked :class:`LaunchOptions` (HTTP 400/403 if bad)."""
        try:
            options = LaunchOptions.from_user_options(
                self.user_options or {}, self.option_roots(), self.options_on_this_host
            )
        except BadOptions as err:
            raise web.HTTPError(err.status, str(err)) from None
        if self.runs_images and not options.image:
            raise web.HTTPError(400, "this hub runs sessions from images: name an image")
        if options.image and not self.runs_images:
            raise web.HTTPError(400, "this hub runs sessions from the store, not from images")
        return options

    def apply_size(self, options: LaunchOptions) -> None:
        """Set ``mem_limit``/``cpu_limit`` from the size ``options`` names (HTTP 403 when
        the user may not have it).  Options come from whoever may start the server, so
        only the name is taken from them, the limits from this spawner's ``sizes``."""
        groups = [group.name for group in getattr(self.user, "groups", [])]
        try:
            size = choose(read_sizes(self.sizes), options.size, self.default_size, True, groups)
        except (SizeRefused, ValueError) as err:
            raise web.HTTPError(403, str(err)) from None
        if size is not None:
            self.mem_limit = size.mem_bytes or None
            self.cpu_limit = size.cpu or None

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        """The session user's variables (no host account is involved)."""
        env.update(USER=USER, HOME=HOME, SHELL="/bin/bash")
        return env

    def get_env(self) -> dict[str, str]:
        """Only what the server needs: JUPYTERHUB_*, BINDER_*, NB_*, PATH, limits."""
        hub_env: dict[str, str] = super().get_env()  # type: ignore[misc]
        env = {
            k: v
            for k, v in hub_env.items()
            if k.startswith(("JUPYTERHUB_", "JPY_", "MEM_", "CPU_")) or k in ("LANG", "LC_ALL")
        }
        # what postBuild saw too (one list), the hub's LANG winning
        env = {**session_environment(), **env}
        env.update({"VIRTUAL_ENV": ENV_PREFIX, "JUPYTERHUB_ALLOW_TOKEN_IN_URL": "1"})
        options = self.launch_options
        env.update(options.binder.environment())
        if options.token:
            env["JUPYTER_TOKEN"] = options.token
        env.update(getattr(self, "_login_env", {}))
        return env

    async def run_auth_state_hook(self, auth_state: dict[str, Any] | None) -> None:
        """Keep the login's tokens named by :attr:`auth_state_env` for :meth:`get_env`.

        The hub calls this before each start with the user's (refreshed) auth_state;
        None for users who did not log in (binderbox's temporary users)."""
        state = auth_state or {}
        self._login_env = {
            variable: str(state[key])
            for key, variable in self.auth_state_env.items()
            if isinstance(state.get(key), str | int) and state.get(key) != ""
        }
        await super().run_auth_state_hook(auth_state)  # type: ignore[misc]

    def get_args(self) -> list[str]:
        """``Spawner.args``, kernels on Unix sockets, and the CORS setting.

        Kernels talk to their server over ``ipc`` (Unix sockets in the
        session's private runtime folder), not TCP: a kernel's iopub port
        publishes every output to whoever subscribes (messages are signed, not
        encrypted), and no session should depend on its network being private.
        """
        args: list[str] = [*super().get_args(), "--KernelManager.transport=ipc"]  # type: ignore[misc]
        if self.allow_origin:
            args.append(f"--ServerApp.allow_origin={self.allow_origin}")
        return args

    def report(self, progress: int, message: str) -> None:
        """One step of ``start`` for the hub's progress stream."""
        if not hasattr(self, "_messages"):
            self._messages = []
        self._messages.append({"progress": progress, "message": message})

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        """Relay the steps of ``start`` (the hub stops iterating when it ends)."""
        seen = 0
        while True:
            messages = getattr(self, "_messages", [])
            while seen < len(messages):
                yield messages[seen]
                seen += 1
            await asyncio.sleep(self.ready_poll_interval)
