"""Relaunch figures of a logged-in user with a persistent home of 10,000 files.

Run: .venv/bin/python benchmarks/relaunch.py [--launches N] [--files N]
(under a minute)

What it does, on this machine, with a real hub, proxy and sandboxed servers (the
session environment of the tests, tests/session_helpers.py):

1. starts a hub on a fresh data directory and makes the hub user ``bench`` (as a
   login would), launches one repository for it once (its home is made, the
   content placed in ``~/<repo>``), stops it, and fills the home with ``--files``
   small files (default 10,000) in 100 folders, owned by the home's uid;
2. relaunches the same repository ``N`` times (default 10), each timed from the
   launch request to ``ready`` (the server answers through the proxy); the
   session is stopped between two, outside the timed part;
3. the same with a new commit each time (the new version is placed beside the
   user's folder: a copy of the repository, never of the home);
4. for reference, ``N`` anonymous launches (a temporary user, an ephemeral home
   made from the content).

Prints p50/p95 of each.  The placement copies only the repository's content, so
the home's size should not show in the figures; compare with ``--files 0``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from figures import percentile  # noqa: E402
from session_helpers import launch, launcher_for, make_hub, resolved, session_env  # noqa: E402

from binderbox.hub.children import free_port  # noqa: E402
from binderbox.runtime.ownership import give_tree  # noqa: E402
from binderbox.sessions import SessionLauncher, SessionRequest  # noqa: E402
from binderbox.sessions.hubclient import HubClient  # noqa: E402
from binderbox.sessions.identity import Visitor  # noqa: E402
from binderbox.sessions.persistent import users_dir  # noqa: E402


def fill(home: Path, files: int) -> None:
    """``files`` small files in 100 folders of ``home``, owned like the home."""
    for i in range(files):
        folder = home / "work" / f"d{i % 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.txt").write_text(f"file {i}\n")
    if files and os.geteuid() == 0:
        give_tree(home / "work", home.stat().st_uid)


async def timed(launcher: SessionLauncher, req: SessionRequest, user: str | None) -> float:
    started = time.perf_counter()
    _, ready = await launch(launcher, req)
    took = time.perf_counter() - started
    if user is not None:
        for session in await launcher.sessions_of(Visitor(name=user)):
            await launcher.stop_session(Visitor(name=user), session["name"])
    else:
        name = ready.url.rstrip("/").rsplit("/", 1)[-1]
        await launcher.hub.stop_server(name)
        await launcher.hub.delete_user(name)
    return took


def show(label: str, values: list[float]) -> None:
    p50, p95 = percentile(values, 50), percentile(values, 95)
    print(f"{label:<44} p50 {p50:6.2f} s   p95 {p95:6.2f} s   (n={len(values)})", flush=True)


async def main(launches: int, files: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bbx-relaunch-") as tmp:
        Path(tmp).chmod(0o755)  # sandbox uids enter the data directory
        data, content = Path(tmp) / "data", Path(tmp) / "repo"
        content.mkdir()
        (content / "README.md").write_text("# bench\n")
        (content / "index.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4}')
        ports = {"public": free_port(), "hub": free_port(), "api": free_port(), "web": 0}
        hub = make_hub(data, ports)
        hub.spawner_config = {**hub.spawner_config, "orphan_timeout": 0}
        await hub.start()
        client = HubClient(hub.hub_api_url, hub.api_token)
        try:
            await client.create_user("bench")
            launcher = launcher_for(hub, named_server_limit=0)

            def request(version: str, user: str | None) -> SessionRequest:
                what = replace(resolved("bench"), version=version)
                return SessionRequest(
                    "env", session_env(), content, what, visitor=Visitor(name=user)
                )

            await timed(launcher, request("0" * 40, "bench"), "bench")
            fill(users_dir(data) / "bench", files)
            print(f"home of bench: {files} files besides the repository", flush=True)
            same = [
                await timed(launcher, request("0" * 40, "bench"), "bench") for _ in range(launches)
            ]
            show("relaunch, same commit (nothing placed)", same)
            newer = [
                await timed(launcher, request(f"{i + 1:040d}", "bench"), "bench")
                for i in range(launches)
            ]
            show("relaunch, new commit (placed beside)", newer)
            anonymous = [
                await timed(launcher, request("0" * 40, None), None) for _ in range(launches)
            ]
            show("anonymous launch (ephemeral home)", anonymous)
        finally:
            for user in await client.request("GET", "users"):
                for server in user.get("servers") or {}:
                    await client.stop_server(user["name"], server, remove=True)
                await client.delete_user(user["name"])
            await hub.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=10)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(main(args.launches, args.files))
