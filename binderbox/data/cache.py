"""The dataset cache: each ``projectName`` folder fetched once, published atomically.

Layout under :attr:`DataCache.root`::

    datasets/<key>/data/        the published folder (what sessions mount read-only)
    datasets/<key>/meta.json    completion marker + metadata; its mtime = last use
    tmp/<key>.<random>/         fetches in progress (and trees being deleted)
    locks/<key>.lock            held (flock) by whoever fetches or deletes <key>
    locks/<key>.use             held shared by sessions using <key> (:meth:`DataCache.hold`)

The lock files of a key go with its folder (deleted by whoever deletes it,
or by a fetch that failed), so ``locks/`` only names published or busy keys.
Temporary trees, locks and deletion follow the environment store's rules
(:mod:`binderbox.store.files`, :mod:`binderbox.store.locks`).

The **key** of a folder is a hash of the normalised identities of all the
entries sharing its ``projectName`` (``src`` and every other key except the
label), plus the environment key when one of them is a Python code source.
A new commit that does not touch ``data_requirement.json`` therefore reuses
the folder; changing ``version`` (or any key) fetches it again.

Guarantees:

* **Atomic publish.**  Entries are fetched into ``tmp/<key>.<random>/data``;
  ``meta.json`` is written only after every fetcher succeeded, then the tree
  is renamed to ``datasets/<key>``.  A failure (HTTP error, truncated body,
  checksum, unsafe archive, size limit, timeout, code error) deletes the
  temporary tree: no cache entry, nothing half-written, the next ensure
  starts afresh.
* **One fetch per key.**  Concurrent :meth:`DataCache.ensure` calls in one
  process share one task (each caller gets all its events); across
  processes ``locks/<key>.lock`` serialises fetches, and whoever gets the
  lock second finds the folder published.
* **Limits.**  :attr:`DataCache.max_dataset_bytes` per folder, enforced while
  downloading; :attr:`DataCache.timeout` per folder; :attr:`DataCache.budget`
  for the whole cache, enforced by least-recently-used eviction
  (:meth:`DataCache.gc`, run after each publish) that skips folders being
  fetched, held by a session, or used less than :attr:`DataCache.min_idle`
  seconds ago.
* **Destinations.**  Downloads connect only where the destination policy
  lets them (:mod:`binderbox.data.fetchers.guard`): no private, loopback or
  link-local address, nor one of this machine's own networks, at any redirect
  hop, unless :attr:`DataCache.allow_private_hosts` (or ``Destinations.allowed``
  lists the network).  A refused dataset is a :class:`~binderbox.errors.DataError`
  ("Dataset 'x' is not allowed: <host> is on a private network.").

API used by the launch pipeline::

    folders = cache.folders(entries, env_key=key)  # grouped and keyed, once per launch
    async for event in cache.ensure(folders, env_path=env):
        ...                                  # binderbox.events.Fetching events
    mounts = cache.mounts(folders)           # {projectName: published folder}
    locks = cache.hold(folders)              # keep while the session runs

``folders`` raises :class:`~binderbox.errors.DataError` for a source no
fetcher handles, ``ensure`` when a fetch fails, ``hold`` when a folder was
evicted since ``ensure``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import hashlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Integer, List, Type, Unicode, default
from traitlets.config import LoggingConfigurable

from ..errors import DataError
from ..events import Event, Fetching
from ..runtime.destinations import Destinations
from ..store.broadcast import Broadcast
from ..store.files import delete_unused, new_temp, remove_temps, remove_tree, stale_temps
from ..store.locks import FileLock, try_lock
from ..store.lru import Entry, evict_lru
from ..util.sizes import tree_size
from .fetchers import DataFetcher, FetchContext, default_fetcher_classes
from .fetchers.base import human_bytes
from .fetchers.guard import Guard
from .requirement import DataEntry, group_by_project

#: bump to invalidate every cached dataset (layout or fetcher semantics changed)
CACHE_VERSION = "1"
_KEY = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class CachedDataset:
    """One published folder: its key, ``projectName``, size and last use (epoch)."""

    key: str
    project_name: str
    path: Path
    size: int
    last_used: float
    sources: tuple[str, ...]


@dataclass(frozen=True)
class DatasetFolder:
    """One ``projectName`` folder of a repository: its entries (in file order) and cache key.

    Made by :meth:`DataCache.folders`, so that a launch computes each key once
    for :meth:`DataCache.ensure`, :meth:`DataCache.mounts` and :meth:`DataCache.hold`.
    """

    name: str
    key: str
    entries: tuple[DataEntry, ...]


#: one fetch in progress, shared by every caller waiting for its key (all events kept)
_Job = Broadcast[Event, None]


class DataCache(LoggingConfigurable):
    """Fetches and caches the datasets of ``data_requirement.json``; see the module docstring."""

    root = Unicode(
        help="Directory holding the cached datasets. Defaults to $XDG_CACHE_HOME/binderbox/data."
    ).tag(config=True)

    @default("root")
    def _default_root(self) -> str:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return str(Path(base) / "binderbox" / "data")

    max_dataset_bytes = Integer(
        5 * 10**9,
        help="Largest size in bytes of one dataset folder (all entries sharing a projectName); "
        "a download passing it is stopped and fails.",
    ).tag(config=True)
    budget = Integer(
        20 * 10**9,
        help="Disk budget in bytes for all cached datasets; least-recently-used folders are "
        "evicted above it. 0 = unlimited.",
    ).tag(config=True)
    timeout = Float(
        3600.0, help="Seconds one dataset folder may take to fetch before it fails."
    ).tag(config=True)
    read_timeout = Float(
        60.0, help="Seconds a server may stay silent during a download before it fails."
    ).tag(config=True)
    min_idle = Float(
        600.0,
        help="Seconds after its last use during which eviction never removes a dataset "
        "(the time a session may need to start).",
    ).tag(config=True)
    poll_interval = Float(
        0.2, help="Seconds between checks of a dataset another process is fetching."
    ).tag(config=True)
    allow_private_hosts = Bool(
        False,
        help="Download datasets from hosts on private, loopback, link-local or other "
        "non-public networks, and follow redirects there. Off for a public service: a "
        "repository's data_requirement.json would make the service itself fetch from the "
        "operator's network (the hub API, metrics, the cloud metadata address) and mount "
        "the answer in the session. While off, every download and every redirect hop is "
        "checked at the address it connects to. Networks listed in Destinations.allowed "
        "are reachable either way. Separate from the repository providers' "
        "allow_private_hosts; 'binderbox data fetch', run by the operator, turns it on.",
    ).tag(config=True)
    fetcher_classes = List(
        Type(klass=DataFetcher),
        help="Fetcher classes asked in order; the first whose matches() is true fetches an "
        "entry. Default: code, git (refused), Zenodo, OSF, S3, Google Drive, http(s).",
    ).tag(config=True)

    @default("fetcher_classes")
    def _default_fetchers(self) -> builtins.list[type[DataFetcher]]:
        return default_fetcher_classes()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._jobs: dict[str, _Job] = {}
        self._fetchers: builtins.list[DataFetcher] | None = None
        self._made: set[Path] = set()

    # -- keys and paths ---------------------------------------------------

    @property
    def fetchers(self) -> builtins.list[DataFetcher]:
        """The fetcher instances (configured from this cache's config)."""
        if self._fetchers is None:
            self._fetchers = [cls(parent=self) for cls in self.fetcher_classes]
        return self._fetchers

    def guard(self) -> Guard:
        """Where downloads may connect: ``c.Destinations`` and :attr:`allow_private_hosts`."""
        return Guard(Destinations(parent=self), allow_private=self.allow_private_hosts)

    def fetcher_for(self, entry: DataEntry) -> DataFetcher:
        """The fetcher of ``entry`` or a :class:`DataError` naming the source."""
        for fetcher in self.fetchers:
            if fetcher.matches(entry):
                return fetcher
        raise DataError(
            f"Dataset {entry.describe()}: binderbox cannot fetch the source '{entry.src}'.",
            hint="Use an http(s) URL, a Zenodo DOI, an OSF project, s3://, a Google Drive link "
            "or Python code.",
            status_code=400,
            reason="data_unsupported",
        )

    def key_for(self, entries: Sequence[DataEntry], env_key: str | None = None) -> str:
        """The cache key of one ``projectName`` folder (see the module docstring)."""
        names = {e.project_name for e in entries}
        if len(names) != 1:
            raise ValueError(f"key_for needs the entries of one projectName, got {names}")
        code = any(self.fetcher_for(e).kind == "code" for e in entries)
        ident = {
            "v": CACHE_VERSION,
            "entries": sorted(e.identity_hash() for e in entries),
            "env": env_key if code else None,
        }
        text = json.dumps(ident, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def folders(
        self, entries: Sequence[DataEntry], env_key: str | None = None
    ) -> tuple[DatasetFolder, ...]:
        """``entries`` grouped by ``projectName`` (first appearance first), each keyed.

        ``env_key``: the repository's environment key (part of the key of a
        folder with a code source).  Raises :class:`DataError` for an entry no
        fetcher handles.
        """
        return tuple(
            DatasetFolder(name, self.key_for(group, env_key), tuple(group))
            for name, group in group_by_project(list(entries)).items()
        )

    def _dir(self, sub: str) -> Path:
        """``root/sub``, created on first use (not on every path lookup of a launch)."""
        path = Path(self.root) / sub
        if path not in self._made:
            path.mkdir(parents=True, exist_ok=True)
            self._made.add(path)
        return path

    def dataset_dir(self, key: str) -> Path:
        """``datasets/<key>``: the published tree (``data/`` + ``meta.json``)."""
        return self._dir("datasets") / key

    def _lock_path(self, key: str) -> Path:
        return self._dir("locks") / f"{key}.lock"

    def _use_path(self, key: str) -> Path:
        return self._dir("locks") / f"{key}.use"

    def published(self, key: str) -> bool:
        """Whether ``key`` is published (its completion marker exists)."""
        return (self.dataset_dir(key) / "meta.json").is_file()

    def mounts(self, folders: Sequence[DatasetFolder]) -> dict[str, Path]:
        """``projectName`` -> published folder, after :meth:`ensure`; marks them used."""
        result: dict[str, Path] = {}
        for folder in folders:
            if not self.published(folder.key):
                raise DataError(f"Dataset '{folder.name}' has not been fetched yet.")
            self._touch(folder.key)
            result[folder.name] = self.dataset_dir(folder.key) / "data"
        return result

    def hold(self, folders: Sequence[DatasetFolder]) -> list[FileLock]:
        """Shared use-locks that keep the folders from eviction; release them when done.

        Raises :class:`DataError` (holding nothing) if a folder is no longer
        published: evicted or removed since :meth:`ensure`.  Blocks briefly
        while a folder is being deleted.
        """
        locks: list[FileLock] = []
        for folder in folders:
            name, key = folder.name, folder.key
            lock = FileLock.acquire(self._use_path(key), shared=True)
            # a deletion may have run since ensure(), or have made us wait until it was done
            if not self.published(key):
                for held in [*locks, lock]:
                    held.release()
                self._forget_locks(key)  # the use-lock file we just made again
                raise DataError(
                    f"Dataset '{name}' was removed before the session could start.",
                    hint="Launch again: it will be fetched again.",
                    log_message=f"dataset {name} ({key}) evicted before the launch",
                    reason="data_evicted",
                )
            locks.append(lock)
        return locks

    def _forget_locks(self, key: str, lock: FileLock | None = None) -> None:
        """Delete ``key``'s lock files if it is not published and nobody uses them.

        ``lock``: the key's lock, if the caller holds it (else it is tried).
        """
        if lock is None:
            with try_lock(self._lock_path(key)) as free:
                if free is not None:
                    self._forget_locks(key, free)
            return
        if self.published(key):
            return
        with try_lock(self._use_path(key)) as use:
            if use is not None:
                use.unlink()
        lock.unlink()

    def _touch(self, key: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.dataset_dir(key) / "meta.json")

    # -- ensure -------------------------------------------------------------

    async def ensure(
        self, folders: Sequence[DatasetFolder], *, env_path: Path | None = None
    ) -> AsyncIterator[Event]:
        """Fetch whatever is not cached yet; yields :class:`Fetching` events.

        Raises :class:`DataError` for the first folder that fails (folders
        fetched before it stay cached).  ``env_path``: the repository's built
        environment (the one whose key made ``folders``), needed by code
        sources only.
        """
        for folder in folders:
            key, name = folder.key, folder.name
            if self.published(key):
                self._touch(key)
                yield Fetching(message=f"Dataset '{name}' is ready (cached).")
                continue
            job = self._jobs.get(key)
            if job is None:
                job = self._jobs[key] = _Job(stopped=_stopped(name))
                task = job.start(self._run(job, folder, env_path), name=f"binderbox data {key}")
                task.add_done_callback(functools.partial(self._end_job, key, job))
            async for event in job.follow():
                yield event
            await job.result()
            yield Fetching(message=f"Dataset '{name}' is ready.")

    def _end_job(self, key: str, job: _Job, _task: object = None) -> None:
        """When ``job``'s task is done, even if cancelled before it ran: forget it."""
        if self._jobs.get(key) is job:
            del self._jobs[key]

    async def _run(self, job: _Job, folder: DatasetFolder, env_path: Path | None) -> None:
        key, name = folder.key, folder.name
        try:
            lock_path = self._lock_path(key)
            lock = FileLock.try_acquire(lock_path)
            if lock is None:
                job.emit(Fetching(message=f"Dataset '{name}' is being fetched elsewhere; waiting."))
                lock = await FileLock.wait(lock_path, self.poll_interval)
            try:
                if not self.published(key):
                    await self._fetch_locked(job, folder, env_path)
            finally:
                self._forget_locks(key, lock)  # if the fetch failed: no folder to lock
                lock.release()
            await self._gc_quietly(key)
        except DataError as exc:
            self.log.warning("Dataset %s (%s) failed: %s", name, key, exc.log_message)
            raise
        except Exception as exc:
            self.log.error("Dataset %s (%s) crashed", name, key, exc_info=exc)
            raise DataError(
                f"Dataset '{name}' could not be fetched (internal error).",
                log_message=f"{type(exc).__name__}: {exc}",
            ) from exc

    async def _fetch_locked(self, job: _Job, folder: DatasetFolder, env_path: Path | None) -> None:
        """Fetch every entry of the folder into a temporary tree, then publish it."""
        name = folder.name
        tmp = await asyncio.to_thread(self._new_temp, folder.key)
        data = tmp / "data"
        loop = asyncio.get_running_loop()

        def emit(event: Fetching) -> None:
            loop.call_soon_threadsafe(job.emit, event)

        ctx = FetchContext(
            emit=emit,
            limit=self.max_dataset_bytes,
            deadline=time.monotonic() + self.timeout,
            project_name=name,
            env_path=env_path,
            read_timeout=self.read_timeout,
            timeout=self.timeout,
            guard=self.guard(),
        )
        try:
            for entry in folder.entries:
                ctx.report(f"Fetching dataset {entry.describe()} from {entry.src}", force=True)
                await self.fetcher_for(entry).fetch(entry, data, ctx)
            size = await asyncio.to_thread(self._publish, tmp, folder)
            ctx.report(f"Dataset '{name}' fetched: {human_bytes(size)}.", size, size, force=True)
        finally:
            ctx.cancel()
            await asyncio.to_thread(remove_tree, tmp)

    async def _gc_quietly(self, key: str) -> None:
        """Run :meth:`gc` after a publish; its failure must not fail the launch."""
        try:
            await asyncio.to_thread(self.gc, keep={key})
        except OSError as exc:
            self.log.warning("Dataset cache eviction failed: %s", exc)

    def _new_temp(self, key: str) -> Path:
        """A fresh ``tmp/<key>.<random>/data`` (stale ones of ``key`` removed: we hold its lock)."""
        for stale in remove_temps(self._dir("tmp"), key):
            self.log.info("Removed stale temporary tree %s", stale)
        tmp = new_temp(self._dir("tmp"), key)
        (tmp / "data").mkdir()
        return tmp

    def _publish(self, tmp: Path, folder: DatasetFolder) -> int:
        """Write the completion marker into ``tmp`` and rename it into place; its size."""
        size = tree_size(tmp / "data")
        meta = {
            "key": folder.key,
            "project_name": folder.name,
            "sources": [e.src for e in folder.entries],
            "entries": [e.identity() for e in folder.entries],
            "size": size,
            "created": time.time(),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        tmp.rename(self.dataset_dir(folder.key))
        return size

    async def aclose(self) -> None:
        """Cancel the fetches running in this process and wait for their cleanup."""
        jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*(job.ended() for job in jobs))

    # -- listing and removal ------------------------------------------------

    def list(self) -> builtins.list[CachedDataset]:
        """The published datasets, least recently used first."""
        found = []
        for path in self._dir("datasets").iterdir():
            meta_path = path / "meta.json"
            try:
                meta = json.loads(meta_path.read_text())
                last_used = meta_path.stat().st_mtime
            except (OSError, ValueError):
                continue
            found.append(
                CachedDataset(
                    key=path.name,
                    project_name=str(meta.get("project_name", "")),
                    path=path / "data",
                    size=int(meta.get("size", 0)),
                    last_used=last_used,
                    sources=tuple(meta.get("sources", ())),
                )
            )
        return sorted(found, key=lambda d: d.last_used)

    def remove(self, key_or_name: str) -> bool:
        """Delete the dataset with this key, or every dataset of this projectName.

        Returns whether something was deleted (folders being fetched or held
        by a session are skipped).  Blocking.
        """
        if _KEY.fullmatch(key_or_name) and self.dataset_dir(key_or_name).exists():
            return self._delete(key_or_name, min_idle=None)
        removed = False
        for item in self.list():
            if item.project_name == key_or_name:
                removed = self._delete(item.key, min_idle=None) or removed
        return removed

    def gc(self, keep: set[str] | frozenset[str] = frozenset()) -> builtins.list[str]:
        """Evict least-recently-used datasets while over :attr:`budget`; returns their keys.

        Also removes stale temporary trees (a fetch or deletion that died)
        and their lock files.  Blocking.
        """
        for key, stale, lock in stale_temps(self._dir("tmp"), self._lock_path, _KEY):
            self.log.info("Removing stale temporary tree %s", stale)
            remove_tree(stale)
            self._forget_locks(key, lock)
        if self.budget <= 0:
            return []
        items = {item.key: item for item in self.list()}
        entries = [Entry(item.key, item.size, item.last_used) for item in items.values()]

        def delete(entry: Entry) -> bool:
            return entry.key not in keep and self._delete(entry.key, min_idle=self.min_idle)

        removed = evict_lru(entries, self.budget, delete)
        for entry in removed:
            item = items[entry.key]
            self.log.info("Evicted dataset %s (%s)", item.project_name, human_bytes(item.size))
        return [entry.key for entry in removed]

    def _delete(self, key: str, *, min_idle: float | None) -> bool:
        """Delete ``key``'s folder and lock files if it is not fetched, held or recently used."""

        def claim() -> bool:  # both locks held
            with contextlib.suppress(OSError):
                last_used = (self.dataset_dir(key) / "meta.json").stat().st_mtime
                if min_idle is not None and time.time() - last_used < min_idle:
                    return False
            return True

        return delete_unused(
            self.dataset_dir(key),
            self._dir("tmp"),
            self._lock_path(key),
            self._use_path(key),
            claim=claim,
        )


def _stopped(name: str) -> Callable[[], DataError]:
    """The error every caller waiting for the fetch of ``name`` gets if it is cancelled."""
    return lambda: DataError(f"Fetching dataset '{name}' was stopped.", reason="data_cancelled")
