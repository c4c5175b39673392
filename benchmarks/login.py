"""Login-to-ready figures of a user with a persistent home of 10,000 files.

Run: .venv/bin/python benchmarks/login.py [--launches N] [--files N]
(a few minutes)

What it does, on this machine, with the real service (``binderbox serve`` with local
accounts: ``jupyterhub-nativeauthenticator``, optional login) and a real browser
(headless Chromium, tests/browser.py):

1. signs the user ``bench`` up on the hub's sign-up page, logs in, launches a
   repository once (its home is made, the content placed in ``~/<repo>``), stops it,
   and fills the home with ``--files`` small files (default 10,000) in 100 folders;
2. ``N`` times (default 5), in a fresh browser (no login cookie): opens the launch
   link, which sends the visitor to the login page; times from submitting the login
   form to the launch page sending the browser to the ready session (through the
   hub's login, the OAuth round trip back to binderbox, the launch page's event
   stream, the server's start in the persistent home).  The session is stopped
   between two, outside the timed part.

Prints p50/p95 of the login alone (to the launch page) and of login to ready.
benchmarks/relaunch.py measures relaunches without the login.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser import chromium  # noqa: E402
from playwright.async_api import Browser  # noqa: E402
from relaunch import fill, show  # noqa: E402
from repos import make_repo, notebook  # noqa: E402
from serve_helpers import ServeProcess, git_spec, running_serve  # noqa: E402

from binderbox.sessions.hubclient import HubClient  # noqa: E402
from binderbox.sessions.persistent import users_dir  # noqa: E402

USER, PASSWORD = "bench", "a long enough benchmark passphrase"
CONFIG = "\n".join(
    [
        "c.Logins.mode = 'optional'",
        "c.Logins.authenticator = 'native'",
        "c.Logins.open_signup = True",
    ]
)


async def sign_up(serve: ServeProcess, browser: Browser) -> None:
    page = await (await browser.new_context()).new_page()
    await page.goto(f"{serve.url}hub/signup")
    await page.fill("#username_input", USER)
    await page.fill("#password_input", PASSWORD)
    await page.fill("#password_confirmation_input", PASSWORD)
    await page.click("#signup_submit")
    await page.locator("text=signup was successful").wait_for(timeout=30_000)
    await page.context.close()


async def login_to_ready(serve: ServeProcess, browser: Browser, launch: str) -> tuple[float, float]:
    """Seconds from submitting the login form to the launch page (logged in), and to the
    session's URL."""
    page = await (await browser.new_context()).new_page()
    try:
        await page.goto(f"{serve.url}login?next={quote(launch, safe='')}")
        await page.wait_for_url(re.compile(r"/hub/login"), timeout=30_000)
        await page.fill("#username_input", USER)
        await page.fill("#password_input", PASSWORD)
        started = time.perf_counter()
        await page.click("#login_submit")
        await page.wait_for_url(re.compile(r"/v2/git/"), timeout=60_000, wait_until="commit")
        logged_in = time.perf_counter() - started
        await page.wait_for_url(
            re.compile(rf"/user/{USER}/[a-z0-9-]+/"), timeout=300_000, wait_until="commit"
        )
        return logged_in, time.perf_counter() - started
    finally:
        await page.context.close()


async def stop_all(hub: HubClient) -> None:
    """Stop and remove the user's servers; wait (bounded) until the hub has none."""
    for server in (await hub.get_user(USER)).get("servers") or {}:
        await hub.stop_server(USER, server, remove=True)
    for _ in range(300):  # 60 s at most (the default server is always listed, never used)
        servers = (await hub.get_user(USER, include_stopped=True)).get("servers") or {}
        if not [name for name in servers if name]:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the servers of {USER} did not stop")


async def main(launches: int, files: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bbx-login-") as tmp:
        Path(tmp).chmod(0o755)  # sandbox uids enter the data directory
        repo = make_repo(Path(tmp) / "repo", {"README.md": "# bench\n", "index.ipynb": notebook()})
        launch = f"/v2/git/{git_spec(repo)}"
        with running_serve(Path(tmp) / "serve", extra_config=CONFIG) as serve:
            hub = HubClient(serve.hub_api_url, serve.api_token)
            async with chromium() as browser:
                await sign_up(serve, browser)
                first = (await login_to_ready(serve, browser, launch))[1]
                print(f"first login and launch (builds the environment): {first:.2f} s", flush=True)
                await stop_all(hub)
                fill(users_dir(serve.data_dir) / USER, files)
                print(f"home of {USER}: {files} files besides the repository", flush=True)
                took = []
                for _ in range(launches):
                    took.append(await login_to_ready(serve, browser, launch))
                    await stop_all(hub)
                show("login to the launch page (hub login, OAuth)", [t[0] for t in took])
                show("login to ready (persistent home)", [t[1] for t in took])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=5)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(main(args.launches, args.files))
