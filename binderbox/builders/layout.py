"""The layout of a built environment, shared by builds, sessions, tests and the CLI.

An environment is a directory built *at* ``/srv/env`` inside a sandbox;
binderbox's own files are in its ``.binderbox/`` folder (:data:`META`):
``requirements.txt`` (what was installed), ``build.json`` (interpreter and
builder), and postBuild's home changes (``home-overlay/`` and
``home-deleted.json``), which :func:`apply_home_overlay` replays onto each
session's fresh copy of the repository.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..environments import ENV_PREFIX, HOME
from ..sandbox import UID, USER, Sandbox, passwd_file

#: the folder inside an environment holding binderbox's own files
META = ".binderbox"
_BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def session_environment() -> dict[str, str]:
    """Variables a session (and postBuild) sees (reference: environment-files.md)."""
    return {
        "PATH": f"{ENV_PREFIX}/bin:{_BASE_PATH}",
        "HOME": HOME,
        "USER": USER,
        "NB_USER": USER,
        "NB_UID": str(UID),
        "NB_PYTHON_PREFIX": ENV_PREFIX,
        "REPO_DIR": HOME,
        "LANG": "C.UTF-8",
        "SHELL": "/bin/bash",
    }


def _etc_dir() -> Path:
    return passwd_file(private_tmp() / "etc")


_private: list[Path] = []


def private_tmp(tmp: Path | None = None) -> Path:
    """``/tmp/binderbox-<uid>``, made 0700 by this uid; a fresh private folder instead
    when someone else planted that name (a symlink, another owner, open modes):
    files are written in it as the service's user."""
    tmp = Path(tempfile.gettempdir()) if tmp is None else tmp
    wanted = tmp / f"binderbox-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        wanted.mkdir(mode=0o700)
    if _is_private(wanted):
        return wanted
    if not _private or not _is_private(_private[0]):
        _private[:] = [Path(tempfile.mkdtemp(prefix="binderbox-", dir=tmp))]
    return _private[0]


def _is_private(path: Path) -> bool:
    try:
        info = path.lstat()
    except OSError:
        return False
    mine = info.st_uid == os.getuid() and not info.st_mode & 0o022
    return stat.S_ISDIR(info.st_mode) and mine


def base_sandbox(prefixes: Iterable[Path], content: Path | None) -> Sandbox:
    box = Sandbox(cwd=HOME)
    etc = _etc_dir()
    box.file(etc / "passwd", "/etc/passwd").file(etc / "group", "/etc/group")
    for path in prefixes:
        box.ro_bind(path)
    if content is not None:
        box.bind(content, HOME)
    else:
        box.tmpfs(HOME)
    return box.setenv(session_environment())


def env_interpreter_prefixes(env_path: Path) -> list[Path]:
    """The interpreter directories a built environment needs bound read-only.

    They come from ``build.json``, which the host wrote after the build, never
    from files build code could have changed (``pyvenv.cfg``): what is named
    here is shown inside the sandbox.  FileNotFoundError when ``env_path`` is
    not a built environment.
    """
    info = env_path / META / "build.json"
    if not info.is_file():
        raise FileNotFoundError(f"{env_path} is not a built environment (no {META}/build.json)")
    return [Path(p) for p in json.loads(info.read_text())["interpreter_prefixes"]]


def env_sandbox(env_path: Path, content: Path | None = None) -> Sandbox:
    """The session layout: env read-only at /srv/env, content writable at the home
    (``None``: a private empty home).  Raises FileNotFoundError like
    :func:`env_interpreter_prefixes`."""
    box = base_sandbox(env_interpreter_prefixes(env_path), content and content.resolve())
    return box.ro_bind(env_path.resolve(), ENV_PREFIX)


def run_in_env(
    env_path: Path,
    argv: Sequence[str],
    *,
    content: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 300,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside a built environment's session layout; output captured."""
    box = env_sandbox(env_path, content)
    if env:
        box.setenv(env)
    return subprocess.run(
        box.argv(argv), capture_output=True, text=True, timeout=timeout, check=False
    )


# -- postBuild's home changes -----------------------------------------------

_Entry = tuple[str, int, int, str]


def snapshot(root: Path) -> dict[str, _Entry]:
    """Relative path -> (type, size, mtime_ns, link target) of everything under ``root``."""
    entries: dict[str, _Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            kind = _kind(info.st_mode)
            target = str(path.readlink()) if kind == "l" else ""
            entries[str(path.relative_to(root))] = (kind, info.st_size, info.st_mtime_ns, target)
    return entries


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "l"
    if stat.S_ISDIR(mode):
        return "d"
    return "f" if stat.S_ISREG(mode) else "o"


def capture_overlay(root: Path, before: dict[str, _Entry], overlay: Path) -> tuple[int, list[str]]:
    """Copy what changed under ``root`` since ``before`` into ``overlay``.

    Returns the number of files/links copied and the deleted relative paths.
    """
    after = snapshot(root)
    changed = 0
    for rel, entry in sorted(after.items()):
        if (before.get(rel) == entry and entry[0] != "d") or entry[0] == "o":
            continue
        if entry[0] == "d":
            if rel not in before:
                (overlay / rel).mkdir(parents=True, exist_ok=True)
            continue
        target = overlay / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target, follow_symlinks=False)
        changed += 1
    deleted = sorted(rel for rel in before if rel not in after)
    return changed, deleted


def reset_meta(prefix: Path) -> Path:
    """Make ``prefix/.binderbox`` an empty real folder again; returns it.

    Build code (``setup.py``, ``postBuild``) can write anywhere in the
    environment, this folder included: anything it planted there (a symlink
    to a host path, a forged ``home-deleted.json``) must be gone before the
    host writes or later trusts what is in it.
    """
    meta = prefix / META
    if meta.is_symlink() or (meta.exists() and not meta.is_dir()):
        meta.unlink()
    elif meta.is_dir():
        shutil.rmtree(meta)  # never follows symlinks inside
    meta.mkdir()
    return meta


def apply_home_overlay(env_path: Path, home: Path) -> None:
    """Replay postBuild's home changes (if any) onto a session's copy of the content.

    Runs on the host: nothing is written or deleted outside ``home``, whatever
    links the session's copy of the repository holds.
    """
    meta = env_path / META
    if meta.is_symlink():
        return
    deleted = meta / "home-deleted.json"
    if deleted.is_file() and not deleted.is_symlink():
        for rel in json.loads(deleted.read_text()):
            path = _inside(home, str(rel))
            if path is None:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    overlay = meta / "home-overlay"
    if overlay.is_dir() and not overlay.is_symlink():
        _copy_overlay(overlay, home)


def _inside(home: Path, rel: str) -> Path | None:
    """``home/rel`` when it is a plain relative path whose folder stays in ``home``."""
    parts = Path(rel).parts
    if not parts or Path(rel).is_absolute() or ".." in parts:
        return None
    path = home / rel
    if not path.parent.resolve().is_relative_to(home.resolve()):
        return None
    return path


def _copy_overlay(overlay: Path, home: Path) -> None:
    """Copy files and links of ``overlay`` into ``home`` without following links in either."""
    for dirpath, dirnames, filenames in os.walk(overlay):
        folder = Path(dirpath).relative_to(overlay)
        for name in sorted(dirnames + filenames):
            source = Path(dirpath) / name
            target = _inside(home, str(folder / name))
            if target is None:
                continue
            if source.is_dir() and not source.is_symlink():
                if not target.is_dir() or target.is_symlink():
                    target.unlink(missing_ok=True)
                    target.mkdir()
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            target.unlink(missing_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
