"""Headless Chromium for tests: Debian's /usr/bin/chromium driven by Playwright.

Playwright never downloads a browser here; it starts the system Chromium
with the flags a closed network needs (no background connections).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, ViewportSize, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path("/tmp/binderbox-shots")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: the page size of a person's screen, for pages whose screenshots a person looks at
SCREEN: ViewportSize = {"width": 1280, "height": 860}
#: skips what it marks where this machine has no Chromium
NEEDS_CHROMIUM = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")


def served_browser_marks(timeout: int) -> list[pytest.MarkDecorator]:
    """The ``pytestmark`` of a module of browser tests against ``binderbox serve``: slow,
    ``timeout`` seconds a test, skipped without Chromium (its Chromium: ``browser`` in
    tests/conftest.py)."""
    return [pytest.mark.slow, pytest.mark.timeout(timeout), NEEDS_CHROMIUM]


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium, closed afterwards."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


def shot(name: str) -> str:
    """Where to save screenshot ``name`` for a person to look at."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    return str(SHOTS / name)
