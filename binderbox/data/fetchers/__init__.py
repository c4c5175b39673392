"""Data fetchers: one class per kind of source (see :mod:`.base` for the contract).

:func:`default_fetcher_classes` lists them in the order they are asked:
specific sources (Python code, git, Zenodo, OSF, S3, Google Drive) before the
generic ``http(s)`` fetcher.  Implementations are imported lazily so that
:mod:`.base` can be imported alone (the archive helpers need it).
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import DataError
from ..requirement import DataEntry
from .base import DataFetcher, FetchContext


class GitFetcher(DataFetcher):
    """Git/datalad repositories (``*.git`` URLs): refused with a clear message, for now."""

    kind = "git"

    def matches(self, entry: DataEntry) -> bool:
        """URLs or paths ending in ``.git`` (also ``git@`` and ``datalad`` sources)."""
        src = entry.src.strip().rstrip("/")
        return bool(re.search(r"\.git$", src) or src.startswith(("git@", "git://", "datalad ")))

    async def fetch(self, entry: DataEntry, dest: Path, ctx: FetchContext) -> None:
        """Always a :class:`DataError`: not supported yet."""
        raise DataError(
            f"Dataset {entry.describe()}: git/datalad sources ({entry.src}) are not supported yet.",
            hint="Publish the files as an archive (a release asset, Zenodo, OSF) or an S3 prefix.",
            status_code=400,
            reason="data_unsupported",
        )


def default_fetcher_classes() -> list[type[DataFetcher]]:
    """The built-in fetchers, most specific first."""
    from .code import CodeFetcher
    from .gdrive import GoogleDriveFetcher
    from .http import HttpFetcher
    from .osf import OsfFetcher
    from .s3 import S3Fetcher
    from .zenodo import ZenodoFetcher

    return [
        CodeFetcher,
        GitFetcher,
        ZenodoFetcher,
        OsfFetcher,
        S3Fetcher,
        GoogleDriveFetcher,
        HttpFetcher,
    ]


__all__ = ["DataFetcher", "FetchContext", "GitFetcher", "default_fetcher_classes"]
