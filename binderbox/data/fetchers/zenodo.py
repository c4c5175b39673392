"""Zenodo records: a DOI (``10.5281/zenodo.6941758``, bare or as a ``doi.org`` URL)
or a record URL (``https://zenodo.org/records/<id>``) -> every file of the record.

The record is read from ``<api_url>/records/<id>``; each ``files[]`` item
gives ``key`` (the file name), ``size``, ``checksum`` (``"md5:<hex>"``) and
``links.self`` (the download URL).  Files are written under their key and
checked against their MD5; archives among them are extracted in place.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from traitlets import Unicode

from ..requirement import DataEntry
from .base import DataFetcher, FetchContext, fail, run_blocking
from .http import EXTRACT_ARCHIVES, download, read_json

_DOI = re.compile(r"^(?:doi:|https?://(?:dx\.)?doi\.org/)?10\.5281/zenodo\.(\d+)/?$", re.IGNORECASE)
_RECORD = re.compile(r"^https?://(?:www\.)?zenodo\.org/records?/(\d+)/?(?:[?#].*)?$", re.IGNORECASE)


def record_id(src: str) -> str | None:
    """The Zenodo record id a source names, or ``None``."""
    match = _DOI.match(src.strip()) or _RECORD.match(src.strip())
    return match.group(1) if match else None


class ZenodoFetcher(DataFetcher):
    """All files of a Zenodo record, through Zenodo's REST API."""

    kind = "zenodo"

    api_url = Unicode(
        "https://zenodo.org/api",
        help="Base URL of the Zenodo REST API (records are read from <api_url>/records/<id>).",
    ).tag(config=True)

    def matches(self, entry: DataEntry) -> bool:
        """Zenodo DOIs (bare or doi.org URLs) and zenodo.org record URLs."""
        return record_id(entry.src) is not None

    async def fetch(self, entry: DataEntry, dest: Path, ctx: FetchContext) -> None:
        """Download every file of the record into ``dest``."""
        rid = record_id(entry.src)
        assert rid is not None
        url = f"{self.api_url.rstrip('/')}/records/{rid}"
        await run_blocking(ctx, lambda: self._fetch(url, entry, dest, ctx))

    def _fetch(self, url: str, entry: DataEntry, dest: Path, ctx: FetchContext) -> None:
        record = read_json(url, ctx, entry)
        files = record.get("files") if isinstance(record, dict) else None
        if not isinstance(files, list):
            raise fail(entry, url, "the Zenodo record lists no files (is it restricted?).")
        if not files:
            raise fail(entry, url, "the Zenodo record has no files.")
        for item in files:
            link, key, size, expect = _file_info(item)
            if not link or not key:
                raise fail(entry, url, "the Zenodo record has a file without a download link.")
            download(
                link, dest, ctx, entry, name=key, expect=expect, size=size, extract=EXTRACT_ARCHIVES
            )


def _file_info(item: Any) -> tuple[str, str, int | None, dict[str, str]]:
    if not isinstance(item, dict):
        return "", "", None, {}
    links = item.get("links") or {}
    link = links.get("self") or links.get("download") or links.get("content") or ""
    key = item.get("key") or item.get("filename") or ""
    size = item.get("size") if isinstance(item.get("size"), int) else None
    expect: dict[str, str] = {}
    checksum = item.get("checksum")
    if isinstance(checksum, str) and checksum:
        algo, _, digest = checksum.partition(":")
        if digest and algo.lower() in ("md5", "sha256"):
            expect[algo.lower()] = digest
        elif not digest and re.fullmatch(r"[0-9a-fA-F]{32}", algo):
            expect["md5"] = algo
    return str(link), str(key), size, expect
