"""Fetched repository content, kept once per resolved version.

Every launch of a commit needs that commit's files: the builder (when the
environment depends on them) and each session's home start from them.  The
:class:`ContentCache` fetches a :class:`~binderbox.providers.base.Resolved`
version once, into a temporary directory published by rename, so a fetch that
fails or is killed never leaves a partial tree that a later launch would use.
Concurrent requests for the same version in one process share one fetch; two
processes racing both fetch and the first rename wins (the loser's copy is
discarded), which is correct without a lock.

Content fetched with a visitor's own credentials (a private repository) is
marked so (``private/<digest>``, written before the tree is published):
:meth:`ContentCache.may_be_private` tells the pipeline to ask the repository's
server whether the next visitor may read it before handing them the tree.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from traitlets import Bool, Unicode
from traitlets.config import LoggingConfigurable

from .errors import BinderboxError, FetchError
from .events import Event, Fetching
from .providers.base import RepoProvider, Resolved


class ContentCache(LoggingConfigurable):
    """Repository content by resolved version, fetched once."""

    root = Unicode(
        help="Directory holding fetched repository content (one folder per version)."
    ).tag(config=True)
    shared = Bool(
        True,
        help="""Whether launches of several visitors use this cache (a service's): content
        fetched with someone's credentials is then checked again for each next visitor.
        False only for a build pod's own cache (``binderbox build --in-pod``: an emptyDir
        filled for its one build, by its fetch init container for a private repository).""",
    ).tag(config=True)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._running: dict[str, asyncio.Future[Path]] = {}

    def path_for(self, resolved: Resolved) -> Path:
        """Where the content of ``resolved`` lives once fetched."""
        ident = (
            f"{resolved.provider}\0{resolved.clone_url or resolved.repo_url}\0{resolved.version}"
        )
        digest = hashlib.sha256(ident.encode()).hexdigest()[:24]
        return Path(self.root) / "trees" / digest

    def _marker(self, resolved: Resolved) -> Path:
        return Path(self.root) / "private" / self.path_for(resolved).name

    def may_be_private(self, resolved: Resolved) -> bool:
        """False only for content already fetched without anyone's credentials (or,
        not :attr:`shared`, fetched at all)."""
        if not self.path_for(resolved).is_dir():
            return True
        return self.shared and self._marker(resolved).exists()

    async def ensure(self, provider: RepoProvider, resolved: Resolved) -> AsyncIterator[Event]:
        """Fetch ``resolved`` unless present; yields ``fetching`` events."""
        final = self.path_for(resolved)
        if final.is_dir():
            os.utime(final)
            yield Fetching(message=f"Using the content of {resolved.version[:12]} already fetched")
            return
        running = self._running.get(str(final))
        if running is not None:
            yield Fetching(message="Waiting for the same content being fetched by another launch")
            await asyncio.shield(running)
            return
        future: asyncio.Future[Path] = asyncio.get_running_loop().create_future()
        self._running[str(final)] = future
        try:
            async for event in self._fetch(provider, resolved, final):
                yield event
            future.set_result(final)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else FetchError("cancelled"))
            future.exception()  # mark retrieved: joiners re-raise it themselves
            raise
        finally:
            self._running.pop(str(final), None)

    async def _fetch(
        self, provider: RepoProvider, resolved: Resolved, final: Path
    ) -> AsyncIterator[Event]:
        tmp = Path(self.root) / "tmp" / f"{final.name}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        lines: asyncio.Queue[str | None] = asyncio.Queue()

        async def run() -> None:
            try:
                await provider.fetch(resolved, tmp, lines.put_nowait)
            finally:
                lines.put_nowait(None)

        task = asyncio.create_task(run())
        try:
            while (line := await lines.get()) is not None:
                yield Fetching(message=line)
            await task
            if provider.uses_credentials:  # before the tree can be seen
                marker = self._marker(resolved)
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                tmp.rename(final)
            except OSError:
                if not final.is_dir():
                    raise
        except BinderboxError:
            raise
        except OSError as exc:
            raise FetchError(
                f"Could not store the content of {resolved.repo_url}.", log_message=repr(exc)
            ) from exc
        finally:
            if not task.done():
                task.cancel()
            shutil.rmtree(tmp, ignore_errors=True)

    def gc(self, max_age: float) -> int:
        """Remove fetched trees unused for ``max_age`` seconds; returns how many."""
        trees = Path(self.root) / "trees"
        removed = 0
        now = time.time()
        for tree in trees.glob("*") if trees.is_dir() else ():
            if now - tree.stat().st_mtime > max_age:
                shutil.rmtree(tree, ignore_errors=True)
                if not tree.exists():  # the mark goes after its tree, never before
                    (Path(self.root) / "private" / tree.name).unlink(missing_ok=True)
                removed += 1
        return removed
