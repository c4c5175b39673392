"""The environment store: content-addressed, atomic, shared between processes.

Layout under :attr:`Store.root`::

    envs/<key>/            published environments (what a session mounts)
    tmp/<key>.<random>/    builds in progress (and trees being deleted)
    logs/<key>.log         the log of the last build of <key>
    locks/<key>.lock       held (flock) by whoever builds or deletes <key>
    locks/<key>.use        held shared by users of <key>; see Store.hold
    locks/<key>.finish     held while <key> is finished (see finishing.py)
    store.sqlite           metadata (see metadata.py)

Guarantees:

* **Atomic publish.**  A build runs in ``tmp/<key>.<random>``; only after the
  build function finished successfully is it renamed to ``envs/<key>`` and
  then its metadata row inserted.  An exception or cancellation deletes the
  temporary tree; after a crash (SIGKILL) the tree stays behind until the
  next build of that key or :meth:`Store.gc` finds its lock free and deletes
  it.  Nothing under ``envs/`` is ever partial.  (A crash between the rename
  and the insert leaves a complete tree without a row: the next build of the
  key adopts it, :meth:`Store.gc` deletes it.)
* **A cap on builds at once.**  At most :attr:`Store.concurrent_builds` builds run
  in this process; further builds wait in order (:mod:`binderbox.store.queue`).
  A build shared by several callers takes one slot; :meth:`SharedBuild.queued`
  tells its callers how many builds are ahead while it waits, and a waiting build
  whose callers all left (:meth:`SharedBuild.leave`) gives up its place.
* **One build per key.**  In one process, concurrent :meth:`Store.build`
  calls share one asyncio task.  Across processes, ``locks/<key>.lock`` is
  held for the whole build; a process that finds it held tails the other
  process's log until the lock is free, then returns the published
  environment or raises the failure the other process recorded.  If the
  other process died without a verdict, the waiter builds the key itself.
* **Size** is the number of bytes that deleting the tree would free: every
  inode is counted once (``st_blocks``), and only when all its hard links
  are inside the tree.  Files hard-linked from uv's cache therefore count
  nothing: evicting the environment does not free them.
* **Eviction** (:meth:`Store.gc`) removes least-recently-used environments
  until the total size is under :attr:`Store.budget`, skipping environments
  being built, held by a user (:meth:`Store.hold`), or used (``get``) less
  than :attr:`Store.min_idle` seconds ago -- the grace that covers the time
  between ``get()`` and the session starting.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

from traitlets import Float, Integer, Unicode, default, observe
from traitlets.config import LoggingConfigurable

from ..errors import BinderboxError
from ..util.sizes import human
from .files import (
    LogTail,
    delete_unused,
    disk_usage,
    new_log,
    new_temp,
    remove_temps,
    remove_tree,
    stale_temps,
)
from .locks import FileLock, try_lock
from .lru import Entry, evict_lru
from .metadata import BuildState, EnvRecord, Metadata
from .queue import BuildQueue
from .shared import BuildBroadcast, BuildJob, Env, SharedBuild, stopped

__all__ = ["BuildFn", "Env", "SharedBuild", "Store"]

#: given an empty directory, build into it; yields log lines; raises
#: :class:`~binderbox.errors.BinderboxError` on failure
BuildFn = Callable[[Path], AsyncIterator[str]]

_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: log lines kept in memory per running build (for followers)
_BUFFER_LINES = 10_000


#: the longest build output line kept (a line without end is cut)
MAX_LINE = 10_000


class Store(LoggingConfigurable):
    """Content-addressed store of built environments.  See the module docstring."""

    root = Unicode(
        help="""Directory holding the environments, their logs and metadata.

        Defaults to ``$XDG_DATA_HOME/binderbox/envs-store``.
        """
    ).tag(config=True)

    @default("root")
    def _default_root(self) -> str:
        data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return str(Path(data) / "binderbox" / "envs-store")

    max_log_bytes = Integer(
        20 << 20,
        help="""Bytes of a build's output kept in its log and shown to its visitors; past
        them the build goes on and one line says the rest is not shown (a build printing
        without end must not fill the disk nor flood the event streams).""",
    ).tag(config=True)
    budget = Integer(
        0,
        help="""Disk budget in bytes for all environments; 0 = unlimited.

        ``gc()`` evicts least-recently-used environments until the total is
        under it.  Sizes count bytes freed by deleting an environment (files
        hard-linked from uv's cache count nothing).
        """,
    ).tag(config=True)

    min_idle = Float(
        600.0,
        help="""Seconds after its last use (``get()``) during which gc never evicts an
        environment, whatever the budget: the time a session may need to start
        after its launch looked the environment up.
        """,
    ).tag(config=True)

    log_max_age = Float(
        7 * 24 * 3600.0,
        help="Seconds to keep the log and failure record of a key that has no published "
        "environment (a failed build) before gc deletes them.",
    ).tag(config=True)

    join_tail = Integer(
        100,
        help="How many recent log lines a caller joining a running build receives first.",
    ).tag(config=True)

    poll_interval = Float(
        0.1,
        help="Seconds between checks of another process's build (its log and its lock).",
    ).tag(config=True)

    concurrent_builds = Integer(
        2,
        help="""Builds this service runs at once (0 = no cap); further builds wait in a
        queue, in order, and their visitors get waiting events saying how many builds are
        ahead.  A build shared by several visitors takes one slot; one whose visitors all
        left the queue is dropped.  Each build may use SandboxHost.build_cpu_limit cores
        and build_mem_limit memory: two fit a small server and leave room for sessions.""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        #: the builds running and waiting in this process (made first: config sets its size)
        self.queue = BuildQueue(0)
        super().__init__(**kwargs)
        self.queue.slots = self.concurrent_builds
        self._runs: dict[str, BuildJob] = {}
        self._metadata: Metadata | None = None

    @observe("concurrent_builds")
    def _slots_changed(self, change: Any) -> None:
        self.queue.slots = int(change["new"])

    # -- paths ----------------------------------------------------------

    @property
    def _root(self) -> Path:
        return Path(self.root)

    @property
    def metadata(self) -> Metadata:
        """The metadata database (created, with the directories, on first use)."""
        return self._ensure_root()

    def _ensure_root(self) -> Metadata:
        if self._metadata is None:
            for sub in ("envs", "tmp", "logs", "locks"):
                (self._root / sub).mkdir(parents=True, exist_ok=True)
            self._metadata = Metadata(self._root / "store.sqlite")
        return self._metadata

    def env_path(self, key: str) -> Path:
        """Where the environment of ``key`` is (or will be) published."""
        return self._root / "envs" / _checked(key)

    def log_path(self, key: str) -> Path:
        """The log of the last build of ``key``."""
        return self._root / "logs" / f"{_checked(key)}.log"

    def _lock_path(self, key: str) -> Path:
        return self._root / "locks" / f"{key}.lock"

    def _use_path(self, key: str) -> Path:
        return self._root / "locks" / f"{key}.use"

    def finish_lock_path(self, key: str) -> Path:
        """Held while ``key``'s environment is finished (see finishing.py)."""
        return self._root / "locks" / f"{_checked(key)}.finish"

    # -- lookups --------------------------------------------------------

    def get(self, key: str, *, touch: bool = True) -> Env | None:
        """The published environment of ``key``, or ``None``.

        Marks it used now (which delays its eviction, see :attr:`min_idle`)
        unless ``touch`` is false: looking at an environment is not using it.
        """
        used = self._use(key)
        if used is None:
            return None
        lock, record = used
        with lock:
            if not touch:
                return self._env(record)
            now = time.time()
            self.metadata.touch(key, now)
        return self._env(record, last_used=now)

    def list(self) -> builtins.list[Env]:
        """All published environments, most recently used first."""
        records = self.metadata.records()
        found = [self._env(r) for r in records if self.env_path(r.key).is_dir()]
        return sorted(found, key=lambda env: env.last_used, reverse=True)

    def hold(self, key: str) -> FileLock | None:
        """Protect the environment of ``key`` from eviction while the result is held.

        Returns a shared lock (release it, or let the process holding its
        descriptor exit; it can be passed to a child with ``pass_fds``), or
        ``None`` if ``key`` is not published.  Blocks briefly if gc is deleting
        ``key`` right now.
        """
        used = self._use(key)
        return None if used is None else used[0]

    def _use(self, key: str) -> tuple[FileLock, EnvRecord] | None:
        """The shared use-lock on ``key`` and its record, if ``key`` is published.

        gc holds the use-lock exclusively while deleting ``key``, so once it is
        taken (after waiting for a deletion in progress) the record and tree
        checked under it stay.  A record whose tree vanished is forgotten.
        """
        if not _KEY.fullmatch(key) or self.metadata.get(key) is None:
            return None  # no lock file made for keys that were never published
        lock = FileLock.acquire(self._use_path(key), shared=True)
        record = self.metadata.get(key)
        if record is not None and not self.env_path(key).is_dir():
            self.log.warning(
                "Environment %s vanished from %s; forgetting it", key, self.env_path(key)
            )
            self.metadata.delete(key)
            record = None
        if record is None:
            lock.release()
            return None
        return lock, record

    def refresh_size(self, key: str) -> None:
        """Measure ``key``'s tree again (after work on the published tree)."""
        if self.env_path(key).is_dir():
            self.metadata.set_size(key, disk_usage(self.env_path(key)))

    def _env(self, record: EnvRecord, *, last_used: float | None = None) -> Env:
        return Env(
            key=record.key,
            path=self.env_path(record.key),
            spec=record.spec,
            source=record.source,
            size=record.size,
            created=record.created,
            last_used=record.last_used if last_used is None else last_used,
        )

    # -- building -------------------------------------------------------

    def build(
        self, key: str, build: BuildFn, *, spec: dict[str, Any], source: str, publish: bool = True
    ) -> SharedBuild:
        """Start building ``key`` with ``build``, or join the build already running.

        ``publish`` false: ``build`` puts its result elsewhere (a build Job that pushes
        an image): the store runs, queues and shares it as any build, then drops its
        temporary folder and publishes nothing (:meth:`SharedBuild.wait` gives None).

        ``key`` must be a plain name (letters, digits, ``_``, ``-``), else
        ``ValueError``; ``get``, ``hold`` and ``remove`` treat such keys as absent.

        Must be called with an asyncio loop running.  The build runs in a task
        of its own; it continues when callers stop following or waiting.  If
        ``key`` is already published, :meth:`SharedBuild.wait` returns it
        without building.
        """
        _checked(key)
        asyncio.get_running_loop()  # RuntimeError now rather than a lock taken in vain
        found = self._runs.get(key)
        if found is not None and not found.dropped:
            start = max(0, found.run.count - self.join_tail)
            return SharedBuild(found, self.queue, joined=True, start=start)
        self._ensure_root()
        lock = FileLock.try_acquire(self._lock_path(key))
        # a place in the queue at once when this process builds: its callers see it
        job = BuildJob(
            BuildBroadcast(stopped=stopped, keep=_BUFFER_LINES), self.queue.join() if lock else None
        )
        task = job.run.start(
            self._execute(key, job, lock, build, spec, source, publish),
            name=f"binderbox build {key}",
        )
        task.add_done_callback(lambda _task: self._end_run(key, job, lock))
        self._runs[key] = job
        return SharedBuild(job, self.queue, joined=lock is None, start=0)

    async def _execute(
        self,
        key: str,
        job: BuildJob,
        lock: FileLock | None,
        build: BuildFn,
        spec: dict[str, Any],
        source: str,
        publish: bool,
    ) -> Env | None:
        waited, run = lock is None, job.run
        try:
            if lock is None:
                lock = await self._wait_for_other(key, run)
            env = await asyncio.to_thread(self.get, key)  # SQLite and a lock
            if env is not None:
                return env
            if waited:
                status = self.metadata.status(key)
                if status is not None and status.state is BuildState.FAILED:
                    raise status.error()
                if status is not None and status.state is not BuildState.READY:
                    run.emit("The other build of this environment stopped; building it here.")
            await self._turn(job)
            return await self._build_locked(key, run, build, spec, source, publish)
        finally:
            if lock is not None:
                lock.release()  # the one taken after waiting (_end_run forgets the run)
            if job.place is not None:
                job.place.leave()  # the slot (or the place in line) goes to the next

    async def _turn(self, job: BuildJob) -> None:
        """Wait for a build slot (a place was taken in :meth:`build`, or is taken now
        after another process's build died)."""
        if job.place is None:
            job.place = self.queue.join()
            ahead = job.place.ahead()
            if ahead is not None:
                job.run.emit(f"Waiting for a build slot ({ahead} ahead).")
        await job.place.turn()

    def _end_run(self, key: str, job: BuildJob, lock: FileLock | None) -> None:
        """When ``job``'s task is done, even if cancelled before it ran: let go of it."""
        if lock is not None:
            lock.release()  # idempotent: _execute released it unless it never ran
        if job.place is not None:
            job.place.leave()  # idempotent too
        if self._runs.get(key) is job:
            del self._runs[key]

    async def _wait_for_other(self, key: str, run: BuildBroadcast) -> FileLock:
        """Tail another process's build of ``key`` into ``run`` until its lock is free; take it."""
        tail = LogTail(self.log_path(key))
        try:
            for line in tail.read()[-self.join_tail :]:
                run.emit(line)

            def follow() -> None:
                for line in tail.read():
                    run.emit(line)

            lock = await FileLock.wait(self._lock_path(key), self.poll_interval, follow)
            follow()  # its last lines
            return lock
        finally:
            tail.close()

    async def _build_locked(
        self,
        key: str,
        run: BuildBroadcast,
        build: BuildFn,
        spec: dict[str, Any],
        source: str,
        publish: bool = True,
    ) -> Env | None:
        """Build and publish ``key``, its log lines into ``run``; the caller holds its lock."""
        await asyncio.to_thread(self._remove_temp, key)
        if self.env_path(key).is_dir():
            # a complete build whose metadata insert was interrupted
            self.log.info("Adopting environment %s published without metadata", key)
            return self._publish(key, None, spec, source, await _size_of(self.env_path(key)))
        self.metadata.set_status(key, BuildState.BUILDING)
        tmp = new_temp(self._root / "tmp", key)
        try:
            with new_log(self.log_path(key)) as log:
                await self._run_build(run, build, tmp, log)
            if not publish:  # its result is elsewhere: nothing of it stays here
                await asyncio.shield(asyncio.to_thread(remove_tree, tmp))
                self.metadata.delete(key)
                return None
            size = await _size_of(tmp)
            # no await from here on: a cancellation cannot split rename and insert
            return self._publish(key, tmp, spec, source, size)
        except BaseException as exc:
            self._record_failure(key, exc)
            # off the event loop (a partial env has thousands of files); finishes even if
            # this task is cancelled again while waiting
            await asyncio.shield(asyncio.to_thread(remove_tree, tmp))
            raise

    async def _run_build(
        self, run: BuildBroadcast, build: BuildFn, tmp: Path, log: IO[str]
    ) -> None:
        lines = build(tmp)
        room = self.max_log_bytes
        try:
            async for line in lines:
                line = line.rstrip("\n")[:MAX_LINE]
                if room <= 0:
                    continue  # the build goes on; its output is no longer kept or shown
                room -= len(line) + 1
                if room <= 0:
                    cap = human(self.max_log_bytes)
                    line = f"[the build's output passed {cap}: the rest is not shown]"
                log.write(line + "\n")
                log.flush()
                run.emit(line)
        finally:
            aclose = getattr(lines, "aclose", None)
            if aclose is not None:
                await aclose()

    def _publish(
        self, key: str, tmp: Path | None, spec: dict[str, Any], source: str, size: int
    ) -> Env:
        if tmp is not None:
            tmp.rename(self.env_path(key))
        now = time.time()
        record = EnvRecord(key, spec, source, size, created=now, last_used=now)
        self.metadata.publish(record)
        self.log.info("Published environment %s (%d bytes)", key, size)
        return self._env(record)

    def _record_failure(self, key: str, exc: BaseException) -> None:
        if isinstance(exc, BinderboxError):
            self.log.info("Build of %s failed: %s", key, exc.log_message)
            self.metadata.set_status(
                key,
                BuildState.FAILED,
                message=exc.message,
                hint=exc.hint,
                reason=exc.reason,
                status_code=exc.status_code,
            )
        elif isinstance(exc, Exception):
            self.log.error("Build of %s crashed", key, exc_info=exc)
            self.metadata.set_status(
                key, BuildState.FAILED, message="The environment build failed unexpectedly."
            )
        else:
            self.log.info("Build of %s stopped (%s)", key, type(exc).__name__)
            self.metadata.set_status(key, BuildState.CANCELLED)

    def _remove_temp(self, key: str) -> None:
        """Delete ``tmp/<key>.*`` (the caller holds the key's lock: all are stale)."""
        for entry in remove_temps(self._root / "tmp", key):
            self.log.info("Removed stale temporary tree %s", entry)

    async def aclose(self) -> None:
        """Cancel the builds running in this process and wait for their cleanup."""
        runs = [job.run for job in self._runs.values()]
        for run in runs:
            run.cancel()
        await asyncio.gather(*(run.ended() for run in runs))

    # -- removal --------------------------------------------------------

    def remove(self, key: str) -> bool:
        """Delete the environment of ``key`` now.

        Returns ``False`` when there is nothing to delete or ``key`` is being
        built or held (:meth:`hold`).  Blocking: call it from a thread in
        async code.
        """
        return bool(_KEY.fullmatch(key)) and self._delete(key, min_idle=None)

    def gc(self) -> builtins.list[str]:
        """Collect garbage; returns the keys whose environment tree was deleted.

        Deletes stale temporary trees (their key's lock is free), trees under
        ``envs/`` without metadata, then least-recently-used environments
        while over :attr:`budget` (see the module docstring for what is
        never evicted), then logs and failure records of unpublished keys
        older than :attr:`log_max_age`.  Blocking: call it from a thread in
        async code.
        """
        self._gc_temp()
        removed = self._gc_orphans()
        removed += self._gc_budget()
        self._gc_logs()
        return removed

    def _gc_temp(self) -> None:
        for _key, entry, _lock in stale_temps(self._root / "tmp", self._lock_path, _KEY):
            self.log.info("Removing stale temporary tree %s", entry)
            remove_tree(entry)

    def _gc_orphans(self) -> builtins.list[str]:
        records = {r.key for r in self.metadata.records()}
        removed = []
        for entry in sorted((self._root / "envs").iterdir()):
            orphan = entry.name not in records and _KEY.fullmatch(entry.name)
            if orphan and self._delete(entry.name, min_idle=None):
                removed.append(entry.name)
        return removed

    def _gc_budget(self) -> builtins.list[str]:
        entries = [Entry(r.key, r.size, r.last_used) for r in self.metadata.records()]
        removed = evict_lru(
            entries, self.budget, lambda entry: self._delete(entry.key, min_idle=self.min_idle)
        )
        for entry in removed:
            self.log.info("Evicted environment %s (%d bytes)", entry.key, entry.size)
        return [entry.key for entry in removed]

    def _gc_logs(self) -> None:
        now = time.time()
        published = {r.key for r in self.metadata.records()}
        for entry in sorted((self._root / "logs").glob("*.log")):
            key = entry.stem
            if key in published or not _KEY.fullmatch(key):
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - entry.stat().st_mtime < self.log_max_age:
                    continue
            with try_lock(self._lock_path(key)) as lock:
                if lock is not None and self.metadata.get(key) is None:
                    entry.unlink(missing_ok=True)
                    self.metadata.delete(key)
                    lock.unlink()

    def _delete(self, key: str, *, min_idle: float | None) -> bool:
        """Delete ``key``'s tree and metadata if it is not built, held or recently used."""

        def claim() -> bool:  # both locks held
            record = self.metadata.get(key)
            if record and min_idle is not None and time.time() - record.last_used < min_idle:
                return False
            self.metadata.delete(key)
            return True

        def cleanup() -> None:  # the tree is gone; the key lock is still held
            self.log_path(key).unlink(missing_ok=True)
            self.finish_lock_path(key).unlink(missing_ok=True)

        return delete_unused(
            self.env_path(key),
            self._root / "tmp",
            self._lock_path(key),
            self._use_path(key),
            claim=claim,
            cleanup=cleanup,
        )


def _checked(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise ValueError(f"invalid environment key {key!r}")
    return key


async def _size_of(path: Path) -> int:
    return await asyncio.to_thread(disk_usage, path)
