"""What ``binderbox status`` and ``binderbox sessions`` see of a running service.

``binderbox serve`` writes ``<data>/service.json`` (its URL, the hub's and the
proxy's API, its pid) once its root URL answers, and removes it when it stops;
it holds ``<data>/service.lock`` all along.  A service runs on a data directory
when that lock is held (a shared probe fails) and the file is there.  The hub
API is called with the service's own token (``<data>/hub/service_token``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import BinderboxError
from .runtime.leases import lock_held
from .sessions.hubclient import HubAPIError, HubClient
from .sessions.identity import TEMPORARY_GROUP

STATE_FILE = "service.json"


@dataclass
class ServiceState:
    """Where a running service is: written by ``serve``, read by the operator's commands."""

    url: str
    hub_api_url: str
    proxy_api_url: str
    pid: int
    hub: str  # 'managed' or 'external'

    def write(self, data: Path) -> None:
        """Write ``<data>/service.json`` whole (a reader never sees half of it)."""
        fd, tmp = tempfile.mkstemp(prefix=STATE_FILE, dir=data)  # a name of its own
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(asdict(self)) + "\n")
        Path(tmp).replace(data / STATE_FILE)

    @staticmethod
    def remove(data: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            (data / STATE_FILE).unlink()


def running_service(data: Path) -> ServiceState | None:
    """The service running on ``data``, or None (not running, or not started yet)."""
    if not lock_held(data / "service.lock"):  # held exclusively by a running serve
        return None
    path = data / STATE_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd) as state:
            _trusted(path, os.fstat(state.fileno()))
            return ServiceState(**json.loads(state.read()))
    except (OSError, ValueError, TypeError):
        return None


def _trusted(path: Path, info: os.stat_result) -> None:
    """Refuse a state file another user could have written: its URLs get the
    service's token."""
    if info.st_uid not in (0, os.geteuid()) or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BinderboxError(
            f"{path} is writable by other users than the service's: not used.",
            hint="Only the user the service runs as (or root) may write its data directory.",
        )


def require_service(data: Path) -> ServiceState:
    """:func:`running_service`, else a plain error naming the data directory."""
    found = running_service(data)
    if found is None:
        raise BinderboxError(
            f"No binderbox service is running with the data directory {data}.",
            hint="Start one with `binderbox serve`, or name its directory with --data-dir.",
        )
    return found


async def answers(url: str, token: str = "", seconds: float = 5) -> bool:
    """Whether ``url`` answers (any HTTP status below 500; redirects not followed)."""
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError

    headers = {"Authorization": f"token {token}"} if token else {}
    http = AsyncHTTPClient(force_instance=True)
    try:
        await http.fetch(url, headers=headers, request_timeout=seconds, follow_redirects=False)
    except HTTPClientError as err:
        return err.code < 500
    except OSError:
        return False
    finally:
        http.close()
    return True


async def wait_answering(url: str, within: float) -> bool:
    """:func:`answers` tried every 0.1 s for at most ``within`` seconds."""
    for _ in range(max(1, int(within / 0.1))):
        if await answers(url, seconds=2):
            return True
        await asyncio.sleep(0.1)
    return False


def hub_client(data: Path, state: ServiceState) -> HubClient:
    """A client of the service's hub, with the service's token."""
    return HubClient(state.hub_api_url, read_token(data, "service_token"), timeout=10)


def read_token(data: Path, name: str) -> str:
    """The service's token ``<data>/hub/<name>``; a plain error when it cannot be read
    (another user's service: its files are its own)."""
    path = data / "hub" / name
    try:
        return path.read_text().strip()
    except OSError as err:
        raise BinderboxError(
            f"Cannot read the service's token {path}: {err.strerror}.",
            hint="Run this command as the user the service runs as.",
        ) from err


# -- sessions -------------------------------------------------------------------


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (0 when gone or unreadable)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    total, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(parents.get(current, []))
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def _started_epoch(stamp: str | None) -> float | None:
    """Seconds since the epoch of the hub's ISO time (``2026-12-03T12:00:00.1Z``)."""
    if not stamp:
        return None
    from datetime import datetime

    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return None


def session_name(user: str, server: str) -> str:
    """How the commands name a session: ``user`` (its default server) or ``user/server``."""
    return f"{user}/{server}" if server else user


async def list_sessions(hub: HubClient) -> list[dict[str, Any]]:
    """Every running or starting session: ``name``, ``user``, ``server``, ``ready``,
    ``repo_url``, ``ref``, ``age_seconds``, ``memory_bytes`` (its processes'; None when
    they are not on this machine), ``temporary``."""
    now = time.time()
    sessions = []
    for user in await hub.active_users():
        for server, info in sorted((user.get("servers") or {}).items()):
            options = info.get("user_options") or {}
            started = _started_epoch(info.get("started"))
            pid = (info.get("state") or {}).get("pid")
            sessions.append(
                {
                    "name": session_name(user["name"], server),
                    "user": user["name"],
                    "server": server,
                    "ready": bool(info.get("ready")),
                    "repo_url": options.get("repo_url", ""),
                    "ref": options.get("content_version", ""),
                    "binder_request": options.get("binder_request", ""),
                    "age_seconds": None if started is None else max(0, int(now - started)),
                    "memory_bytes": _tree_rss(int(pid)) if pid else None,
                    "temporary": TEMPORARY_GROUP in (user.get("groups") or ()),
                }
            )
    return sessions


async def find_session(hub: HubClient, name: str) -> tuple[dict[str, Any], str]:
    """The hub user model and server name of the session ``name`` (``user`` or
    ``user/server``); a plain error when there is no such session."""
    user, _, server = name.partition("/")
    try:
        model = await hub.get_user(user) if user else None
    except HubAPIError as err:
        if err.status != 404:
            raise BinderboxError(f"The hub refused: {err.message}") from err
        model = None
    if model is None or server not in (model.get("servers") or {}):
        raise BinderboxError(f"No session named {name!r}.", hint="See `binderbox sessions list`.")
    return model, server
