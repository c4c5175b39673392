"""Session homes on the host: where they live, whose uid they have, what a launch puts in.

A :class:`HomePolicy` is one kind of home; the launch names it
(:attr:`LaunchOptions.home <binderbox.runtime.options.LaunchOptions>`, chosen
by the launcher's identity policy, :mod:`binderbox.sessions.identity`) and the
spawner asks :func:`home_policy` for it.  Two kinds:

* :class:`EphemeralHome` (temporary users, every anonymous Binder): made fresh
  at each start from the repository's content and postBuild's home changes,
  removed when the session ends;
* :class:`~binderbox.sessions.persistent.PersistentHome` (logged-in users): one
  home per user, kept across sessions and restarts, the content placed in a
  folder of it without touching what the user changed.

Everything here runs as root on a tree no sandbox runs in yet, and never
follows a link the repository (or postBuild) put there: the content is copied
with its links as links, the tree is handed to the session's uid with
``lchown`` (:mod:`binderbox.runtime.ownership`), and the ``start`` script is made
executable only when it resolves to a file inside the home, opened without
following links.
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..builders.overlay import apply_home_overlay
from ..environments.spec import HOME
from ..runtime.host import SandboxHost
from ..runtime.leases import Lease
from ..runtime.options import LaunchOptions
from ..runtime.ownership import give_tree
from ..store.files import remove_tree


@dataclass(frozen=True)
class HomeSetup:
    """What a prepared home tells the spawner.

    ``command_prefix``
        goes before the server's command (the repository's ``start`` script)
    ``default_url``
        the page the server opens (None: the spawner's ``default_url``)
    ``environment``
        variables of the session (``REPO_DIR``: where the content is)
    """

    command_prefix: list[str] = field(default_factory=list)
    default_url: str | None = None
    environment: dict[str, str] = field(default_factory=dict)


class HomePolicy:
    """One kind of session home.  Subclasses set :attr:`kind` and override:

    ``path(data_dir, user, session)``
        the host folder shown at ``/home/jovyan`` (``session``: the spawner's
        ``<user>-default`` or ``<user>-<server>-<hash>``)
    ``uid(host, home)``
        the host uid the session runs as (None: the service's) and the lease that
        holds it, if any (the spawner hands it to the session's supervisor)
    ``prepare(home, options, uid)``
        make the home ready for a start (blocking, runs as root: never follows a
        link a session could have planted); returns a :class:`HomeSetup`
    ``release(home)``
        after the session ended, whichever way it ended
    ``use_lock(home)``
        a file the session holds a shared ``flock`` on while it runs (None: none), so
        an admin's removal of a home in use can be refused
    ``repo_dir(folder)``
        where the repository is in the home, relative to it ('': the home itself),
        given the launch's content folder
    """

    kind: ClassVar[str] = ""

    def path(self, data_dir: Path, user: str, session: str) -> Path:
        raise NotImplementedError

    def uid(self, host: SandboxHost, home: Path) -> tuple[int | None, Lease | None]:
        raise NotImplementedError

    def prepare(self, home: Path, options: LaunchOptions, uid: int | None) -> HomeSetup:
        raise NotImplementedError

    def release(self, home: Path) -> None:
        raise NotImplementedError

    def use_lock(self, home: Path) -> Path | None:
        return None

    def repo_dir(self, folder: str) -> str:
        return ""


class EphemeralHome(HomePolicy):
    """A fresh private home per session: ``<data>/homes/<session>``, a copy of the
    content, owned by a uid leased for the session alone, removed at the end."""

    kind = "ephemeral"

    def path(self, data_dir: Path, user: str, session: str) -> Path:
        return data_dir / "homes" / session

    def uid(self, host: SandboxHost, home: Path) -> tuple[int | None, Lease | None]:
        lease = host.lease_uid()
        return (lease.value if lease else None), lease

    def prepare(self, home: Path, options: LaunchOptions, uid: int | None) -> HomeSetup:
        start = prepare_home(home, options.env_dir, options.content_path, options.start_script, uid)
        return HomeSetup([f"{HOME}/{start}"] if start else [])

    def release(self, home: Path) -> None:
        remove_home(home)


def home_policy(kind: str) -> HomePolicy:
    """The policy of ``kind`` (``ephemeral`` or ``persistent``; checked by LaunchOptions)."""
    from .persistent import PersistentHome

    policies: dict[str, HomePolicy] = {"ephemeral": EphemeralHome(), "persistent": PersistentHome()}
    return policies[kind]


def prepare_home(
    home: Path, env_path: Path, content: Path | None, start: str | None, uid: int | None
) -> str | None:
    """Make ``home`` fresh; returns ``start`` if it is a file inside the home (made
    executable), else None.  ``uid``: the session's host uid (None: the service's)."""
    remove_tree(home)
    home.parent.mkdir(parents=True, exist_ok=True)
    home.parent.chmod(0o711)  # sessions enter their own home; nobody lists the others
    if content is not None:
        subprocess.run(
            ["cp", "-a", "--reflink=auto", "--no-target-directory", str(content), str(home)],
            check=True,
            capture_output=True,
        )
    else:
        home.mkdir()
    apply_home_overlay(env_path, home)
    if uid is not None:
        give_tree(home, uid)
    home.chmod(0o700)
    return start if start and make_executable(home, start) else None


def make_executable(home: Path, rel: str) -> bool:
    """``chmod +x`` the regular file ``home/rel`` when it resolves inside ``home``;
    False (nothing changed) otherwise.  The file is opened without following a link,
    so a name swapped for one cannot redirect the change."""
    target = Path(os.path.realpath(home / rel))
    if not target.is_relative_to(home.resolve()):
        return False
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False
        os.fchmod(fd, (info.st_mode & 0o7777) | 0o111)
    finally:
        os.close(fd)
    return True


def remove_home(home: Path) -> None:
    """Delete ``home`` (links inside are removed, never followed)."""
    remove_tree(home)
