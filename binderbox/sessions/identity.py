"""Who asks for a launch: the contract between the web layer and the launcher.

The web layer (which knows whether the request carries a hub login) turns each
request into a :class:`Visitor` and passes it along with the launch
(``LaunchRequest.visitor`` -> ``SessionRequest.visitor``).  The launcher and the
spawner decide from it whose server starts and which home it gets; nothing below
the web layer looks at cookies or tokens of the request.

An anonymous visitor (``name`` None) gets what every Binder gives: a temporary
hub user, an ephemeral home.  A logged-in visitor is a hub user who keeps theirs.

The launcher turns a visitor into an :class:`IdentityPolicy`
(:func:`identity_for`): :class:`TemporaryIdentity` or :class:`LoggedInIdentity`.
The policy says which hub user and server a launch gets, what undoes it, and
which home policy (``ephemeral``, ``persistent``) the session's
:class:`~binderbox.runtime.options.LaunchOptions` carry to the spawner; nothing
else branches on whether a visitor logged in.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlparse

from ..errors import LaunchError
from ..providers.base import Resolved
from .hubclient import HubAPIError, HubClient

#: JupyterHub user names we make: lowercase letters, digits, '-'; at most 30
NAME_MAX = 30
RANDOM_CHARS = 8


@dataclass(frozen=True)
class Visitor:
    """The requester of a launch, as the web layer authenticated them.

    ``name``
        the hub user name of a logged-in visitor; None: anonymous
    ``admin``
        the hub says this user is an admin
    ``groups``
        the hub groups of the user (allow-lists of sizes and environments)
    ``tokens``
        the visitor's own tokens for git hosts, by ``host[:port]`` (from their
        login): private repositories are fetched with them, never with a token of
        the service.  Never shown in a repr or a log.
    """

    name: str | None = None
    admin: bool = False
    groups: tuple[str, ...] = ()
    tokens: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def logged_in(self) -> bool:
        """Whether the visitor is a logged-in hub user."""
        return self.name is not None


#: an anonymous visitor (the CLI's launches, a site without logins)
ANONYMOUS = Visitor()


#: the hub group of temporary users: the temporary users' idle culler sees only them
TEMPORARY_GROUP = "binderbox-temporary"
#: JupyterHub server names: 1-30 of [a-z0-9-], a letter first, no "--"
SERVER_NAME_MAX = 30


class IdentityPolicy:
    """Whose hub user a launch runs as, which of its servers, and what undoes it.

    Subclasses set :attr:`kind` and :attr:`home` (the home policy their sessions
    get, :mod:`binderbox.sessions.homes`) and override:

    ``server_name(resolved)``
        the hub server of the launch (``""``: the user's default server)
    ``async make_user(hub, resolved, note)``
        the hub user to launch as, made when needed; ``note(name)`` is called just
        before a user is asked for (a call that fails may still have made it)
    ``async forget(hub, name, server)``
        one attempt at undoing a session (its server stopped, and whatever the policy
        made for it); :class:`HubAPIError` when the hub is busy or away
    ``deletes_user``
        whether :meth:`forget` removes the user (the launcher then owns it)
    """

    kind: ClassVar[str] = ""
    home: str = "ephemeral"
    deletes_user: ClassVar[bool] = False

    def server_name(self, resolved: Resolved) -> str:
        raise NotImplementedError

    async def make_user(
        self, hub: HubClient, resolved: Resolved, note: Callable[[str], None]
    ) -> str:
        raise NotImplementedError

    async def forget(self, hub: HubClient, name: str, server: str) -> None:
        raise NotImplementedError


class TemporaryIdentity(IdentityPolicy):
    """A fresh hub user per launch (named after the repository plus random characters,
    :func:`user_name_for`), a member of :data:`TEMPORARY_GROUP`, with its default
    server; deleted with its session (by the launcher, or the temporary users' idle
    culler).  Anonymous visitors get this, as on every Binder."""

    kind = "temporary"
    deletes_user = True

    def server_name(self, resolved: Resolved) -> str:
        return ""

    async def make_user(
        self, hub: HubClient, resolved: Resolved, note: Callable[[str], None]
    ) -> str:
        for _ in range(5):
            name = user_name_for(resolved)
            note(name)
            try:
                await hub.create_user(name)
            except HubAPIError as err:
                if err.status == 409:  # someone else's
                    continue
                raise
            await hub.add_to_group(TEMPORARY_GROUP, name)
            return name
        raise LaunchError("Could not create a session user.", log_message="5 name collisions")

    async def forget(self, hub: HubClient, name: str, server: str) -> None:
        await hub.delete_user(name)  # its server stopped first


@dataclass(frozen=True)
class LoggedInIdentity(IdentityPolicy):
    """The visitor's own hub user (made when the hub does not have it yet, never
    deleted by binderbox), one named server per repository and ref
    (:func:`server_name_for`); undoing a session stops that server and removes it
    from the hub, so it no longer counts against the user's limit."""

    user: str = ""
    home: str = "persistent"
    kind: ClassVar[str] = "logged-in"

    def server_name(self, resolved: Resolved) -> str:
        return server_name_for(resolved)

    async def make_user(
        self, hub: HubClient, resolved: Resolved, note: Callable[[str], None]
    ) -> str:
        try:
            await hub.create_user(self.user)
        except HubAPIError as err:
            if err.status != 409:  # 409: the hub has it (the usual case)
                raise
        return self.user

    async def forget(self, hub: HubClient, name: str, server: str) -> None:
        await hub.stop_server(name, server, remove=True)


