"""Helpers for the session tests: a real single-user environment, built once.

:func:`session_env` builds (once per cache key) a virtualenv *at*
``/srv/env`` with the real builder (see tests/envs.py) -- what a build of
a repository without requirements gives -- cached across runs.
"""

from __future__ import annotations

from pathlib import Path

from envs import built_env

CACHE = Path("/tmp/binderbox-test-cache")


def session_env() -> Path:
    """The host path of a built session environment (see the module docstring)."""
    return built_env(session=True)
