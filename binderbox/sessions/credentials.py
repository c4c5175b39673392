"""A logged-in visitor's own git tokens, read from their login (the hub's ``auth_state``).

Private repositories are fetched with the visitor's own token, never with one of the
service (:meth:`binderbox.providers.git.GitProvider.use_visitor`).  The operator says
which token of the login is good for which git host (``c.Logins.git_tokens``, e.g.
``{"github.com": "access_token"}`` for a GitHub login whose OAuth app asks for the
``repo`` scope); binderbox's service then reads the user's ``auth_state`` through the
hub API (scope ``admin:auth_state``, granted only when ``git_tokens`` is set).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from .hubclient import HubAPIError, HubClient
from .identity import Visitor


async def with_git_tokens(hub: HubClient, visitor: Visitor, keys: Mapping[str, str]) -> Visitor:
    """``visitor`` with ``tokens`` {host: token} from their ``auth_state`` per ``keys``
    ({host: auth_state key}); unchanged when anonymous, nothing is configured or the
    login keeps no such token (the visitor then fetches as anyone does)."""
    if not visitor.logged_in or not keys or visitor.tokens:
        return visitor
    assert visitor.name is not None
    try:
        state = (await hub.get_user(visitor.name)).get("auth_state") or {}
    except HubAPIError:
        return visitor
    tokens = {
        host: value
        for host, key in keys.items()
        if isinstance(value := state.get(key), str) and value
    }
    return dataclasses.replace(visitor, tokens=tokens) if tokens else visitor