def identity_for(visitor: Visitor, persistent_homes: bool = True) -> IdentityPolicy:
    """The policy of ``visitor``: temporary when anonymous, else the visitor's own user
    (with a persistent home unless ``persistent_homes`` is off)."""
    if visitor.name is None:
        return TemporaryIdentity()
    return LoggedInIdentity(visitor.name, "persistent" if persistent_homes else "ephemeral")


def identity_of(user: Mapping[str, Any]) -> IdentityPolicy:
    """The policy a hub user model was made by: temporary users are members of
    :data:`TEMPORARY_GROUP`."""
    if TEMPORARY_GROUP in (user.get("groups") or ()):
        return TemporaryIdentity()
    return LoggedInIdentity(str(user["name"]))


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")


def user_name_for(resolved: Resolved) -> str:
    """A fresh temporary user name: readable repository prefix + random chars."""
    path = urlparse(resolved.repo_url).path if resolved.repo_url else resolved.spec
    parts = [p for p in re.split(r"[/:]+", path.removesuffix(".git")) if p][-2:]
    room = NAME_MAX - RANDOM_CHARS - 1
    slugs = [re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts]
    prefix = "-".join(s for s in slugs if s)
    if len(prefix) > room:  # keep the repository's own name readable
        prefix = slugs[-1] if slugs else ""
    prefix = prefix[:room].rstrip("-") or "binder"
    alphabet = string.ascii_lowercase + string.digits
    suffix = "".join(secrets.choice(alphabet) for _ in range(RANDOM_CHARS))
    return f"{prefix}-{suffix}"


def repo_folder(resolved: Resolved) -> str:
    """The repository's own name, as a folder of a persistent home (``requirements``)."""
    path = urlparse(resolved.repo_url).path if resolved.repo_url else resolved.spec
    parts = [p for p in re.split(r"[/:]+", path.removesuffix(".git")) if p]
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", parts[-1] if parts else "").strip("-.")
    return name[:64] or "repository"


def server_name_for(resolved: Resolved) -> str:
    """The named server of a repository and ref: its readable name and a hash of the
    provider and spec (``requirements-main-3f2a9c1d``), a JupyterHub safe slug."""
    digest = hashlib.sha256(f"{resolved.provider}:{resolved.spec}".encode()).hexdigest()[:8]
    ref = resolved.spec.rsplit("/", 1)[-1] if "/" in resolved.spec else ""
    room = SERVER_NAME_MAX - len(digest) - 1
    words = "-".join(w for w in (_slug(repo_folder(resolved)), _slug(ref)) if w)
    prefix = words[:room].strip("-")
    if not prefix[:1].isalpha():
        prefix = ("b-" + prefix)[:room].strip("-")
    return f"{prefix}-{digest}"
