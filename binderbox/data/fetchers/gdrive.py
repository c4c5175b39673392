"""Public Google Drive files: ``https://drive.google.com/uc?id=<id>``,
``.../file/d/<id>/view``, ``.../open?id=<id>``.

The file is requested from ``<base_url>/uc?export=download&id=<id>``.  Large
files first answer with an HTML page ("can't scan this file for viruses")
holding either a ``download-form`` (action URL + hidden inputs, among them
``confirm``) or a link with a ``confirm=`` token: the fetcher follows it once.
The file name comes from ``Content-Disposition``; archives are extracted.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

from traitlets import Unicode

from ..requirement import DataEntry
from .base import DataFetcher, FetchContext, fail, run_blocking
from .http import MAX_DOCUMENT, download, entry_checksums, open_url

_PATTERNS = (
    re.compile(r"^https?://drive\.google\.com/(?:uc|open)\?(?:.*&)?id=([\w-]+)", re.IGNORECASE),
    re.compile(r"^https?://drive\.google\.com/file/d/([\w-]+)", re.IGNORECASE),
)


def file_id(src: str) -> str | None:
    """The Drive file id of a sharing link, or ``None``."""
    for pattern in _PATTERNS:
        match = pattern.match(src.strip())
        if match:
            return match.group(1)
    return None


class _FormParser(HTMLParser):
    """Finds the download form (action + hidden inputs) of the confirmation page."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.inputs: dict[str, str] = {}
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form" and (values.get("id") == "download-form" or self.action is None):
            self.action = values.get("action", "")
            self._in_form = True
        elif tag == "input" and self._in_form and values.get("name"):
            self.inputs[values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def confirm_url(page: str, base: str, fid: str) -> str | None:
    """The URL the confirmation page leads to, or ``None`` if it is not one."""
    parser = _FormParser()
    parser.feed(page)
    if parser.action and "confirm" in parser.inputs:
        action = urllib.parse.urljoin(base + "/", html.unescape(parser.action))
        return f"{action}?{urllib.parse.urlencode(parser.inputs)}"
    link = re.search(r'href="(/uc\?export=download[^"]*confirm=[^"]*)"', page)
    if link:
        return urllib.parse.urljoin(base + "/", html.unescape(link.group(1)))
    token = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if token:
        return f"{base}/uc?export=download&confirm={token.group(1)}&id={fid}"
    return None


class GoogleDriveFetcher(DataFetcher):
    """One publicly shared Google Drive file (with the large-file confirmation step)."""

    kind = "gdrive"

    base_url = Unicode(
        "https://drive.google.com", help="Base URL of Google Drive (downloads via <base_url>/uc)."
    ).tag(config=True)

    def matches(self, entry: DataEntry) -> bool:
        """Google Drive sharing links."""
        return file_id(entry.src) is not None

    async def fetch(self, entry: DataEntry, dest: Path, ctx: FetchContext) -> None:
        """Download the file (and extract it if it is an archive)."""
        fid = file_id(entry.src)
        assert fid is not None
        await run_blocking(ctx, lambda: self._fetch(fid, entry, dest, ctx))

    def _fetch(self, fid: str, entry: DataEntry, dest: Path, ctx: FetchContext) -> None:
        base = self.base_url.rstrip("/")
        url = f"{base}/uc?export=download&id={urllib.parse.quote(fid)}"
        for _attempt in range(2):
            response = open_url(url, ctx, entry)
            if "text/html" not in response.headers.get("Content-Type", ""):
                download(url, dest, ctx, entry, expect=entry_checksums(entry), response=response)
                return
            with response:
                page = response.read(MAX_DOCUMENT).decode("utf-8", "replace")
            next_url = confirm_url(page, base, fid)
            if next_url is None:
                break
            url = next_url
        raise fail(
            entry,
            entry.src,
            "Google Drive answered with a web page instead of the file.",
            hint="Share the file with 'Anyone with the link' (or its download quota is used up).",
        )
