"""Local accounts: ``jupyterhub-nativeauthenticator``, fitted to JupyterHub 6.

``nativeauthenticator`` 1.3.0 (its latest release) times each login with the
hub handler's ``statsd`` client, which JupyterHub 6 no longer has: every login
answered 500.  :class:`NativeAuthenticator` is the same authenticator whose
login page gets a ``statsd`` that measures nothing; nothing else changes.
The hub loads it (``Logins.authenticator = 'native'``).
"""

from __future__ import annotations

from typing import Any

from nativeauthenticator import NativeAuthenticator as _NativeAuthenticator
from nativeauthenticator.handlers import LoginHandler as _LoginHandler


class _Timer:
    """A statsd timer that measures nothing."""

    def start(self) -> _Timer:
        return self

    def stop(self, send: bool = True) -> None:
        return None


class _NoStats:
    """The part of a statsd client the login page uses."""

    def timer(self, name: str) -> _Timer:
        return _Timer()


class LoginHandler(_LoginHandler):  # type: ignore[misc]
    """nativeauthenticator's login page with a ``statsd`` that measures nothing."""

    statsd = _NoStats()


class NativeAuthenticator(_NativeAuthenticator):  # type: ignore[misc]
    """``nativeauthenticator.NativeAuthenticator`` with the fitted login page."""

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        handlers: list[tuple[str, Any]] = super().get_handlers(app)
        return [
            (path, LoginHandler if handler is _LoginHandler else handler)
            for path, handler in handlers
        ]
