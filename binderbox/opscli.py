"""``binderbox status`` and ``binderbox sessions``: an operator's view of a running
service on this machine (found through its data directory: :mod:`binderbox.operator`)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from traitlets import Bool

from .cli import Command, _size
from .errors import BinderboxError
from .operator import (
    ServiceState,
    answers,
    find_session,
    hub_client,
    list_sessions,
    read_token,
    require_service,
)
from .sessions import SessionLauncher
from .sessions.hubclient import HubAPIError


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _session_lines(sessions: list[dict[str, Any]]) -> list[str]:
    """One line a session: name, state, age, memory, repository@ref."""
    lines = []
    for s in sessions:
        memory = "-" if s["memory_bytes"] is None else _size(s["memory_bytes"])
        state = "ready" if s["ready"] else "starting"
        where = s["repo_url"] + (f"@{s['ref'][:12]}" if s["ref"] else "")
        lines.append(f"  {s['name']}  {state}  {_age(s['age_seconds'])}  {memory}  {where}")
    return lines


class StatusCommand(Command):
    """binderbox status [--json]: the service, its hub and proxy, sessions, storage."""

    name = "binderbox-status"
    description = """Show whether the service runs on this data directory (and its URL),
    whether its hub and proxy answer, its sessions (repository, age, memory) and the
    sizes of the environment store and the dataset cache."""
    examples = "binderbox status\nbinderbox status --json --data-dir /var/lib/binderbox"

    json_output = Bool(False, help="Print one JSON object (for scripts).").tag(config=True)
    flags = {"json": ({"StatusCommand": {"json_output": True}}, "Print JSON.")}

    def run(self) -> int:
        if self.extra_args:
            print("usage: binderbox status [--json] [--data-dir DIR]", file=sys.stderr)
            return 2
        state = require_service(self.data_path)
        report = asyncio.run(self._report(state))
        if self.json_output:
            print(json.dumps(report, indent=2))
        else:
            self._print(report)
        return 0

    async def _report(self, state: ServiceState) -> dict[str, Any]:
        data = self.data_path
        hub = hub_client(data, state)
        report: dict[str, Any] = {
            "service": {"running": True, "url": state.url, "pid": state.pid, "hub": state.hub},
            "data_dir": str(data),
        }
        try:
            version = (await hub.info()).get("version", "")
            report["hub"] = {"up": True, "version": version}
            report["sessions"] = await list_sessions(hub)
        except (HubAPIError, OSError) as err:
            report["hub"] = {"up": False, "error": str(err)}
            report["sessions"] = []
        finally:
            hub.close()
        report["proxy"] = {"up": await self._proxy_up(state)}
        envs = self.make_store().list()
        datasets = self.make_data_cache().list()
        report["store"] = {"environments": len(envs), "bytes": sum(e.size for e in envs)}
        report["datasets"] = {"datasets": len(datasets), "bytes": sum(d.size for d in datasets)}
        return report

    async def _proxy_up(self, state: ServiceState) -> bool:
        if not state.proxy_api_url:  # an external hub's proxy: its public URL answers
            return await answers(state.url)
        token = read_token(self.data_path, "proxy_token")
        return await answers(state.proxy_api_url.rstrip("/") + "/routes", token)

    @staticmethod
    def _print(report: dict[str, Any]) -> None:
        service, hub = report["service"], report["hub"]
        print(f"service: running at {service['url']} (pid {service['pid']})")
        print(f"data directory: {report['data_dir']}")
        hub_text = f"up (JupyterHub {hub['version']})" if hub["up"] else "DOWN"
        print(f"hub: {hub_text}")
        print(f"proxy: {'up' if report['proxy']['up'] else 'DOWN'}")
        sessions = report["sessions"]
        print(f"sessions: {len(sessions)}")
        for line in _session_lines(sessions):
            print(line)
        store, datasets = report["store"], report["datasets"]
        print(f"store: {store['environments']} environments, {_size(store['bytes'])}")
        print(f"datasets: {datasets['datasets']} datasets, {_size(datasets['bytes'])}")


class SessionsCommand(Command):
    """binderbox sessions list [--json] | stop NAME... | stop --all"""

    name = "binderbox-sessions"
    description = """List or stop the running service's sessions.  NAME is the hub user
    (an anonymous session) or user/server (a logged-in user's).  Stopping an anonymous
    session deletes its temporary user and home; a logged-in user's session is stopped
    and their persistent home kept."""
    examples = (
        "binderbox sessions list\nbinderbox sessions stop alice/abc123\n"
        "binderbox sessions stop --all"
    )

    json_output = Bool(False, help="list: print JSON (for scripts).").tag(config=True)
    stop_all = Bool(False, help="stop: every session.").tag(config=True)
    flags = {
        "json": ({"SessionsCommand": {"json_output": True}}, "Print JSON."),
        "all": ({"SessionsCommand": {"stop_all": True}}, "Stop every session."),
    }
    usage_line = "usage: binderbox sessions list [--json] | stop NAME... | stop --all"

    def run(self) -> int:
        action, *names = self.extra_args or ["list"]
        if action == "list" and not names and not self.stop_all:
            return asyncio.run(self._list())
        if action == "stop" and bool(names) != self.stop_all:
            return asyncio.run(self._stop(names))
        print(self.usage_line, file=sys.stderr)
        return 2

    async def _list(self) -> int:
        hub = hub_client(self.data_path, require_service(self.data_path))
        try:
            sessions = await list_sessions(hub)
        except (HubAPIError, OSError) as err:
            raise BinderboxError(f"The hub does not answer: {err}") from err
        finally:
            hub.close()
        if self.json_output:
            print(json.dumps(sessions, indent=2))
        else:
            for line in _session_lines(sessions):
                print(line.strip())
            print(f"{len(sessions)} sessions", file=sys.stderr)
        return 0

    async def _stop(self, names: list[str]) -> int:
        data = self.data_path
        state = require_service(data)
        hub = hub_client(data, state)
        launcher = SessionLauncher(parent=self, hub_api_url=state.hub_api_url, api_token=hub.token)
        try:
            if self.stop_all:
                left = await launcher.stop_all()
                if left:
                    raise BinderboxError(f"{left} sessions could not be stopped.")
                print("stopped every session", file=sys.stderr)
                return 0
            failed = 0
            for name in names:
                try:
                    user, server = await find_session(hub, name)
                except BinderboxError as exc:
                    print(f"error: {exc.user_message}", file=sys.stderr)
                    failed += 1
                    continue
                await launcher.end_session(user, server)
                print(f"stopped {name}", file=sys.stderr)
            return 1 if failed else 0
        finally:
            hub.close()
            await launcher.aclose()
