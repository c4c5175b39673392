"""Public S3 buckets: ``s3://bucket/prefix`` -> every object under the prefix.

Objects are listed anonymously with ListObjectsV2 (``GET
<bucket URL>/?list-type=2&prefix=<prefix>/``, following
``NextContinuationToken``) and downloaded one by one to their key relative to
the prefix; no signing, so only public buckets work.  An ETag that is a plain
MD5 (not multipart) is checked.  Files are mirrored as they are (no
extraction: ``.nii.gz`` stays compressed).  With :attr:`S3Fetcher.endpoint`
set, path-style URLs ``<endpoint>/<bucket>/...`` are used (S3-compatible
stores, tests); by default ``https://<bucket>.s3.amazonaws.com``.
"""

from __future__ import annotations

import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from traitlets import Integer, Unicode

from ..requirement import DataEntry
from .base import DataFetcher, FetchContext, fail, run_blocking
from .http import download, read_document

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def parse_s3(src: str) -> tuple[str, str] | None:
    """``(bucket, prefix)`` of an ``s3://`` source, or ``None``."""
    match = re.match(r"^s3://([^/\s]+)/?(.*)$", src.strip(), re.IGNORECASE)
    return (match.group(1), match.group(2)) if match else None


class S3Fetcher(DataFetcher):
    """Objects under a prefix of a public S3 bucket (anonymous ListObjectsV2 + GET)."""

    kind = "s3"

    endpoint = Unicode(
        "",
        help="S3 endpoint for path-style requests (<endpoint>/<bucket>/<key>); empty: "
        "https://<bucket>.s3.amazonaws.com (virtual-hosted style).",
    ).tag(config=True)
    max_pages = Integer(100000, help="Most listing pages (of up to 1000 keys) read.").tag(
        config=True
    )

    def matches(self, entry: DataEntry) -> bool:
        """``s3://`` sources."""
        return parse_s3(entry.src) is not None

    def bucket_url(self, bucket: str) -> str:
        """The base URL of a bucket."""
        if self.endpoint:
            return f"{self.endpoint.rstrip('/')}/{urllib.parse.quote(bucket)}"
        return f"https://{bucket}.s3.amazonaws.com"

    async def fetch(self, entry: DataEntry, dest: Path, ctx: FetchContext) -> None:
        """Download every object under the prefix into ``dest``."""
        parsed = parse_s3(entry.src)
        assert parsed is not None
        bucket, prefix = parsed
        base = self.bucket_url(bucket)
        await run_blocking(ctx, lambda: self._fetch(base, prefix, entry, dest, ctx))

    def _fetch(
        self, base: str, prefix: str, entry: DataEntry, dest: Path, ctx: FetchContext
    ) -> None:
        folder = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        objects = list(self._list(base, folder, entry, ctx))
        if not objects and folder != prefix:
            # not a folder: maybe one object
            objects = [(k, s, e) for k, s, e in self._list(base, prefix, entry, ctx) if k == prefix]
            folder = prefix.rpartition("/")[0] + "/" if "/" in prefix else ""
        if not objects:
            raise fail(entry, entry.src, "the bucket has no objects under this prefix.")
        total = sum(size for _, size, _ in objects)
        if ctx.would_exceed(total):
            raise ctx.too_large(entry)
        for key, size, etag in objects:
            rel = key[len(folder) :]
            subdir, _, name = rel.rpartition("/")
            expect = {"md5": etag} if re.fullmatch(r"[0-9a-f]{32}", etag) else {}
            url = f"{base}/{urllib.parse.quote(key)}"
            download(
                url,
                dest,
                ctx,
                entry,
                name=name,
                subdir=subdir,
                expect=expect,
                size=size,
                extract=frozenset(),
            )

    def _list(
        self, base: str, prefix: str, entry: DataEntry, ctx: FetchContext
    ) -> Iterator[tuple[str, int, str]]:
        """``(key, size, etag)`` of the objects under ``prefix`` (folders skipped)."""
        token: str | None = None
        for _ in range(self.max_pages):
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            url = f"{base}/?{urllib.parse.urlencode(query)}"
            body, _ = read_document(url, ctx, entry)
            try:
                root = ET.fromstring(body)
            except ET.ParseError:
                raise fail(entry, url, "the bucket listing is not S3 XML.") from None
            ns = _NS if root.tag.startswith(_NS) else ""
            for item in root.iter(f"{ns}Contents"):
                key = item.findtext(f"{ns}Key") or ""
                size = int(item.findtext(f"{ns}Size") or 0)
                etag = (item.findtext(f"{ns}ETag") or "").strip('"').lower()
                if key and not key.endswith("/"):
                    yield key, size, etag
            truncated = (root.findtext(f"{ns}IsTruncated") or "").lower() == "true"
            token = root.findtext(f"{ns}NextContinuationToken")
            if not truncated or not token:
                return
        raise fail(entry, base, "the bucket listing does not end.")
