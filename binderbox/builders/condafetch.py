"""Conda package archives, downloaded by the service into a cache keyed by their hash.

The service downloads (it may reach channels a build sandbox's network cannot,
an operator's mirror on the host's network), checks every archive against
the hash its channel or lock file gives (sha256, else md5), and keeps it as
``<root>/<sha256>/<file name>``; an archive already there is not downloaded
again.  Build sandboxes only read these archives: rattler extracts and links
them inside the sandbox (``conda_link.py``), never on the host.

Each URL's host is checked against the destination policy first
(:meth:`ChannelRules.check_url <binderbox.builders.condasolve.ChannelRules.check_url>`),
and redirects are not followed to another place unchecked: every hop is
checked the same way, and every connection goes through the build's
:class:`~binderbox.builders.condaproxy.PolicyProxy`, which checks it again
where it connects (no DNS answer can change in between).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
import shutil
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from ..errors import CondaFetchError
from ..store.lru import KeyedFolders
from ..util.sizes import human

#: downloads at once
PARALLEL = 6
#: seconds without data before a download fails
TIMEOUT = 60.0
#: redirects followed (each checked)
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Archive:
    """One package to install: where it is published and its expected hashes."""

    url: str
    file_name: str
    channel: str
    sha256: str = ""
    md5: str = ""
    #: bytes, as the channel's repodata or the lock file says (0: not said)
    size: int = 0

    @property
    def name(self) -> str:
        """``name-version-build`` (for messages)."""
        return self.file_name.removesuffix(".conda").removesuffix(".tar.bz2")


#: checks a URL (raises a BuildError) before it is fetched
UrlCheck = Callable[[str], Coroutine[Any, Any, None]]


#: what a cache entry's path may be made of
_HEX64 = re.compile(r"^[0-9A-Fa-f]{64}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*\.(?:conda|tar\.bz2)$")


def package_cache(pkgs_dir: Path) -> KeyedFolders:
    """The downloaded archives (``<pkgs_dir>/archives/<sha256>/``) as the store's keyed
    folders (:mod:`binderbox.store.lru`), each with what rattler extracted from it
    (``<pkgs_dir>/pkgs/<name-version-build>`` and rattler's lock file beside it) unless
    another archive of that file name (from another channel) shares it."""
    archives, extracted = pkgs_dir / "archives", pkgs_dir / "pkgs"
    names: dict[str, list[str]] = {}
    for folder in archives.iterdir() if archives.is_dir() else []:
        for entry in folder.iterdir() if folder.is_dir() else []:
            names.setdefault(folder.name, []).append(entry.name)
    counts = Counter(name for found in names.values() for name in found)

    def extra(key: str) -> list[Path]:
        stems = [n.removesuffix(".conda").removesuffix(".tar.bz2") for n in names.get(key, [])]
        alone = [s for s, n in zip(stems, names.get(key, []), strict=True) if counts[n] == 1]
        return [path for s in alone for path in (extracted / s, extracted / f"{s}.lock")]

    return KeyedFolders(pkgs_dir, archives, extra=extra)


def cached_path(root: Path, archive: Archive) -> Path | None:
    """Where ``archive`` is (or goes) in the cache; None without a sha256."""
    if not archive.sha256:
        return None
    if not _HEX64.match(archive.sha256) or not _FILE_NAME.match(archive.file_name):
        raise CondaFetchError(
            f"The conda package {archive.file_name[:80]!r} has a malformed name or sha256."
        )
    return root / archive.sha256.lower() / archive.file_name


async def fetch_all(
    archives: Sequence[Archive],
    root: Path,
    check: UrlCheck,
    limit: int = 0,
    proxy: str = "",
    budget: int = 0,
) -> tuple[list[Path], int]:
    """Every archive's cached path, downloading what is missing; also how many were
    downloaded.  A failure is :class:`CondaFetchError` naming the package; so is an
    archive over ``limit`` bytes (0: none), the environment size limit, or over the size
    its channel gave.  What is missing may take ``budget`` bytes in all (0: no limit):
    checked against the sizes the channel gave before anything is downloaded, and
    counted while downloading.  Every connection goes through ``proxy`` (a URL) when
    given."""
    root.mkdir(parents=True, exist_ok=True)
    missing = [a for a in archives if not _cached(root, a)]
    declared = sum(a.size for a in missing)
    if budget and declared > budget:
        raise over_budget(declared, budget)
    gate = asyncio.Semaphore(PARALLEL)
    tally = _Tally(budget)

    async def one(archive: Archive) -> Path:
        path = cached_path(root, archive)
        if path is not None and path.is_file():
            return path
        async with gate:
            return await _download(archive, root, check, limit, proxy, tally)

    paths = await asyncio.gather(*(one(a) for a in archives))
    return list(paths), len(missing)


def _cached(root: Path, archive: Archive) -> bool:
    path = cached_path(root, archive)
    return path is not None and path.is_file()


def over_budget(size: int, budget: int) -> CondaFetchError:
    """The refusal of a build whose downloads would take ``size`` bytes."""
    return CondaFetchError(
        f"The conda packages of this environment need {human(size)} of downloads, more "
        f"than this server allows for one build ({human(budget)}, the setting "
        "CondaBuilder.download_limit).",
        hint="Ask for fewer or smaller packages, or ask the operator to raise the limit.",
        reason="conda_download_limit",
    )


class _Tally:
    """Bytes downloaded by one build, from every download thread, against its budget."""

    def __init__(self, budget: int) -> None:
        self.budget, self.total = budget, 0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.total += nbytes
            if self.budget and self.total > self.budget:
                raise over_budget(self.total, self.budget)


async def _download(
    archive: Archive, root: Path, check: UrlCheck, limit: int, proxy: str, tally: _Tally
) -> Path:
    tmp = root / f".download-{os.getpid()}-{id(archive)}"
    loop = asyncio.get_running_loop()
    try:
        opener = _opener(proxy)
        cap = min(x for x in (limit, archive.size) if x) if limit or archive.size else 0
        fetch = functools.partial(_get, archive.url, tmp, check, loop, cap, opener, tally)
        await asyncio.to_thread(fetch)
        sha256, md5 = await asyncio.to_thread(_hashes, tmp)
        if (archive.sha256 and sha256 != archive.sha256.lower()) or (
            archive.md5 and md5 != archive.md5.lower()
        ):
            raise CondaFetchError(
                f"The conda package {archive.name} does not match its published hash.",
                hint="The channel or mirror served a different file; try again later.",
                log_message=f"{archive.url}: sha256 {sha256}, md5 {md5}, expected "
                f"{archive.sha256 or '-'} / {archive.md5 or '-'}",
            )
        path = root / sha256 / archive.file_name
        path.parent.mkdir(exist_ok=True)
        tmp.replace(path)
        return path
    finally:
        tmp.unlink(missing_ok=True)


def _hashes(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _opener(proxy: str) -> urllib.request.OpenerDirector:
    """urllib without redirects, through ``proxy`` when given (else the environment's)."""
    proxies = urllib.request.ProxyHandler({"http": proxy, "https": proxy} if proxy else None)
    return urllib.request.build_opener(proxies, _NoRedirect)


def _get(
    url: str,
    target: Path,
    check: UrlCheck,
    loop: asyncio.AbstractEventLoop,
    limit: int,
    opener: urllib.request.OpenerDirector,
    tally: _Tally,
) -> None:
    """Download ``url`` to ``target`` (blocking), each redirect hop checked first, at most
    ``limit`` bytes (0: no limit)."""
    where = url
    for _hop in range(MAX_REDIRECTS + 1):
        asyncio.run_coroutine_threadsafe(check(where), loop).result()
        if urlsplit(where).scheme == "file":
            shutil.copyfile(unquote(urlsplit(where).path), target)
            return
        try:
            with opener.open(where, timeout=TIMEOUT) as response, target.open("wb") as out:
                _copy(response, out, limit, url, tally)
            return
        except urllib.error.HTTPError as err:
            location = err.headers.get("Location") if 300 <= err.code < 400 else None
            if not location:
                raise CondaFetchError(
                    f"Could not download the conda package {Path(url).name} (HTTP {err.code}).",
                    log_message=f"{url}: HTTP {err.code}",
                ) from None
            where = urljoin(where, location)
        except (OSError, urllib.error.URLError) as err:
            raise CondaFetchError(
                f"Could not download the conda package {Path(url).name}.",
                hint="The channel did not answer; try again later.",
                log_message=f"{url}: {err}",
            ) from None
    raise CondaFetchError(f"Too many redirects downloading {Path(url).name}.")


def _copy(source: Any, out: Any, limit: int, url: str, tally: _Tally) -> None:
    total = 0
    while chunk := source.read(1 << 20):
        total += len(chunk)
        tally.add(len(chunk))
        if limit and total > limit:
            raise CondaFetchError(
                f"The conda package {Path(url).name} is larger than its channel says or "
                "than this service's environment size limit.",
                reason="env_size",
            )
        out.write(chunk)
