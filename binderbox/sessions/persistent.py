"""Persistent homes: one home per logged-in user, kept across sessions and restarts.

Where: ``<data>/homes/users/<user>`` (the user name percent-encoded where it is
not a plain name), shown at ``/home/jovyan`` in every session of the user (all of
their named servers at once).  Only the admin removes one
(``binderbox homes remove <user>``); stopping, culling or deleting the hub user
leaves it.

Whose: the home owns a host uid of :attr:`SandboxHost.home_uids
<binderbox.runtime.host.SandboxHost.home_uids>` (the top of the sandbox range,
which builds and temporary sessions never lease) for good, chosen when the
home is made and read back from its owner at each start, so every session of
the user runs as that uid and finds its files writable, and no two homes of a
data directory share one.  Not root: the service's uid, as every session.

What a launch places (the rule):

* the repository's content (with postBuild's home changes) goes to
  ``~/<folder>``, ``<folder>`` the repository's name (``LaunchOptions.content_folder``),
  when there is nothing at that name (the first launch of that repository, or the
  user removed the folder);
* afterwards ``~/<folder>`` is the user's: it is never written again.  A launch
  of another version (``content_version``, the commit) places that version
  beside it, in ``~/<folder>-<version[:7]>``, once (that folder, too, is left
  alone afterwards); the same version again places nothing;
* the session opens ``~/<folder>`` (``/lab/tree/<folder>``);
* the repository's ``start`` script runs from ``~/<folder>/start`` when it is an
  executable file there (checked inside the sandbox, as the user).

Placing never copies the home: the content is copied into a private staging
folder of the service (``<data>/homes/staging``, beside the homes on the same
filesystem), postBuild's changes are replayed there, the copy is handed to the
home's uid (:func:`~binderbox.runtime.ownership.give_tree`, links never
followed), and it is renamed into the home: one ``rename``, which does not follow
a link the session could have put at that name and fails when something is
there already (then nothing is placed).  Nothing else in the home is looked at
or changed as root: sessions of the same user may be running in it.  What was
placed where is recorded outside the home, in ``<data>/homes/placed/<user>.json``.

postBuild's changes to the home land in the placed folder with the content
(``~/<folder>/.jupyter/...``), never in the rest of the home: they cannot
clobber the user's files.

Disk: the home is held to ``SandboxSpawner.home_limit`` by measurement (each
session's supervisor stops a session whose home is over it); no filesystem
quota is set (``/health`` says so).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..builders.overlay import apply_home_overlay
from ..environments.spec import HOME
from ..runtime.host import SandboxHost
from ..runtime.leases import Lease
from ..runtime.options import LaunchOptions
from ..runtime.ownership import give_tree
from ..store.files import remove_tree
from ..store.locks import FileLock
from ..util.sizes import human
from .homes import HomePolicy, HomeSetup, make_executable

#: what a home folder holds when the launch names no content folder
DEFAULT_FOLDER = "repository"
#: runs the start script when it is an executable file, else the server directly
_START_IF_EXECUTABLE = 'if [ -f "$1" ] && [ -x "$1" ]; then exec "$@"; fi; shift; exec "$@"'


def home_name(user: str) -> str:
    """``user`` as one path segment: percent-encoded, never ``.``-led."""
    name = quote(user, safe="@")
    return "%2E" + name[1:] if name.startswith(".") else name


def users_dir(data_dir: Path) -> Path:
    """Where the persistent homes of a data directory live."""
    return data_dir / "homes" / "users"


def persistent_homes(data_dir: Path) -> list[str]:
    """The folder names of the persistent homes of ``data_dir``."""
    folder = users_dir(data_dir)
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir(follow_symlinks=False))


class HomeInUse(RuntimeError):
    """A session of the home's user runs."""


def remove_persistent_home(data_dir: Path, user: str) -> bool:
    """Delete ``user``'s home and its placement record (links inside are removed, never
    followed); False when there was none.  :class:`HomeInUse` while a session of the
    user runs (it holds the home's use-lock)."""
    home = users_dir(data_dir) / home_name(user)
    lock = FileLock.try_acquire(_use_lock(home))
    if lock is None:
        raise HomeInUse(f"a session of {user} is running")
    with lock:
        existed = home.is_dir() and not home.is_symlink()
        remove_tree(home)
        (data_dir / "homes" / "placed" / f"{home_name(user)}.json").unlink(missing_ok=True)
    return existed


def _use_lock(home: Path) -> Path:
    folder = home.parent.parent / "locks"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder / f"{home.name}.use"


