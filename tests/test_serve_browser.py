"""A person's launch, in a real (headless) Chromium, against ``binderbox serve``.

The browser opens a ``/v2/git/...`` launch link on the proxy's public port,
follows the build log, lands in JupyterLab served from the sandboxed session,
opens the repository's notebook, runs its cell and sees the output.
Screenshots go to /tmp/binderbox-shots/ for a person to look at.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import SCREEN, served_browser_marks, shot
from playwright.async_api import Browser, Page, expect
from repos import make_repo, notebook
from serve_helpers import ServeProcess, git_spec, running_serve

pytestmark = served_browser_marks(600)
module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with running_serve(tmp_path_factory.mktemp("serve-browser")) as served:
        yield served


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repos") / "lab-demo"
    return make_repo(
        root,
        {
            "requirements.txt": "six==1.16.0\n",
            "index.ipynb": notebook("import six\nprint(6 * 7, six.__version__)"),
            "README.md": "# lab demo\n",
        },
    )


def session_logs(serve: ServeProcess) -> str:
    """The sessions' own logs (the Jupyter servers' output), for a failure report."""
    logs = sorted((serve.data_dir / "logs" / "sessions").glob("*"))
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}" for log in logs)


async def kernel_idle(page: Page, serve: ServeProcess) -> None:
    """Wait until the notebook's kernel is connected and idle.

    Seen once in a full suite run: the kernel's status stayed "Unknown" (its
    websocket did not come back after connecting).  The sessions' logs are
    printed, and the page is reloaded once, as a person would.
    """
    status = page.locator("#jp-main-statusbar")
    try:
        await expect(status).to_contain_text("Idle", timeout=60_000)
    except AssertionError:
        print("kernel not idle after 60 s; reloading once. Session logs:\n" + session_logs(serve))
        await page.screenshot(path=shot("serve-lab-kernel-unknown.png"))
        await page.reload()
        await expect(status).to_contain_text("Idle", timeout=90_000)


async def run_first_cell(page: Page, serve: ServeProcess) -> None:
    """Put the cursor in the notebook's first cell and press Shift+Enter, once the
    kernel is ready (as JupyterLab's own UI tests wait: the debugger button turns on
    when the kernel has answered its info request)."""
    cell = page.locator(".jp-Notebook .jp-CodeCell").first
    await expect(cell).to_be_visible(timeout=60_000)
    await expect(cell.locator(".cm-content")).to_contain_text("print(6 * 7", timeout=30_000)
    await kernel_idle(page, serve)
    await expect(page.locator(".jp-DebuggerBugButton").first).to_have_attribute(
        "aria-disabled", "false", timeout=90_000
    )
    await cell.locator(".cm-content").click()
    await page.keyboard.press("Shift+Enter")


@module_loop
async def test_launch_link_opens_jupyterlab_and_runs_the_notebook(
    serve: ServeProcess, repo: Path, browser: Browser
) -> None:
    page = await browser.new_page(viewport=SCREEN)
    link = f"{serve.url}v2/git/{git_spec(repo)}?urlpath=lab/tree/index.ipynb"
    await page.goto(link)
    log = page.locator("#log")
    # a first launch builds: the log shows the installation as it happens
    await expect(log).to_contain_text("six==1.16.0", timeout=300_000)
    await page.screenshot(path=shot("serve-launch-log.png"), full_page=True)

    await page.wait_for_url(re.compile(r"/user/[a-z0-9-]+/lab/tree/index\.ipynb"), timeout=300_000)
    assert re.match(rf"{re.escape(serve.url)}user/[a-z0-9-]*lab-demo-[a-z0-9]+/lab", page.url)
    await expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=60_000)
    await expect(page.locator(".jp-Notebook")).to_be_visible(timeout=60_000)
    await run_first_cell(page, serve)
    output = page.locator(".jp-Notebook .jp-CodeCell").first.locator(".jp-OutputArea-output")
    try:
        await expect(output).to_contain_text("42 1.16.0", timeout=60_000)
    except AssertionError:
        await page.screenshot(path=shot("serve-lab-failure.png"))
        raise
    await page.screenshot(path=shot("serve-lab-output.png"))

    # the file browser shows the repository's files
    listing = page.locator(".jp-DirListing-content")
    await expect(listing).to_contain_text("README.md")
    await expect(listing).to_contain_text("requirements.txt")
    await page.close()


@module_loop
async def test_legacy_labpath_link_opens_the_notebook(
    serve: ServeProcess, repo: Path, browser: Browser
) -> None:
    page = await browser.new_page(viewport=SCREEN)
    await page.goto(f"{serve.url}v2/git/{git_spec(repo)}?labpath=index.ipynb")
    await page.wait_for_url(re.compile(r"/user/[a-z0-9-]+/lab/tree/index\.ipynb"), timeout=120_000)
    await expect(page.locator(".jp-Notebook")).to_be_visible(timeout=60_000)
    await run_first_cell(page, serve)
    output = page.locator(".jp-Notebook .jp-CodeCell").first.locator(".jp-OutputArea-output")
    await expect(output).to_contain_text("42", timeout=60_000)
    await page.close()
