"""The session contract: one typed description of a launch, shared by both sides of the hub.

The launcher (:class:`~binderbox.sessions.launcher.SessionLauncher`) builds a
:class:`LaunchOptions` and sends it to JupyterHub as the server's
``user_options`` (:meth:`LaunchOptions.to_user_options`); the spawner, inside
the hub, reads it back with :meth:`LaunchOptions.from_user_options`, which
checks every field.  Nothing else reads or writes ``user_options``, so the list
of fields exists once, here.

``user_options`` can come from anyone allowed to start a server through the
hub API, so reading them back is a validation, not a trust: every host path
must lie under one of the allowed roots and be a directory (use-locks: a
``*.use`` file in a ``locks/`` folder), names are plain, the start script is a
relative path.  A bad field raises :class:`BadOptions` with a plain message and
the HTTP status the hub should answer.

The fields:

``env_key``, ``env_path``, ``image``
    the built environment: its store key, and either its host directory, bound
    read-only at ``/srv/env`` (it was built *at* that path), or (image mode, a backend
    that runs images) its image in the registry, ``<registry>/<prefix>:<tag>``, which
    holds it at ``/srv/env``; exactly one of the two
``content_path``
    the repository content copied into the session's home (None: an empty home)
``start_script``
    the repository's ``start`` script, relative to the home, or None
``data_mounts``
    ``{name: host dir}``, shown read-only at ``~/data/<name>``
``hold_files``
    use-lock files (``locks/<key>.use`` of the store and the dataset cache)
    the session holds shared while it runs, so nothing it uses is evicted
``token``
    the launch token (``?token=`` links, ``JUPYTER_TOKEN``)
``binder``
    what the session is told about its repository: ``BINDER_*`` variables
``size``
    the name of the operator's size the session gets ('' = the default); the
    spawner maps it to limits from its own configuration, checking the user may
    have it (:mod:`binderbox.sessions.sizes`)
``home``
    the home policy (:mod:`binderbox.sessions.homes`): ``ephemeral`` (a fresh home
    made from the content, removed at the end) or ``persistent`` (the user's own
    home, kept; the content placed in a folder of it)
``content_folder``, ``content_version``
    persistent homes: the folder of the home the content goes to (a plain name,
    ``requirements``) and the version launched (the commit), which names the folder
    a newer version is offered in beside it
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the home policies a launch may ask for (:mod:`binderbox.sessions.homes`)
HOME_KINDS = ("ephemeral", "persistent")
#: a content folder or version: a plain name, no leading dot
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
#: an image reference: a registry host, a repository path, a tag and/or a digest
_IMAGE = re.compile(
    r"[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)+"
    r"(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(@sha256:[0-9a-f]{64})?"
)


class BadOptions(ValueError):
    """``user_options`` that do not describe a launch; ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class BinderInfo:
    """What a launch tells its session about the repository (the ``BINDER_*`` variables,
    and the same names in the ``ready`` event)."""

    repo_url: str = ""
    binder_ref_url: str = ""
    binder_launch_host: str = ""
    binder_request: str = ""
    binder_persistent_request: str = ""

    #: the environment variable each field becomes
    VARIABLES = {
        "repo_url": "BINDER_REPO_URL",
        "binder_ref_url": "BINDER_REF_URL",
        "binder_launch_host": "BINDER_LAUNCH_HOST",
        "binder_request": "BINDER_REQUEST",
        "binder_persistent_request": "BINDER_PERSISTENT_REQUEST",
    }

    def fields(self) -> dict[str, str]:
        """The fields by name."""
        return {name: str(getattr(self, name)) for name in self.VARIABLES}

    def environment(self) -> dict[str, str]:
        """``BINDER_*`` variables of the fields that are set."""
        return {
            var: value for name, var in self.VARIABLES.items() if (value := getattr(self, name))
        }