def homes_status(data_dir: Path, home_bytes: int) -> dict[str, Any]:
    """For /health: the persistent homes, and how their disk limit is enforced.

    No filesystem quota is set (binderbox sets none, on any filesystem): a home is
    held to ``home_bytes`` by its sessions' supervisors, which measure it and stop a
    session whose home is over; the home is kept."""
    return {
        "service": "Persistent homes",
        "ok": True,
        "homes": len(persistent_homes(data_dir)),
        "limit": human(home_bytes) if home_bytes else None,
        "filesystem_quota": False,
        "enforced": "measured" if home_bytes else "no limit set",
        "note": "no filesystem quota: each session's supervisor measures the home and "
        "stops the session when it is over the limit (the home is kept); homes outlive "
        "sessions and are removed only by `binderbox homes remove`",
    }


class PersistentHome(HomePolicy):
    """One home per user, kept.  See the module docstring."""

    kind = "persistent"

    def path(self, data_dir: Path, user: str, session: str) -> Path:
        return users_dir(data_dir) / home_name(user)

    def uid(self, host: SandboxHost, home: Path) -> tuple[int | None, Lease | None]:
        """The home's own uid (the home made, with a free one, on first use)."""
        home.parent.mkdir(parents=True, exist_ok=True)
        home.parent.chmod(0o711)
        if not host.switches_uid:
            with contextlib.suppress(FileExistsError):
                home.mkdir(mode=0o700)
            return None, None
        owned = host.home_uid_range
        with FileLock.acquire(home.parent.parent / "users.lock"):
            info = _lstat(home)
            if info is not None:
                if not stat.S_ISDIR(info.st_mode) or info.st_uid not in owned:
                    raise RuntimeError(f"{home} is not a home binderbox made")
                return info.st_uid, None
            taken = {_owner(Path(entry.path)) for entry in os.scandir(home.parent)}
            uid = next((u for u in owned if u not in taken), None)
            if uid is None:
                raise RuntimeError(f"every uid for persistent homes is taken ({len(owned)})")
            home.mkdir(mode=0o700)
            os.lchown(home, uid, uid)
            return uid, None

    def prepare(self, home: Path, options: LaunchOptions, uid: int | None) -> HomeSetup:
        folder = options.content_folder or DEFAULT_FOLDER
        record = _Record(home.parent.parent / "placed" / f"{home.name}.json")
        target = record.target(folder, options.content_version, home)
        if target is not None and self._place(home, target, options, uid):
            record.placed(target, options.content_version)
        prefix = []
        if options.start_script:
            script = f"{HOME}/{folder}/{options.start_script}"
            prefix = ["/bin/sh", "-c", _START_IF_EXECUTABLE, "start", script]
        return HomeSetup(prefix, f"/lab/tree/{folder}", {"REPO_DIR": f"{HOME}/{folder}"})

    def release(self, home: Path) -> None:
        """Nothing: the home outlives its sessions."""

    def use_lock(self, home: Path) -> Path | None:
        return _use_lock(home)

    def repo_dir(self, folder: str) -> str:
        return folder or DEFAULT_FOLDER

    @staticmethod
    def _place(home: Path, target: str, options: LaunchOptions, uid: int | None) -> bool:
        """The content (and postBuild's changes) at ``home/target``; False when something
        is at that name already (nothing changed)."""
        staging = home.parent.parent / "staging"
        staging.mkdir(mode=0o700, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f"{home.name}.", dir=staging))
        try:
            if options.content_path is not None:
                stage.rmdir()
                copy = ["cp", "-a", "--reflink=auto", "--no-target-directory"]
                subprocess.run(
                    [*copy, str(options.content_path), str(stage)],
                    check=True,
                    capture_output=True,
                )
            apply_home_overlay(options.env_dir, stage)
            if options.start_script:
                make_executable(stage, options.start_script)
            if uid is not None:
                give_tree(stage, uid)
            stage.chmod(0o755)
            try:
                stage.rename(home / target)  # never follows a link at that name
            except OSError:
                return False
            return True
        finally:
            remove_tree(stage)


class _Record:
    """Which version was placed in which folder of a home (kept outside the home)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.folders: dict[str, str] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.folders = {}

    def target(self, folder: str, version: str, home: Path) -> str | None:
        """Where this launch places its content (None: nothing to place)."""
        if _lstat(home / folder) is None:  # never placed, or the user removed it
            return folder
        if not version or self.folders.get(folder) == version:
            return None
        beside = f"{folder}-{version[:7]}"
        return None if beside in self.folders or _lstat(home / beside) else beside

    def placed(self, target: str, version: str) -> None:
        self.folders[target] = version
        self.path.parent.mkdir(mode=0o700, exist_ok=True)
        temp = self.path.with_suffix(".tmp")
        temp.write_text(json.dumps(self.folders, indent=1, sort_keys=True))
        temp.replace(self.path)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _owner(path: Path) -> int:
    info = _lstat(path)
    return info.st_uid if info is not None else -1
