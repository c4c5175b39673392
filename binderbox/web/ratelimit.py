"""Per-address rate limit on ``/build``, and the launch tokens that skip it.

Like BinderHub: each address may start ``limit`` builds per fixed window
of ``period`` seconds; requests that carry a launch token (issued by the
launch page for that one spec, valid for a while) are not counted, so the
limit only bites scripts hammering the API.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Window:
    remaining: int
    reset: float


class RateLimiter:
    """A fixed-window request counter per key (a client address).

    ``limit`` 0 disables it.  ``clock`` is injectable for tests.
    """

    def __init__(
        self, limit: int, period: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.period = period
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self._last_clean = clock()

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def check(self, key: str) -> float | None:
        """Count one request for ``key``.

        Returns ``None`` when it is allowed, else the seconds until the
        window resets (the ``Retry-After`` value).
        """
        if not self.enabled:
            return None
        now = self.clock()
        if now - self._last_clean > self.period:
            self._windows = {k: w for k, w in self._windows.items() if w.reset > now}
            self._last_clean = now
        window = self._windows.get(key)
        if window is None or window.reset <= now:
            window = self._windows[key] = _Window(self.limit, now + self.period)
        window.remaining -= 1
        if window.remaining < 0:
            return max(window.reset - now, 0.0)
        return None


class LaunchTokens:
    """Signed, expiring tokens that name one ``<provider>/<spec>``.

    The token is ``<expiry>.<hex hmac-sha256(secret, expiry + "|" + target)>``.
    """

    def __init__(
        self, secret: bytes, lifetime: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.secret = secret
        self.lifetime = lifetime
        self.clock = clock

    def _sign(self, expiry: str, target: str) -> str:
        message = f"{expiry}|{target}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def issue(self, target: str) -> str:
        """A token for ``target`` (``<provider>/<spec>``) valid for ``lifetime`` seconds."""
        expiry = str(int(self.clock() + self.lifetime))
        return f"{expiry}.{self._sign(expiry, target)}"

    def valid(self, token: str, target: str) -> bool:
        """True when ``token`` was issued for ``target`` and has not expired."""
        expiry, _, signature = token.partition(".")
        if not expiry.isdigit() or int(expiry) < self.clock():
            return False
        return hmac.compare_digest(signature, self._sign(expiry, target))
