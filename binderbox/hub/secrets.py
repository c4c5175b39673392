"""The secrets of a managed hub: generated once per data directory, kept in mode-0600
files under ``<data>/hub``, passed to the children through environment variables
only (:class:`~binderbox.hub.process.ManagedHub` uses this mixin)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def _secret_file(path: Path) -> str:
    """Read a secret from ``path``, creating it (mode 0600) the first time."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    tmp.rename(path)
    return value


class HubSecrets:
    """The hub's tokens and keys, each read (or made) once.  The class using it has
    ``hub_dir``."""

    @property
    def hub_dir(self) -> Path:
        """Where the secret files live (the class using this mixin says)."""
        raise NotImplementedError

    @property
    def api_token(self) -> str:
        """binderbox's hub API token (the ``binderbox`` service)."""
        return self._secret("service_token")

    @property
    def culler_token(self) -> str:
        """The idle culler's hub API token (its pass over temporary users)."""
        return self._secret("culler_token")

    @property
    def named_culler_token(self) -> str:
        """The idle culler's hub API token for its pass over named servers."""
        return self._secret("named_culler_token")

    @property
    def crypt_key(self) -> str:
        """The key that encrypts the logins' tokens in the hub database (``auth_state``)."""
        return self._secret("crypt_key")

    @property
    def web_cookie_secret(self) -> str:
        """The secret that signs the web app's login cookie."""
        return self._secret("web_cookie_secret")

    @property
    def proxy_token(self) -> str:
        """The token of the proxy's REST API."""
        return self._secret("proxy_token")

    def _secret(self, name: str) -> str:
        """The secret in ``hub_dir/name`` (made the first time; read once)."""
        path = self.hub_dir / name
        if not hasattr(self, "_secrets"):
            self._secrets: dict[Path, str] = {}
        if path not in self._secrets:
            self._secrets[path] = _secret_file(path)
        return self._secrets[path]