@dataclass(frozen=True)
class LaunchOptions:
    """One launch, as the session side needs it.  See the module docstring."""

    env_key: str
    env_path: Path | None
    content_path: Path | None = None
    start_script: str | None = None
    data_mounts: Mapping[str, Path] = field(default_factory=dict)
    hold_files: Sequence[Path] = ()
    token: str = ""
    binder: BinderInfo = field(default_factory=BinderInfo)
    size: str = ""
    home: str = "ephemeral"
    content_folder: str | None = None
    content_version: str = ""
    image: str = ""

    @property
    def env_dir(self) -> Path:
        """``env_path``, for a backend that mounts the environment's folder (BadOptions
        when the launch names an image instead)."""
        if self.env_path is None:
            raise BadOptions("this launch names an image, not an environment's folder")
        return self.env_path

    def to_user_options(self) -> dict[str, Any]:
        """The JSON the launcher sends as ``user_options``."""
        return {
            "env_key": self.env_key,
            "env_path": str(self.env_path) if self.env_path else None,
            "image": self.image or None,
            "content_path": str(self.content_path) if self.content_path else None,
            "start_script": self.start_script,
            "data_mounts": {name: str(path) for name, path in self.data_mounts.items()},
            "hold_files": [str(path) for path in self.hold_files],
            "token": self.token,
            "size": self.size,
            "home": self.home,
            "content_folder": self.content_folder,
            "content_version": self.content_version,
            **self.binder.fields(),
        }

    @classmethod
    def from_user_options(
        cls, raw: Mapping[str, Any], roots: Sequence[Path], on_this_host: bool = True
    ) -> LaunchOptions:
        """Read and check ``user_options``; host paths must lie under ``roots``.

        ``on_this_host=False``: the paths are on shared volumes the checking process does
        not mount (the Kubernetes backend's hub): each must be a normalised absolute
        path under a root, and is not looked at.  Raises :class:`BadOptions`."""
        if on_this_host:
            paths = _PathRules(tuple(root.resolve() for root in roots))
        else:
            paths = _PathRules(tuple(roots), on_this_host=False)
        content, image = raw.get("content_path"), _image(raw.get("image"))
        if image and raw.get("env_path"):
            raise BadOptions("user_options names both an env_path and an image")
        return cls(
            env_key=_text(raw, "env_key"),
            env_path=None if image else paths.directory(raw.get("env_path"), "env_path"),
            image=image,
            content_path=paths.directory(content, "content_path") if content else None,
            start_script=_start_script(raw.get("start_script")),
            data_mounts=_mounts(raw.get("data_mounts"), paths),
            hold_files=tuple(paths.use_lock(value) for value in _list(raw, "hold_files")),
            token=_text(raw, "token"),
            binder=BinderInfo(**{name: _text(raw, name) for name in BinderInfo.VARIABLES}),
            size=_text(raw, "size"),
            home=_home(raw.get("home")),
            content_folder=_plain(raw.get("content_folder"), "content_folder") or None,
            content_version=_plain(raw.get("content_version"), "content_version"),
        )


@dataclass(frozen=True)
class _PathRules:
    roots: tuple[Path, ...]
    on_this_host: bool = True

    def directory(self, value: object, what: str) -> Path:
        if not isinstance(value, str) or not value:
            raise BadOptions(f"user_options.{what} must be a host path")
        if self.on_this_host:
            path = Path(value).resolve()
        elif value.startswith("/") and os.path.normpath(value) == value.rstrip("/"):
            path = Path(value)
        else:
            raise BadOptions(f"user_options.{what} must be a normalised absolute path")
        if not any(path.is_relative_to(root) for root in self.roots):
            raise BadOptions(f"user_options.{what} is outside the allowed directories", 403)
        if self.on_this_host and not path.is_dir():
            raise BadOptions(f"user_options.{what} {path} is not a directory")
        return path

    def use_lock(self, value: object) -> Path:
        if not isinstance(value, str) or not value.endswith(".use"):
            raise BadOptions("user_options.hold_files must name *.use lock files")
        path = Path(value)
        folder = self.directory(str(path.parent), "hold_files")
        if folder.name != "locks":
            raise BadOptions("user_options.hold_files must lie in a locks/ folder")
        return folder / path.name


def _text(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name) or ""
    if not isinstance(value, str):
        raise BadOptions(f"user_options.{name} must be a string")
    return value


def _list(raw: Mapping[str, Any], name: str) -> list[object]:
    value = raw.get(name) or []
    if not isinstance(value, list):
        raise BadOptions(f"user_options.{name} must be a list")
    return value


def _start_script(value: object) -> str | None:
    if not value:
        return None
    if not isinstance(value, str) or value.startswith("/") or ".." in Path(value).parts:
        raise BadOptions("user_options.start_script must be a relative path")
    return value


def _mounts(value: object, paths: _PathRules) -> dict[str, Path]:
    if not value:
        return {}
    if not isinstance(value, dict):
        raise BadOptions("user_options.data_mounts must be an object")
    mounts: dict[str, Path] = {}
    for name, host in value.items():
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise BadOptions(f"bad data mount name {name!r}")
        mounts[name] = paths.directory(host, f"data_mounts.{name}")
    return mounts


def _image(value: object) -> str:
    """An image reference, ``host[:port]/path[:tag][@sha256:...]`` ('' if unset); which
    registry and repository are allowed is the spawner's to check."""
    if not value:
        return ""
    if not isinstance(value, str) or not _IMAGE.fullmatch(value):
        raise BadOptions("user_options.image must be an image reference (registry/name:tag)")
    return value


def _home(value: object) -> str:
    if not value:
        return "ephemeral"
    if value not in HOME_KINDS:
        raise BadOptions(f"user_options.home must be one of {', '.join(HOME_KINDS)}")
    return str(value)


def _plain(value: object, name: str) -> str:
    """A folder or version name: plain characters, no path, no leading dot ('' if unset)."""
    if not value:
        return ""
    if not isinstance(value, str) or not _PLAIN.fullmatch(value) or ".." in value:
        raise BadOptions(f"user_options.{name} must be a plain name")
    return value
