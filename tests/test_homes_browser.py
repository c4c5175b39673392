"""A logged-in visitor's sessions on the home page, in a real browser, through
``binderbox serve``: log in (GitHub STAND-IN on loopback, see
tests/test_logins_github_native.py), launch two repositories, find both on the home
page, open one, stop the other; a file written in a session is there in a session of
another repository after ``binderbox serve`` restarted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from browser import served_browser_marks, shot
from kernels import run_code
from playwright.async_api import Browser, expect
from repos import make_repo, notebook
from serve_helpers import ServeProcess, git_spec
from test_logins_github_native import (  # noqa: F401 -- the fixtures of that module
    github,
    github_login,
    github_serve,
    github_served,
)
from tornado.httpclient import AsyncHTTPClient

from binderbox.sessions.hubclient import HubClient

pytestmark = served_browser_marks(900)
module_loop = pytest.mark.asyncio(loop_scope="module")


@module_loop
async def test_the_home_page_lists_a_visitors_sessions_to_open_and_stop(
    github_serve: ServeProcess,  # noqa: F811 -- the imported fixture
    browser: Browser,
    tmp_path: Path,
) -> None:
    serve = github_serve
    repos = [
        make_repo(tmp_path / name, {"README.md": f"# {name}\n", "index.ipynb": notebook()})
        for name in ("alpha", "beta")
    ]
    page = await github_login(serve, browser, "vera")
    await page.wait_for_url(serve.url, timeout=60_000)
    await expect(page.locator("#my-sessions")).to_contain_text("No session running")
    for repo in repos:
        await page.goto(f"{serve.url}v2/git/{git_spec(repo)}?labpath=index.ipynb")
        # the repository is a folder of the persistent home: the path is inside it
        opened = rf"/user/vera/{repo.name}-[a-z0-9-]+/lab/tree/{repo.name}/index\.ipynb"
        await page.wait_for_url(re.compile(opened), timeout=300_000)

    await page.goto(serve.url)
    sessions = page.locator("#my-sessions li.session")
    await expect(sessions).to_have_count(2, timeout=30_000)
    await page.screenshot(path=shot("home-sessions.png"), full_page=True)
    beta = sessions.filter(has_text="beta")
    await beta.locator("button.stop").click()
    await page.wait_for_url(serve.url, timeout=60_000)
    await expect(sessions).to_have_count(1, timeout=30_000)
    await expect(sessions.first).to_contain_text("alpha")
    hub = HubClient(serve.hub_api_url, serve.api_token)
    servers = (await hub.get_user("vera"))["servers"]
    assert [name.split("-")[0] for name in servers] == ["alpha"]  # its slot is free

    # the JSON of the same list, with the visitor's cookie
    cookies = await page.context.cookies()
    header = "; ".join(f"{c['name']}={c['value']}" for c in cookies)
    listed = await AsyncHTTPClient().fetch(
        f"{serve.url}api/sessions", headers={"Cookie": header}, raise_error=False
    )
    assert listed.code == 200, listed.body
    assert [s["name"].split("-")[0] for s in json.loads(listed.body)["sessions"]] == ["alpha"]
    anonymous = await AsyncHTTPClient().fetch(f"{serve.url}api/sessions", raise_error=False)
    assert anonymous.code == 403

    await sessions.first.locator("a.open").click()
    await page.wait_for_url(
        re.compile(r"/user/vera/alpha-[a-z0-9-]+/lab/tree/alpha"), timeout=60_000
    )
    await page.context.close()


@module_loop
async def test_a_file_written_in_a_session_is_there_after_a_service_restart(
    github_serve: ServeProcess,  # noqa: F811 -- the imported fixture
    browser: Browser,
    tmp_path: Path,
) -> None:
    """vera writes a file in a session of one repository; ``binderbox serve`` stops
    (its sessions with it) and starts again; she logs in again and finds the file in a
    session of another repository."""
    serve = github_serve
    hub = HubClient(serve.hub_api_url, serve.api_token)

    async def session_of(repo: Path) -> tuple[str, str]:
        """Log in, launch ``repo``; the session's URL and a token for it."""
        page = await github_login(serve, browser, "vera")
        await page.wait_for_url(serve.url, timeout=60_000)
        await page.goto(f"{serve.url}v2/git/{git_spec(repo)}")
        await page.wait_for_url(re.compile(rf"/user/vera/{repo.name}-[a-z0-9-]+/"), timeout=300_000)
        server = urlsplit(page.url).path.split("/")[3]
        await page.context.close()
        scope = f"access:servers!server=vera/{server}"
        return f"{serve.url}user/vera/{server}/", await hub.create_token("vera", [scope], "test")

    gamma, delta = (
        make_repo(tmp_path / name, {"README.md": f"# {name}\n"}) for name in ("gamma", "delta")
    )
    url, token = await session_of(gamma)
    write = "import pathlib; (pathlib.Path.home() / 'kept.txt').write_text('still here')"
    await run_code(url, token, write)

    serve.stop()
    serve.start()
    url, token = await session_of(delta)
    read = "import pathlib; print((pathlib.Path.home() / 'kept.txt').read_text())"
    assert (await run_code(url, token, read)).strip() == "still here"
