"""The layout of a built environment, shared by builds, sessions, tests and the CLI.

An environment is a directory built *at* ``/srv/env`` inside a sandbox;
binderbox's own files are in its ``.binderbox/`` folder (:data:`META`):
``requirements.txt`` (what was installed), ``build.json`` (interpreter,
builder, the system layers it needs: :func:`show_layers`), and postBuild's home
changes (``home-overlay/`` and ``home-deleted.json``), which
:func:`~binderbox.builders.overlay.apply_home_overlay` replays onto each
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
from typing import Any

from ..environments import ENV_PREFIX, HOME
from .leases import RUN_ROOT
from .sandbox import SYSTEM_DIRS, UID, USER, Sandbox, passwd_file, require_overlays

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
    """Where the sandboxes' passwd/group files are: readable by every sandbox uid when
    binderbox runs as root (:data:`~binderbox.runtime.leases.RUN_ROOT`), else private."""
    if os.geteuid() == 0:
        return passwd_file(RUN_ROOT / "etc")
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


#: (host path, path inside) of a read-only mount
Mount = tuple[Path, Path]


def base_sandbox(
    mounts: Iterable[Mount], content: Path | None, layers: Sequence[Path] = ()
) -> Sandbox:
    """The layout every sandbox shares: passwd, the system ``layers``, the interpreter
    ``mounts``, the home (``content`` writable there, or an empty private folder), the
    session variables."""
    box = Sandbox(cwd=HOME)
    etc = _etc_dir()
    show_layers(box, layers)
    box.file(etc / "passwd", "/etc/passwd").file(etc / "group", "/etc/group")
    for host, inside in mounts:
        box.ro_bind(host, inside)
    if content is not None:
        box.bind(content, HOME)
    else:
        box.tmpfs(HOME)
    return box.setenv(session_environment())


def show_layers(box: Sandbox, layers: Sequence[Path]) -> Sandbox:
    """Show system layers over the host's ``/usr`` and ``/etc``, the last on top.

    A layer is a read-only tree holding ``usr/`` and ``etc/`` (an apt.txt layer:
    :mod:`binderbox.builders.aptlayer`), written by the service and writable by no
    sandbox uid.  ``usr/`` is merged with the host's ``/usr`` (an overlay the sandbox
    mounts itself: :func:`~binderbox.runtime.sandbox.require_overlays`); each entry of
    ``etc/`` is shown at ``/etc/<name>``, merged with the host's folder where sandboxes
    see that one anyway (``/etc/alternatives``), else on its own; links stay links.
    """
    if not layers:
        return box
    require_overlays()
    usr = [layer / "usr" for layer in layers if (layer / "usr").is_dir()]
    if usr:
        box.ro_overlay(["/usr", *usr], "/usr")
    etcs = [layer / "etc" for layer in layers if (layer / "etc").is_dir()]
    for name in sorted({entry.name for etc in etcs for entry in etc.iterdir()}):
        found = [etc / name for etc in etcs if os.path.lexists(etc / name)]
        inside, top = f"/etc/{name}", found[-1]
        if top.is_symlink():
            box.symlink(top.readlink(), inside)
        elif not top.is_dir():
            box.file(top, inside)
        else:
            dirs = [path for path in found if path.is_dir() and not path.is_symlink()]
            host = [Path(inside)] if inside in SYSTEM_DIRS and Path(inside).is_dir() else []
            sources = [*host, *dirs]
            if len(sources) > 1:
                box.ro_overlay(sources, inside)
            else:
                box.ro_bind(top, inside)
    return box


def _build_record(env_path: Path) -> dict[str, Any]:
    info = env_path / META / "build.json"
    if not info.is_file():
        raise FileNotFoundError(f"{env_path} is not a built environment (no {META}/build.json)")
    record: dict[str, Any] = json.loads(info.read_text())
    return record


def env_layers(env_path: Path) -> list[Path]:
    """The system layers a built environment is shown with (``build.json``'s
    ``system_layers``, host paths written by the service after the build)."""
    return [Path(path) for path in _build_record(env_path).get("system_layers", [])]


def layer_use_lock(tree: Path) -> Path:
    """The use-lock file of a system layer's ``tree`` (``<root>/<key>/tree`` ->
    ``<root>/locks/<key>.use``): held shared while a session shows the layer, so the
    layer is never evicted meanwhile (:mod:`binderbox.store.lru`)."""
    return tree.parent.parent / "locks" / f"{tree.parent.name}.use"


def env_interpreter_mounts(env_path: Path) -> list[Mount]:
    """The interpreter directories a built environment needs, as read-only mounts.

    They come from ``build.json``, which the host wrote after the build, never
    from files build code could have changed (``pyvenv.cfg``): what is named
    here is shown inside the sandbox.  ``interpreter_mounts`` pairs a readable
    copy of an interpreter (:mod:`binderbox.runtime.provision`) with the path the
    environment knows it by.  FileNotFoundError when ``env_path`` is not a
    built environment.
    """
    record = _build_record(env_path)
    if "interpreter_mounts" in record:
        return [(Path(host), Path(inside)) for host, inside in record["interpreter_mounts"]]
    return [(Path(p), Path(p)) for p in record["interpreter_prefixes"]]


def env_sandbox(env_path: Path, content: Path | None = None) -> Sandbox:
    """The session layout: env read-only at /srv/env, content writable at the home
    (``None``: a private empty home).  Raises FileNotFoundError like
    :func:`env_interpreter_mounts`."""
    mounts, layers = env_interpreter_mounts(env_path), env_layers(env_path)
    box = base_sandbox(mounts, content and content.resolve(), layers)
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
