"""OSF projects: ``https://osf.io/<id>/`` -> the files of its OSF Storage.

The listing is read from ``<api_url>/v2/nodes/<id>/files/osfstorage/``
(JSON:API, paginated through ``links.next``); folders are listed through
``relationships.files.links.related.href`` recursively; each file is
downloaded from ``links.download`` into its ``materialized_path`` and checked
against ``extra.hashes`` (sha256 or md5).  ``remote_filepath`` (a path or a
list of paths inside the storage, files or folders) restricts the download to
those paths.  Zip and tar archives are extracted where they lie.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from traitlets import Integer, Unicode

from ..requirement import DataEntry
from .base import DataFetcher, FetchContext, fail, run_blocking
from .http import EXTRACT_ARCHIVES, download, read_json

_PROJECT = re.compile(r"^https?://(?:www\.)?osf\.io/([a-z0-9]{5,})/?(?:[?#].*)?$", re.IGNORECASE)


def project_id(src: str) -> str | None:
    """The OSF project (node) id of a project URL, or ``None``."""
    match = _PROJECT.match(src.strip())
    return match.group(1).lower() if match else None


def _wanted(entry: DataEntry) -> list[str]:
    value = entry.get("remote_filepath")
    values = value if isinstance(value, list) else [value] if value else []
    return [str(v).strip("/") for v in values if str(v).strip("/")]


class OsfFetcher(DataFetcher):
    """Files of an OSF project's OSF Storage, through the OSF API v2."""

    kind = "osf"

    api_url = Unicode(
        "https://api.osf.io", help="Base URL of the OSF API (listings under <api_url>/v2/nodes/)."
    ).tag(config=True)
    max_pages = Integer(
        10000, help="Most listing pages read for one project (guards against endless pagination)."
    ).tag(config=True)

    def matches(self, entry: DataEntry) -> bool:
        """``https://osf.io/<id>/`` project URLs."""
        return project_id(entry.src) is not None

    async def fetch(self, entry: DataEntry, dest: Path, ctx: FetchContext) -> None:
        """Download the project's files (or the ``remote_filepath`` ones) into ``dest``."""
        pid = project_id(entry.src)
        url = f"{self.api_url.rstrip('/')}/v2/nodes/{pid}/files/osfstorage/"
        await run_blocking(ctx, lambda: self._fetch(url, entry, dest, ctx))

    def _fetch(self, url: str, entry: DataEntry, dest: Path, ctx: FetchContext) -> None:
        wanted = _wanted(entry)
        found = 0
        for item in self._walk(url, entry, ctx, wanted):
            attrs = item["attributes"]
            path = str(attrs.get("materialized_path") or attrs.get("name") or "").strip("/")
            link = (item.get("links") or {}).get("download")
            if not link:
                raise fail(entry, url, f"OSF gives no download link for '{path}'.")
            hashes = (attrs.get("extra") or {}).get("hashes") or {}
            expect = {k: v for k, v in hashes.items() if k in ("sha256", "md5") and v}
            if "sha256" in expect:
                expect.pop("md5", None)
            subdir, _, name = path.rpartition("/")
            size = attrs.get("size") if isinstance(attrs.get("size"), int) else None
            download(
                link,
                dest,
                ctx,
                entry,
                name=name,
                subdir=subdir,
                expect=expect,
                size=size,
                extract=EXTRACT_ARCHIVES,
            )
            found += 1
        if not found:
            what = f"no file matching remote_filepath {wanted}" if wanted else "no files"
            raise fail(entry, url, f"the OSF project has {what}.")

    def _walk(
        self, url: str, entry: DataEntry, ctx: FetchContext, wanted: list[str]
    ) -> Iterator[dict[str, Any]]:
        """The file items under the listing ``url`` (following pages and folders)."""
        pages = 0
        next_url: str | None = url
        while next_url:
            pages += 1
            if pages > self.max_pages:
                raise fail(entry, url, "the OSF listing does not end.")
            page = read_json(next_url, ctx, entry)
            if not isinstance(page, dict) or not isinstance(page.get("data"), list):
                raise fail(entry, next_url, "the OSF answer is not a file listing.")
            for item in page["data"]:
                attrs = item.get("attributes") or {}
                path = str(attrs.get("materialized_path") or "").strip("/")
                if attrs.get("kind") == "folder":
                    if not wanted or any(_related(path, w) for w in wanted):
                        href = item["relationships"]["files"]["links"]["related"]["href"]
                        yield from self._walk(href, entry, ctx, wanted)
                elif not wanted or any(path == w or path.startswith(w + "/") for w in wanted):
                    yield item
            next_url = (page.get("links") or {}).get("next")


def _related(folder: str, wanted: str) -> bool:
    """Whether a folder may hold (or is inside) a wanted path."""
    return wanted.startswith(folder + "/") or folder == wanted or folder.startswith(wanted + "/")
